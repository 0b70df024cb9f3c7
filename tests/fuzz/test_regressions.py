"""Defects the fuzzer found in the shared wire code, each refused now with a typed error and
counted; and refusals behind :func:`transport.bus.serve` are counted like the gate's."""

from __future__ import annotations

import json

from prometheus_client import REGISTRY

from messages import subjects
from messages.attestation import AttestRequest
from messages.canonical import MAX_DEPTH, loads_strict
from messages.envelope import Envelope
from messages.errors import MessageError, SchemaViolation
from messages.ids import format_time
from messages.rejected import Rejected
from messages.schema import Registry
from messages.signing import Ed25519Signer, TrustStore
from transport.bus import serve
from transport.gate import Gate
from transport.outbox import Outbox

ROLE = "orchestrator"


def parties():
    signer = Ed25519Signer.generate()
    trust = TrustStore()
    trust.trust("orchestrator", signer, ROLE)
    return Outbox("orchestrator", signer), trust


def refusal(gate: Gate, data: bytes, role: str | None = ROLE) -> str:
    try:
        gate.admit(data, role)
    except MessageError as exc:
        return exc.kind
    raise AssertionError("admitted")


def counted(kind: str) -> float:
    return REGISTRY.get_sample_value("hsmfleet_messages_rejected_total", {"kind": kind}) or 0.0


def attest(outbox: Outbox) -> Envelope:
    return outbox.envelope(AttestRequest(nonce=bytes(32), expires_ms=1))


def test_deep_nesting_is_malformed_at_any_depth():
    outbox, trust = parties()
    gate = Gate(trust)
    raw = attest(outbox).to_json()
    for depth in (MAX_DEPTH + 1, 400, 100_000):
        for open_, close in (("[", "]"), ('{"a":', "}")):
            text = json.dumps({**raw, "body": {**raw["body"], "n": "@"}})
            data = text.replace('"@"', open_ * depth + "1" + close * depth).encode()
            assert refusal(gate, data) == "malformed"
    assert loads_strict("[" * MAX_DEPTH + "]" * MAX_DEPTH) is not None
    assert sum(gate.rejects.values()) == 6


def test_a_lone_surrogate_in_the_type_is_malformed():
    outbox, trust = parties()
    raw = attest(outbox).to_json()
    raw["type"] = "\ud800"
    raw["sig"] = {"alg": "ed25519", "kid": outbox.signer.kid, "value": "AAAA"}
    assert refusal(Gate(trust), json.dumps(raw).encode()) == "malformed"


def test_an_upcaster_tripping_over_a_bad_body_is_a_schema_violation():
    registry = Registry()

    @registry.register
    class Thing(AttestRequest):
        TYPE = "fuzz.thing"
        VERSION = 2

    @registry.upcaster("fuzz.thing", 1)
    def lift(body):
        return {**body, "expires_ms": body["old_expiry"] + 1}

    env = Envelope("fuzz.thing", 1, "01ARZ3NDEKTSV4RRFFQ69G5FAV", format_time(0), "x", {})
    try:
        registry.parse(env)
    except SchemaViolation as exc:
        assert "old_expiry" in str(exc)
    else:
        raise AssertionError("parsed")


def test_a_rejection_quoting_a_lone_surrogate_can_still_be_sent():
    answer = Outbox("node").envelope(Rejected(kind="schema", reason="body.\ud800 is missing"))
    assert Envelope.decode(answer.encode()).body["reason"] == "body.\\ud800 is missing"


async def test_handler_refusals_and_failures_are_counted_in_the_gate(nc):
    outbox, trust = parties()
    gate = Gate(trust)

    async def handle(received):
        if received.body.expires_ms == 1:
            raise SchemaViolation("refused by the handler")
        raise RuntimeError("a bug")

    subject = subjects.node_command("fuzz-counting", "attest")
    before = counted("schema"), counted("internal")
    sub = await serve(nc, subject, gate, ROLE, handle, Outbox("node"))
    try:
        kinds = []
        for expires in (1, 2):
            env = outbox.envelope(AttestRequest(nonce=bytes(32), expires_ms=expires))
            answer = await nc.request(subject, env.encode(), timeout=5)
            kinds.append(Envelope.decode(answer.data).body["kind"])
    finally:
        await sub.unsubscribe()
    assert kinds == ["schema", "internal"]
    assert gate.rejects == {"schema": 1, "internal": 1}
    after = counted("schema"), counted("internal")
    assert (after[0] - before[0], after[1] - before[1]) == (1, 1)
