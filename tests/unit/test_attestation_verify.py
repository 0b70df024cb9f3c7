"""The pure attestation verifier: a genuine answer is admitted, each bad input has its reason."""

import hashlib
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509

from messages.attestation import (
    REASONS,
    Attestation,
    AttestationRejected,
    AttestationStatement,
    AttestedNode,
    AttestRequest,
    statement_signing_bytes,
    verify_answer_signature,
    verify_attestation,
)
from messages.canonical import canonical, digest
from messages.signing import ED25519
from node.attest import BadAttestRequest, attest
from node.hsm import SoftHsm
from node.identity import IDENTITY, establish
from node.vendor import DEVICE, VendorCA, provision
from transport.outbox import Outbox

NOW = datetime(2026, 6, 1, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)
MEASUREMENT = "sha256:" + "ab" * 32
NONCE = bytes(range(32))
DAY_MS = 24 * 3600 * 1000


def _node(tmp_path, name, vendor, *, now=NOW):
    hsm = SoftHsm(tmp_path / name / "hsm", bytes(32))
    provision(hsm, vendor, now)
    return hsm, establish(hsm, tmp_path / name, name)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("attest")
    vendor = VendorCA.init(tmp / "vendor", NOW)
    hsm, node = _node(tmp, "n1", vendor)
    other_hsm, other = _node(tmp, "n2", vendor)
    return {
        "tmp": tmp,
        "vendor": vendor,
        "hsm": hsm,
        "node": node,
        "other_hsm": other_hsm,
        "other": other,
    }


def _answer(world, nonce=NONCE, measurement=MEASUREMENT):
    return attest(world["node"], world["hsm"], measurement, AttestRequest(nonce, NOW_MS + 5000))


def _verify(world, att, *, nonce=NONCE, roots=None, allowed=(MEASUREMENT,), now_ms=NOW_MS):
    return verify_attestation(
        att,
        nonce=nonce,
        vendor_roots=[world["vendor"].root] if roots is None else roots,
        allowed_measurements=allowed,
        now_ms=now_ms,
    )


def _rejected(world, att, reason, **kw):
    with pytest.raises(AttestationRejected) as info:
        _verify(world, att, **kw)
    assert info.value.reason == reason
    assert info.value.kind == "attestation_rejected"
    return info.value


def test_genuine_answer_is_admitted_with_its_facts(world):
    att = _answer(world)
    node = world["node"]
    got = _verify(world, att)
    assert got == AttestedNode(
        node_id="n1",
        identity_alg=ED25519,
        identity_key=node.identity.public_key,
        transport_alg=node.transport.alg,
        transport_key=node.transport.public_key,
        measurement=MEASUREMENT,
        device_fingerprint=hashlib.sha256(node.chain[-1]).hexdigest(),
        attestation_digest=digest(att.to_json()).hex(),
    )


def test_verifier_is_deterministic_over_its_inputs(world):
    att = _answer(world)
    assert _verify(world, att) == _verify(world, att)
    assert _verify(world, canonical(att.to_json())) == _verify(world, att)
    assert _verify(world, att.to_json()) == _verify(world, att)
    der_root = world["vendor"].root_der
    assert _verify(world, att, roots=[der_root]) == _verify(world, att)


def test_chain_to_an_unknown_root(world):
    stranger = VendorCA.init(world["tmp"] / "stranger", NOW)
    _rejected(world, _answer(world), "unknown_root", roots=[stranger.root])
    _rejected(world, _answer(world), "unknown_root", roots=[])


def test_device_certified_by_an_unknown_vendor(world, tmp_path):
    stranger = VendorCA.init(tmp_path / "stranger", NOW)
    hsm, node = _node(tmp_path, "rogue", stranger)
    att = attest(node, hsm, MEASUREMENT, AttestRequest(NONCE, NOW_MS))
    _rejected(world, att, "unknown_root")


def test_expired_device_certificate(world):
    late = NOW_MS + 11 * 365 * DAY_MS
    _rejected(world, _answer(world), "expired", now_ms=late)


def test_certificate_issued_for_the_future_is_not_yet_valid(world, tmp_path):
    hsm, node = _node(tmp_path, "early", world["vendor"], now=NOW + timedelta(days=30))
    att = attest(node, hsm, MEASUREMENT, AttestRequest(NONCE, NOW_MS))
    _rejected(world, att, "not_yet_valid")
    assert _verify(world, att, now_ms=NOW_MS + 31 * DAY_MS).node_id == "early"


def test_before_the_vendor_root_existed_is_not_yet_valid(world):
    _rejected(world, _answer(world), "not_yet_valid", now_ms=NOW_MS - DAY_MS)


def test_measurement_not_on_the_allow_list(world):
    err = _rejected(
        world, _answer(world, measurement="sha256:" + "00" * 32), "measurement_not_allowed"
    )
    assert "00000" in str(err)
    _rejected(world, _answer(world), "measurement_not_allowed", allowed=())


def test_wrong_nonce(world):
    _rejected(world, _answer(world), "wrong_nonce", nonce=bytes(32))


def test_old_statement_replayed_under_the_new_nonce(world):
    old = _answer(world, nonce=b"\x01" * 32)
    replayed = replace(old, nonce=NONCE)
    _rejected(world, replayed, "wrong_nonce")


