"""Every kind of bad input gets its own typed error, is counted, and reaches no handler."""

import json
from dataclasses import replace

import pytest

from messages import Ed25519Signer, Envelope
from messages.errors import (
    BadSignature,
    MalformedMessage,
    MissingSignature,
    ReplayedMessage,
    SchemaViolation,
    StaleMessage,
    UnknownMessageType,
    UnknownSigner,
)
from messages.ids import format_time
from messages.signing import sign_envelope
from tests.unit.sample_messages import Ping


def flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


def test_good_message_is_admitted(gate, outbox):
    env = outbox.envelope(Ping(count=1, label="x"), corr="rollout-1")
    received = gate.admit(env.encode(), "tester")
    assert received.body == Ping(count=1, label="x")
    assert received.envelope.corr == "rollout-1"
    assert received.signer.owner == "alice"
    assert gate.accepted == 1 and not gate.rejects


def test_flipped_byte_in_body_is_a_bad_signature(gate, outbox):
    data = outbox.envelope(Ping(count=1, label="abc")).encode()
    with pytest.raises(BadSignature):
        gate.admit(data.replace(b'"abc"', b'"abd"'), "tester")
    assert gate.rejects == {"bad_signature": 1}


def test_flipped_byte_in_signature_is_a_bad_signature(gate, outbox):
    env = outbox.envelope(Ping(count=1, label="x"))
    sig = bytearray(env.sig.value)
    sig[10] ^= 0x80
    tampered = env.with_signature(replace(env.sig, value=bytes(sig)))
    with pytest.raises(BadSignature):
        gate.admit(tampered.encode(), "tester")


def test_unknown_type(gate, alice):
    env = Envelope(type="test.other", v=1, id="01", at=format_time(0), source="alice", body={})
    with pytest.raises(UnknownMessageType):
        gate.admit(sign_envelope(env, alice).encode(), "tester")
    assert gate.rejects == {"unknown_type": 1}


def test_missing_header_field(gate, outbox):
    raw = json.loads(outbox.envelope(Ping(count=1, label="x")).encode())
    del raw["source"]
    with pytest.raises(MalformedMessage, match="lacks field 'source'"):
        gate.admit(json.dumps(raw).encode(), "tester")


def test_missing_body_field(gate, outbox, alice):
    env = outbox.envelope(Ping(count=1, label="x"))
    env = sign_envelope(replace(env, body={"count": 1}), alice)
    with pytest.raises(SchemaViolation, match=r"body\.label is missing"):
        gate.admit(env.encode(), "tester")


def test_signature_by_an_unknown_key(gate):
    from transport.outbox import Outbox

    mallory = Outbox("alice", Ed25519Signer.generate())
    with pytest.raises(UnknownSigner, match="not trusted"):
        gate.admit(mallory.envelope(Ping(count=1, label="x")).encode(), "tester")


def test_key_of_another_party_cannot_speak_for_the_source(gate, trust):
    bob = Ed25519Signer.generate()
    trust.trust("bob", bob, "tester")
    from transport.outbox import Outbox

    forged = Outbox("alice", bob).envelope(Ping(count=1, label="x"))
    with pytest.raises(UnknownSigner, match="another party"):
        gate.admit(forged.encode(), "tester")


def test_key_not_trusted_for_the_role(gate, outbox):
    with pytest.raises(UnknownSigner, match="role"):
        gate.admit(outbox.envelope(Ping(count=1, label="x")).encode(), "operator")


def test_unsigned_message_where_a_signature_is_required(gate):
    from transport.outbox import Outbox

    with pytest.raises(MissingSignature):
        gate.admit(Outbox("alice").envelope(Ping(count=1, label="x")).encode(), "tester")


@pytest.mark.parametrize("data", [b"", b"\xff\xfe", b"not json", b"[1,2]", b'"x"', b"{}"])
def test_non_json_and_non_objects_are_malformed(gate, data):
    with pytest.raises(MalformedMessage):
        gate.admit(data, "tester")


def test_replayed_id(gate, outbox):
    data = outbox.envelope(Ping(count=1, label="x")).encode()
    gate.admit(data, "tester")
    with pytest.raises(ReplayedMessage):
        gate.admit(data, "tester")
    assert gate.rejects == {"replayed": 1}


def test_stale_message(trust, alice):
    from tests.unit.sample_messages import registry
    from transport.gate import Gate
    from transport.outbox import Outbox

    now = 1_800_000_000_000
    gate = Gate(trust, registry=registry, clock_ms=lambda: now)
    old = Outbox("alice", alice).envelope(Ping(count=1, label="x"))
    old = sign_envelope(replace(old, at=format_time(now - 10 * 60 * 1000)), alice)
    with pytest.raises(StaleMessage):
        gate.admit(old.encode(), "tester")


def test_rejects_are_counted_by_kind(gate, outbox):
    for data in (b"nope", b"{}"):
        with pytest.raises(MalformedMessage):
            gate.admit(data, "tester")
    assert gate.rejects == {"malformed": 2}
    assert gate.accepted == 0


def test_integer_outside_the_canonical_domain_is_malformed(gate, outbox):
    data = (
        outbox.envelope(Ping(count=1, label="x"))
        .encode()
        .replace(b'"count":1', b'"count":9007199254740993')
    )
    with pytest.raises(MalformedMessage, match="canonical"):
        gate.admit(data, "tester")
