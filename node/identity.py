"""Who a node is: its id, its identity and transport keys in the HSM, its device chain.

The node id is chosen once (by the operator, or derived from the identity key) and recorded in
the state directory with the identity key's id and HSM label, so a restarted node is the same
node, and a node whose HSM no longer holds the recorded identity refuses to start rather than
become another.

Identity keys are versioned: the first is labelled ``identity``, each rotation makes
the next (``identity.2``, ``identity.3``, ...) as a *pending* key beside the one in force, and the
node adopts it only once the orchestrator has recorded it (:func:`adopt`). Earlier keys stay in
the HSM: a fleet's replication configuration names the key each member votes with, and a replica
keeps voting with that key until a reconfiguration names another (:func:`vote_signer`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from messages.attestation import ECDH_P256
from messages.errors import BadSubject, HsmfleetError
from messages.quorum import Config
from messages.subjects import token
from node.hsm.base import Hsm, HsmSigner, KeyNotFound, PublicKey
from node.vendor import device_chain
from transport.files import write_file

IDENTITY = "identity"
TRANSPORT = "transport"
NODE_FILE = "node.json"


class NodeIdentityError(HsmfleetError):
    """The node's recorded identity and its HSM disagree, or the node id is not usable."""

    kind = "node_identity"


@dataclass(frozen=True)
class NodeIdentity:
    """A node's id, the public halves of its HSM keys, and its device chain (root first).

    ``pending`` is a new identity key made for a rotation and not adopted yet."""

    node_id: str
    identity: PublicKey
    transport: PublicKey
    chain: tuple[bytes, ...]
    pending: PublicKey | None = None


def establish(hsm: Hsm, state_dir: Path, node_id: str | None = None) -> NodeIdentity:
    """Load the node's identity, making its keys in ``hsm`` on first start."""
    if node_id is not None:
        try:
            _check_node_id(node_id)
        except ValueError as exc:
            raise NodeIdentityError(str(exc)) from exc
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / NODE_FILE
    if not path.exists():
        identity = hsm.ensure(IDENTITY, hsm.signing_alg())
        node = NodeIdentity(
            node_id or f"node-{identity.kid[:12]}",
            identity,
            hsm.ensure(TRANSPORT, ECDH_P256),
            device_chain(hsm),
        )
        _record(state_dir, node)
        return node
    try:
        recorded = json.loads(path.read_text())
        recorded_id = recorded["node_id"]
        _check_node_id(recorded_id)
        current = (recorded.get("identity_label", IDENTITY), recorded["identity_kid"])
        pending = recorded.get("pending")
        waiting = None if pending is None else (pending["label"], pending["kid"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise NodeIdentityError(f"{path} is not a node record: {exc}") from exc
    if node_id is not None and node_id != recorded_id:
        raise NodeIdentityError("this state directory belongs to another node", node_id=recorded_id)
    return NodeIdentity(
        recorded_id,
        _held(hsm, recorded_id, *current),
        hsm.ensure(TRANSPORT, ECDH_P256),
        device_chain(hsm),
        None if waiting is None else _held(hsm, recorded_id, *waiting),
    )


def prepare_rotation(hsm: Hsm, state_dir: Path, node: NodeIdentity) -> NodeIdentity:
    """``node`` with a pending identity key: the one made before and not adopted yet, or a new
    one under the next free versioned label (recorded before it is used)."""
    if node.pending is not None:
        return node
    taken = [_version(label) for label in hsm.labels()]
    label = f"{IDENTITY}.{max([v for v in taken if v is not None], default=1) + 1}"
    prepared = replace(node, pending=hsm.generate(label, node.identity.alg))
    _record(state_dir, prepared)
    return prepared


def adopt(state_dir: Path, node: NodeIdentity, kid: str) -> NodeIdentity:
    """``node`` signing with its key ``kid`` from now on: its pending key (recorded at once, so a
    restart keeps it), or the key in force already. Raises :class:`UnknownIdentityKey`."""
    if node.identity.kid == kid:
        return node
    if node.pending is None or node.pending.kid != kid:
        raise UnknownIdentityKey(
            "this node has no such identity key to adopt", node_id=node.node_id, kid=kid
        )
    adopted = replace(node, identity=node.pending, pending=None)
    _record(state_dir, adopted)
    return adopted


def vote_signer(hsm: Hsm, config: Config, node_id: str) -> HsmSigner:
    """The signer of the identity key ``config`` names for ``node_id``: the key its replica
    votes with, whichever identity version that is."""
    named = next((m for m in config.members if m.member == node_id), None)
    if named is None:
        raise NodeIdentityError("the configuration does not name this node", node_id=node_id)
    for label in hsm.labels():
        if _version(label) is not None:
            key = hsm.public_key(label)
            if (key.alg, key.public_key) == (named.alg, named.public_key):
                return HsmSigner(hsm, key)
    raise NodeIdentityError(
        "the HSM holds no identity key the configuration names for this node",
        node_id=node_id,
        fleet=config.fleet,
    )


class UnknownIdentityKey(NodeIdentityError):
    """A rotation names an identity key this node neither uses nor has pending."""

    kind = "unknown_identity_key"


def _held(hsm: Hsm, node_id: str, label: str, kid: str) -> PublicKey:
    """The key ``label`` in ``hsm``, checked to be the recorded ``kid``."""
    try:
        key = hsm.public_key(label)
    except KeyNotFound:
        key = None
    if key is None or key.kid != kid:
        raise NodeIdentityError(
            "the HSM does not hold the identity key this node recorded",
            node_id=node_id,
            label=label,
            recorded=kid,
            found=None if key is None else key.kid,
        )
    return key


def _version(label: str) -> int | None:
    """The identity version a label holds (``identity`` is 1), or ``None`` for other keys."""
    if label == IDENTITY:
        return 1
    prefix, _, number = label.partition(".")
    if prefix != IDENTITY or not number.isdigit():
        return None
    return int(number)


def _record(state_dir: Path, node: NodeIdentity) -> None:
    record: dict[str, object] = {
        "node_id": node.node_id,
        "identity_kid": node.identity.kid,
        "identity_label": node.identity.label,
    }
    if node.pending is not None:
        record["pending"] = {"label": node.pending.label, "kid": node.pending.kid}
    write_file(state_dir / NODE_FILE, json.dumps(record, indent=2).encode())


def _check_node_id(node_id: object) -> None:
    """Raise :class:`ValueError` unless ``node_id`` can name the node's NATS subjects."""
    if not isinstance(node_id, str):
        raise ValueError("the node id is not text")
    try:
        token(node_id, "node id")
    except BadSubject as exc:
        raise ValueError(str(exc)) from exc