def test_claimed_keys_differ_from_the_signed_ones(world):
    att = _answer(world)
    mallory = world["other"]
    _rejected(world, replace(att, identity_key=mallory.identity.public_key), "key_mismatch")
    _rejected(world, replace(att, transport_key=mallory.transport.public_key), "key_mismatch")
    _rejected(world, replace(att, node_id="n2"), "key_mismatch")
    _rejected(world, replace(att, measurement="sha256:" + "cd" * 32), "key_mismatch")


def test_statement_signed_by_another_device(world):
    att = _answer(world)
    forged = world["other_hsm"].sign(DEVICE, statement_signing_bytes(att.statement))
    _rejected(world, replace(att, signature=forged), "wrong_device")
    _rejected(world, replace(att, chain=world["other"].chain), "wrong_device")


def test_statement_altered_after_signing(world):
    att = _answer(world)
    stmt = AttestationStatement.from_json(json.loads(att.statement))
    altered = replace(stmt, identity_key=world["other"].identity.public_key).encode()
    _rejected(
        world,
        replace(att, statement=altered, identity_key=world["other"].identity.public_key),
        "wrong_device",
    )


def test_truncated_or_garbled_answers(world):
    att = _answer(world)
    wire = canonical(att.to_json())
    _rejected(world, wire[: len(wire) // 2], "garbled")
    _rejected(world, b"\xff\xfe not json", "garbled")
    _rejected(world, {k: v for k, v in att.to_json().items() if k != "chain"}, "garbled")
    _rejected(world, {**att.to_json(), "signature": "not base64!"}, "garbled")
    _rejected(world, replace(att, chain=()), "garbled")
    _rejected(world, replace(att, chain=(b"\x30\x03junk",)), "garbled")
    _rejected(world, replace(att, chain=(att.chain[0], att.chain[1][:100])), "garbled")
    _rejected(world, replace(att, identity_key=att.identity_key[:31]), "garbled")
    _rejected(world, replace(att, identity_alg="rsa"), "garbled")
    _rejected(world, replace(att, transport_key=b"\x04" + bytes(64)), "garbled")
    _rejected(world, [1, 2, 3], "garbled")


def test_signed_but_unreadable_statement_is_garbled(world):
    att = _answer(world)
    for junk in (att.statement[:-5], b'{"node_id": "n1"}', b"[]"):
        signature = world["hsm"].sign(DEVICE, statement_signing_bytes(junk))
        _rejected(world, replace(att, statement=junk, signature=signature), "garbled")


def test_equivalent_but_not_canonical_statement_is_garbled(world):
    att = _answer(world)
    reordered = json.dumps(dict(reversed(json.loads(att.statement).items()))).encode()
    signature = world["hsm"].sign(DEVICE, statement_signing_bytes(reordered))
    err = _rejected(world, replace(att, statement=reordered, signature=signature), "garbled")
    assert "canonical" in str(err)


def test_every_reason_is_tested_and_distinct():
    assert len(set(REASONS)) == len(REASONS) == 9


def _refused_envelope(env, node):
    with pytest.raises(AttestationRejected) as info:
        verify_answer_signature(env, node)
    assert info.value.reason == "bad_answer_signature"


def test_answer_envelope_must_be_signed_by_the_attested_identity_key(world):
    att = _answer(world)
    node = world["node"]
    genuine = Outbox(node.node_id, world["hsm"].signer(IDENTITY)).envelope(att)
    verify_answer_signature(genuine, att)
    verify_answer_signature(genuine, _verify(world, att))
    _refused_envelope(Outbox(node.node_id).envelope(att), att)
    other = Outbox(node.node_id, world["other_hsm"].signer(IDENTITY)).envelope(att)
    _refused_envelope(other, att)
    renamed = Outbox("n2", world["hsm"].signer(IDENTITY)).envelope(att)
    _refused_envelope(renamed, att)
    altered = replace(genuine, body={**genuine.body, "measurement": "sha256:" + "00" * 32})
    _refused_envelope(altered, att)
    _refused_envelope(genuine, replace(att, identity_key=world["other"].identity.public_key))


def test_node_refuses_a_short_nonce(world):
    with pytest.raises(BadAttestRequest):
        _answer(world, nonce=b"short")
    with pytest.raises(BadAttestRequest, match="too long") as info:
        _answer(world, nonce=bytes(65))
    assert info.value.kind == "bad_attest_request"
    assert _verify(world, _answer(world, nonce=bytes(64)), nonce=bytes(64)).node_id == "n1"


def test_attestation_round_trips_through_its_schema(world):
    att = _answer(world)
    assert Attestation.from_json(att.to_json()) == att


def test_vendor_root_only_certifies_and_devices_only_sign(world):
    def usage(cert):
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        names = ("digital_signature", "key_encipherment", "key_agreement", "key_cert_sign")
        return {name for name in (*names, "crl_sign") if getattr(ku, name)}

    assert usage(world["vendor"].root) == {"key_cert_sign", "crl_sign"}
    device = x509.load_der_x509_certificate(world["node"].chain[-1])
    assert usage(device) == {"digital_signature"}
    assert not device.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
