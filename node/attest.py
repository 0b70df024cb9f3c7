"""The node's side of attestation: answer a nonce with a statement the device key signs, and
prove a new identity key with a fresh attestation of it and the old key's signature.
"""

from __future__ import annotations

from messages.attestation import (
    MAX_NONCE_BYTES,
    MIN_NONCE_BYTES,
    Attestation,
    AttestationStatement,
    AttestRequest,
    statement_signing_bytes,
)
from messages.canonical import digest
from messages.errors import HsmfleetError
from messages.node_keys import IdentityRotation, RotateIdentity, RotationProof
from node.hsm.base import Hsm, PublicKey
from node.identity import NodeIdentity
from node.vendor import DEVICE


class BadAttestRequest(HsmfleetError):
    """The attest request cannot be answered: its nonce is too short to be fresh, or too long."""

    kind = "bad_attest_request"


def attest(node: NodeIdentity, hsm: Hsm, measurement: str, request: AttestRequest) -> Attestation:
    """The attestation of ``node`` over the request's nonce, signed inside ``hsm``."""
    return _certify(node, node.identity, hsm, measurement, request.nonce)


def prove_rotation(
    node: NodeIdentity, hsm: Hsm, measurement: str, request: RotateIdentity
) -> IdentityRotation:
    """The proof of ``node``'s pending identity key: the device's attestation of it over the
    request's nonce, and the key in force's signature over :class:`RotationProof`."""
    if node.pending is None:
        raise BadAttestRequest("the node has no identity key pending", node_id=node.node_id)
    attestation = _certify(node, node.pending, hsm, measurement, request.nonce)
    proof = RotationProof(
        node_id=node.node_id,
        identity_alg=node.pending.alg,
        identity_key=node.pending.public_key,
        nonce=request.nonce,
        attestation_digest=digest(attestation.to_json()).hex(),
    )
    return IdentityRotation(
        node_id=node.node_id,
        attestation=attestation,
        previous_kid=node.identity.kid,
        proof=hsm.sign(node.identity.label, proof.signing_bytes()),
    )


def _certify(
    node: NodeIdentity, identity: PublicKey, hsm: Hsm, measurement: str, nonce: bytes
) -> Attestation:
    """The device's attestation that ``identity`` and the node's transport key are in ``hsm``."""
    if len(nonce) < MIN_NONCE_BYTES:
        raise BadAttestRequest("nonce is too short", bytes=len(nonce))
    if len(nonce) > MAX_NONCE_BYTES:
        raise BadAttestRequest("nonce is too long", bytes=len(nonce))
    claims = {
        "node_id": node.node_id,
        "identity_alg": identity.alg,
        "identity_key": identity.public_key,
        "transport_alg": node.transport.alg,
        "transport_key": node.transport.public_key,
        "measurement": measurement,
        "nonce": nonce,
    }
    statement = AttestationStatement(**claims).encode()
    return Attestation(
        **claims,
        hsm=hsm.kind,
        chain=node.chain,
        statement=statement,
        signature=hsm.sign(DEVICE, statement_signing_bytes(statement)),
    )
