"""Node identity-key rotation in the pure core: its deciders.

A node proves a new identity key with its old key and a fresh attestation; the orchestrator
records the new key. :data:`DECIDERS` maps each input of this flow to its decider and is merged
into :func:`orchestrator.core.decisions.decide`'s table.

The flow: :class:`RotateNodeKey` issues a challenge (a nonce drawn from the decision's seed,
answerable for the enrollment policy's nonce lifetime, like an enrollment's); the node's
:class:`RotationAnswer` is judged here, purely, into :class:`NodeKeyRotated` or a
:class:`NodeKeyRotationRefused` with its reason; once rotated, the node's
:class:`AdoptionAnswer` (signed by the new key) records :class:`NodeKeyAdopted`. A refusal never
touches the node's identity.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from messages.attestation import (
    GARBLED,
    NODE_ROLE,
    WRONG_NONCE,
    AttestationRejected,
    verify_answer_signature,
    verify_attestation,
)
from messages.canonical import b64
from messages.envelope import Envelope
from messages.errors import MessageError
from messages.events import NO_ANSWER, NODE_MISMATCH, NONCE_EXPIRED, NONCE_REUSED, REFUSED
from messages.node_keys import (
    BAD_OLD_KEY_PROOF,
    DEVICE_CHANGED,
    KEY_NOT_NEW,
    NOT_ENROLLED,
    AdoptionAnswer,
    IdentityAdopted,
    IdentityRotation,
    NodeKeyAdopted,
    NodeKeyChallenged,
    NodeKeyRotated,
    NodeKeyRotationRefused,
    RotateNodeKey,
    RotationAnswer,
    RotationProof,
)
from messages.rejected import Rejected
from messages.schema import REGISTRY
from messages.signing import TrustStore, verify_envelope
from orchestrator.core.context import Context
from orchestrator.core.errors import CommandRefused, NoPolicy, UnknownNode
from orchestrator.core.state import KeyRotation, Policy, State

if TYPE_CHECKING:
    from messages.events import LogEntry

NONCE_BYTES = 32


class UnknownRotation(CommandRefused):
    """The answer names a rotation that was never started for this node."""

    kind = "unknown_rotation"


class RotationConflict(CommandRefused):
    """A rotation of this node is waiting for its answer already."""

    kind = "rotation_conflict"


class AdoptionRefused(CommandRefused):
    """The node's answer to an adoption does not show it signs with its recorded new key."""

    kind = "adoption_refused"


def rotate(state: State, c: RotateNodeKey, ctx: Context) -> list[LogEntry]:
    """Challenge an enrolled node to rotate its identity key. A challenge left unanswered past
    its expiry is closed (``no_answer``) and replaced; one still answerable is a conflict."""
    node = state.nodes.get(c.node_id)
    if node is None:
        raise UnknownNode("no node of this id has announced itself", node_id=c.node_id)
    events: list[LogEntry] = []
    current = state.rotation_of(c.node_id)
    if current is not None and current.status == "open":
        if current.expires_ms >= ctx.now_ms:
            raise RotationConflict(
                "a rotation of this node is in progress",
                node_id=c.node_id,
                rotation_id=current.rotation_id,
            )
        events.append(_refused(current, NO_ANSWER))
    if state.policy is None:
        raise NoPolicy("no enrollment policy is in force")
    rotation_id = ctx.new_id("node-key-rotation", 0)
    if node.status != "enrolled" or node.identity is None:
        return [*events, NodeKeyRotationRefused(rotation_id, c.node_id, NOT_ENROLLED)]
    challenge = NodeKeyChallenged(
        rotation_id=rotation_id,
        node_id=c.node_id,
        nonce=ctx.derive("node-key-nonce", 0, NONCE_BYTES),
        expires_ms=ctx.now_ms + state.policy.nonce_ttl_ms,
        requested_by=c.requested_by,
    )
    return [*events, challenge]


def answer(state: State, c: RotationAnswer, ctx: Context) -> list[LogEntry]:
    """Judge the node's answer to a rotation challenge; a late or repeated one changes nothing."""
    rotation = _rotation(state, c.rotation_id, c.node_id)
    if rotation.status != "open":
        return []
    if state.policy is None:
        raise NoPolicy("no enrollment policy is in force")
    outcome = judge(state, state.policy, rotation, c.reply, ctx.now_ms)
    if isinstance(outcome, str):
        return [_refused(rotation, outcome)]
    return [outcome]


