"""Who a node is: its id, its identity and transport keys in the HSM, its device chain.

The node id is chosen once (by the operator, or derived from the identity key) and recorded in
the state directory with the identity key's id, so a restarted node is the same node, and a node
whose HSM no longer holds the recorded identity refuses to start rather than become another.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from messages.attestation import ECDH_P256
from messages.errors import BadSubject, HsmfleetError
from messages.subjects import token
from node.hsm.base import Hsm, PublicKey
from node.hsm.sealing import write_atomic
from node.vendor import device_chain

IDENTITY = "identity"
TRANSPORT = "transport"
NODE_FILE = "node.json"


class NodeIdentityError(HsmfleetError):
    """The node's recorded identity and its HSM disagree, or the node id is not usable."""

    kind = "node_identity"


@dataclass(frozen=True)
class NodeIdentity:
    """A node's id, the public halves of its HSM keys, and its device chain (root first)."""

    node_id: str
    identity: PublicKey
    transport: PublicKey
    chain: tuple[bytes, ...]


def establish(hsm: Hsm, state_dir: Path, node_id: str | None = None) -> NodeIdentity:
    """Load the node's identity, making its keys in ``hsm`` on first start."""
    if node_id is not None:
        try:
            _check_node_id(node_id)
        except ValueError as exc:
            raise NodeIdentityError(str(exc)) from exc
    identity = hsm.ensure(IDENTITY, hsm.signing_alg())
    transport = hsm.ensure(TRANSPORT, ECDH_P256)
    chain = device_chain(hsm)
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / NODE_FILE
    if path.exists():
        try:
            recorded = json.loads(path.read_text())
            recorded_id, recorded_kid = recorded["node_id"], recorded["identity_kid"]
            _check_node_id(recorded_id)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise NodeIdentityError(f"{path} is not a node record: {exc}") from exc
        if node_id is not None and node_id != recorded_id:
            raise NodeIdentityError(
                "this state directory belongs to another node", node_id=recorded_id
            )
        if recorded_kid != identity.kid:
            raise NodeIdentityError(
                "the HSM does not hold the identity key this node recorded",
                node_id=recorded_id,
                recorded=recorded_kid,
                found=identity.kid,
            )
        node_id = recorded_id
    else:
        node_id = node_id or f"node-{identity.kid[:12]}"
        record = {"node_id": node_id, "identity_kid": identity.kid}
        write_atomic(path, json.dumps(record, indent=2).encode())
    return NodeIdentity(node_id, identity, transport, chain)


def _check_node_id(node_id: object) -> None:
    """Raise :class:`ValueError` unless ``node_id`` can name the node's NATS subjects."""
    if not isinstance(node_id, str):
        raise ValueError("the node id is not text")
    try:
        token(node_id, "node id")
    except BadSubject as exc:
        raise ValueError(str(exc)) from exc
