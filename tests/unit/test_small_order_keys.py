"""A key of small order is refused wherever hsmfleet accepts a key (``messages/SPEC.md``
section 2): under the identity point, ``R`` = identity and ``S`` = 0 "sign" every message and
OpenSSL takes it, so only the key check stops a forgery. One vector per place a key comes in:
the bytes check itself, pins, key rotations, node identities (attestation) and votes."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from messages.attestation import (
    AttestationRejected,
    AttestationStatement,
    AttestRequest,
    statement_signing_bytes,
    verify_attestation,
)
from messages.documents import MalformedDocument
from messages.membership import Membership
from messages.origin import OPERATOR
from messages.pins import CosignerPin, OperatorPin
from messages.quorum import Prepare, Promise, VoteBadSignature
from messages.rotation import KeyRotation, RotationBadKey, check_rotation
from messages.signing import ED25519, Ed25519Signer, key_id, verify_bytes
from node.attest import attest
from node.hsm import SoftHsm
from node.identity import establish
from node.quorum.votes import Tally
from node.vendor import DEVICE, VendorCA, provision
from transport.gate import Gate
from transport.outbox import Outbox

IDENTITY_POINT = bytes([1]) + bytes(31)
"""The Ed25519 identity point (order 1); SPEC section 2 lists all eight small-order points."""
NOW = datetime(2026, 6, 1, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)
MEASUREMENT = "sha256:" + "ab" * 32


class SmallOrderSigner:
    """A "signer" for the identity point: it signs anything without any private key."""

    alg = ED25519
    public_key = IDENTITY_POINT
    kid = key_id(ED25519, IDENTITY_POINT)

    def sign(self, data: bytes) -> bytes:
        return IDENTITY_POINT + bytes(32)  # R = identity, S = 0


def test_a_forgery_under_a_small_order_key_does_not_verify() -> None:
    forged = SmallOrderSigner().sign(b"anything")
    assert not verify_bytes(ED25519, IDENTITY_POINT, forged, b"anything")


def test_pins_refuse_a_small_order_key() -> None:
    with pytest.raises(MalformedDocument):
        CosignerPin("cosigner-a.example/log", IDENTITY_POINT)
    with pytest.raises(MalformedDocument):
        OperatorPin(ED25519, IDENTITY_POINT)


@pytest.mark.parametrize("signer", [OPERATOR, "cosigner-a.example/log"])
def test_a_rotation_to_a_small_order_key_is_refused(signer: str) -> None:
    """Refused as a bad key before its signatures are read: its "signature" would pass any
    verifier that took the key."""
    old = Ed25519Signer.from_seed(bytes([3]) * 32)
    rotation = KeyRotation.make(signer, 2, old, SmallOrderSigner(), "2026-06-01T00:00:00.000Z")
    with pytest.raises(RotationBadKey):
        check_rotation(rotation.old, 1, rotation)


def test_an_attested_small_order_identity_key_is_refused(tmp_path) -> None:
    """A hostile host drives its HSM, so it can have the device certify any identity key."""
    vendor = VendorCA.init(tmp_path / "vendor", NOW)
    hsm = SoftHsm(tmp_path / "n1" / "hsm", bytes(32))
    provision(hsm, vendor, NOW)
    node = establish(hsm, tmp_path / "n1", "n1")
    genuine = attest(node, hsm, MEASUREMENT, AttestRequest(bytes(32), NOW_MS + 5000))
    claims = AttestationStatement.from_json(json.loads(genuine.statement))
    statement = replace(claims, identity_key=IDENTITY_POINT).encode()
    forged = replace(
        genuine,
        identity_key=IDENTITY_POINT,
        statement=statement,
        signature=hsm.sign(DEVICE, statement_signing_bytes(statement)),
    )
    with pytest.raises(AttestationRejected) as caught:
        verify_attestation(
            forged,
            nonce=bytes(32),
            vendor_roots=[vendor.root],
            allowed_measurements=(MEASUREMENT,),
            now_ms=NOW_MS,
        )
    assert caught.value.reason == "garbled"


def test_a_vote_under_a_small_order_member_key_does_not_count() -> None:
    signers = {"m1": Ed25519Signer.generate(), "m2": Ed25519Signer.generate()}
    membership = Membership.majority("f", {**signers, "m3": SmallOrderSigner()})
    body = Prepare(fleet="f", epoch=1, keys=("a",), ballots=(5,))
    request = Outbox("m1", signers["m1"]).envelope(body)
    tally = Tally(Gate(membership.trust()), request, body, membership)
    promise = Promise(
        fleet="f",
        epoch=1,
        proposer="m1",
        keys=("a",),
        ballots=(5,),
        accepteds=(0,),
        accepted_bys=("",),
        values=(None,),
        justifications=(None,),
        refusals=(),
    )
    forged = Outbox("m3", SmallOrderSigner()).envelope(promise, causation=request.id)
    with pytest.raises(VoteBadSignature):
        tally.add(forged.encode())