def judge(
    state: State, policy: Policy, rotation: KeyRotation, reply: bytes, now_ms: int
) -> NodeKeyRotated | str:
    """The rotation's outcome: the event recording the new key, or the reason to refuse it.

    The new key counts only if the fresh attestation certifies it (vendor root, allowed
    software, this nonce, the node's own device), the answer is signed by it, and the key on
    record signed :class:`RotationProof` over it, the nonce and the attestation.
    """
    if now_ms > rotation.expires_ms:
        return NONCE_EXPIRED
    try:
        env = Envelope.decode(reply)
        if env.type == Rejected.TYPE:
            return REFUSED
        body = REGISTRY.parse(env)
    except MessageError:
        return GARBLED
    if not isinstance(body, IdentityRotation):
        return GARBLED
    node = state.nodes[rotation.node_id]
    old = node.identity
    if node.status != "enrolled" or old is None:
        return NOT_ENROLLED
    if body.node_id != rotation.node_id:
        return NODE_MISMATCH
    try:
        new = verify_attestation(
            body.attestation,
            nonce=rotation.nonce,
            vendor_roots=policy.vendor_roots,
            allowed_measurements=policy.allowed_measurements,
            now_ms=now_ms,
        )
        if new.node_id != rotation.node_id:
            return NODE_MISMATCH
        if new.device_fingerprint != old.device_fingerprint:
            return DEVICE_CHANGED
        if node.knows_key(new.identity_key):
            return KEY_NOT_NEW
        verify_answer_signature(env, new)
    except AttestationRejected as exc:
        if exc.reason == WRONG_NONCE and b64(body.attestation.nonce) in state.used_nonces:
            return NONCE_REUSED
        return exc.reason
    proof = RotationProof(
        node_id=rotation.node_id,
        identity_alg=new.identity_alg,
        identity_key=new.identity_key,
        nonce=rotation.nonce,
        attestation_digest=new.attestation_digest,
    )
    if not proof.verify(old.identity_alg, old.identity_key, body.proof):
        return BAD_OLD_KEY_PROOF
    return NodeKeyRotated(
        rotation_id=rotation.rotation_id,
        node_id=rotation.node_id,
        version=node.identity_version + 1,
        previous_kid=old.kid,
        identity_alg=new.identity_alg,
        identity_key=new.identity_key,
        transport_alg=new.transport_alg,
        transport_key=new.transport_key,
        measurement=new.measurement,
        device_fingerprint=new.device_fingerprint,
        attestation_digest=new.attestation_digest,
    )


def adopted(state: State, c: AdoptionAnswer, _: Context) -> list[LogEntry]:
    """Record that the node signs with its rotated key, once its answer is signed by it."""
    rotation = _rotation(state, c.rotation_id, c.node_id)
    if rotation.status != "rotated" or c.rotation_id not in state.open_rotations:
        return []  # adopted already, or a later rotation stands in for it
    node = state.nodes[c.node_id]
    assert node.identity is not None  # rotated: the new key is on record
    key = node.identity.trusted(c.node_id)
    try:
        env = Envelope.decode(c.reply)
        verify_envelope(env, TrustStore([key]), NODE_ROLE)
        body = REGISTRY.parse(env)
    except MessageError as exc:
        raise AdoptionRefused(
            f"the answer is not signed by the node's new key: {exc}", node_id=c.node_id
        ) from exc
    if not isinstance(body, IdentityAdopted) or body.identity_kid != node.identity.kid:
        raise AdoptionRefused("the answer does not adopt the new key", node_id=c.node_id)
    return [NodeKeyAdopted(rotation_id=c.rotation_id, node_id=c.node_id)]


def advance(state: State, ctx: Context) -> list[LogEntry]:
    """Nothing: a rotation moves on only when its node answers or its challenge expires."""
    return []


def tick(state: State, ctx: Context) -> list[LogEntry]:
    """Close every rotation challenge whose answer is overdue (``no_answer``)."""
    return [_refused(r, NO_ANSWER) for r in _open(state) if r.expires_ms < ctx.now_ms]


def overdue(state: State, now_ms: int) -> bool:
    """Whether a tick at ``now_ms`` would close a rotation challenge."""
    return any(r.expires_ms < now_ms for r in _open(state))


def waiting(state: State) -> list[KeyRotation]:
    """Rotations waiting for the node (its answer, or its adoption), oldest id first: the
    effects to carry out."""
    return [state.rotations[rid] for rid in sorted(state.open_rotations)]


def status_trust(state: State, node_id: str) -> TrustStore | None:
    """The keys an enrolled node's own messages (its status) must be signed with: its
    recorded identity key, and while it has yet to adopt a rotated one, the key it rotates
    away from. None for a node not enrolled (its announcement is what introduces it)."""
    node = state.nodes.get(node_id)
    if node is None or node.identity is None:
        return None
    identities = [node.identity]
    rotation = state.rotation_of(node_id)
    if rotation is not None and rotation.status == "rotated" and node.past_identities:
        identities.append(node.past_identities[-1])
    return TrustStore([i.trusted(node_id) for i in identities])


def _open(state: State) -> list[KeyRotation]:
    return [r for r in waiting(state) if r.status == "open"]


def _rotation(state: State, rotation_id: str, node_id: str) -> KeyRotation:
    rotation = state.rotations.get(rotation_id)
    if rotation is None or rotation.node_id != node_id:
        raise UnknownRotation(
            "no rotation of this id went to this node", rotation_id=rotation_id, node_id=node_id
        )
    return rotation


def _refused(rotation: KeyRotation, reason: str) -> NodeKeyRotationRefused:
    return NodeKeyRotationRefused(rotation.rotation_id, rotation.node_id, reason)


DECIDERS: dict[type, Callable[..., list[Any]]] = {
    RotateNodeKey: rotate,
    RotationAnswer: answer,
    AdoptionAnswer: adopted,
}
