"""The node's side of attestation: answer a nonce with a statement the device key signs."""

from __future__ import annotations

from messages.attestation import (
    MAX_NONCE_BYTES,
    MIN_NONCE_BYTES,
    Attestation,
    AttestationStatement,
    AttestRequest,
    statement_signing_bytes,
)
from messages.errors import HsmfleetError
from node.hsm.base import Hsm
from node.identity import NodeIdentity
from node.vendor import DEVICE


class BadAttestRequest(HsmfleetError):
    """The attest request cannot be answered: its nonce is too short to be fresh, or too long."""

    kind = "bad_attest_request"


def attest(node: NodeIdentity, hsm: Hsm, measurement: str, request: AttestRequest) -> Attestation:
    """The attestation of ``node`` over the request's nonce, signed inside ``hsm``."""
    if len(request.nonce) < MIN_NONCE_BYTES:
        raise BadAttestRequest("nonce is too short", bytes=len(request.nonce))
    if len(request.nonce) > MAX_NONCE_BYTES:
        raise BadAttestRequest("nonce is too long", bytes=len(request.nonce))
    claims = {
        "node_id": node.node_id,
        "identity_alg": node.identity.alg,
        "identity_key": node.identity.public_key,
        "transport_alg": node.transport.alg,
        "transport_key": node.transport.public_key,
        "measurement": measurement,
        "nonce": request.nonce,
    }
    statement = AttestationStatement(**claims).encode()
    return Attestation(
        **claims,
        hsm=hsm.kind,
        chain=node.chain,
        statement=statement,
        signature=hsm.sign(DEVICE, statement_signing_bytes(statement)),
    )
