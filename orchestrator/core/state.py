"""The orchestrator's state: a frozen value, and :func:`evolve`, the one pure fold over events.

Maps are persistent (``immutables.Map``): each event yields a new state that shares all but
the changed entries with the old one, so a log of a million events folds in linear time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from immutables import Map

from messages.attestation import NODE_ROLE, Attestation
from messages.canonical import b64, digest
from messages.envelope import Envelope
from messages.errors import MessageError
from messages.events import (
    ChallengeIssued,
    Decision,
    LeaseTaken,
    LogEntry,
    NodeAnnounced,
    NodeEnrolled,
    NodeRejected,
    PolicySet,
    SignerKeyRotated,
)
from messages.inputs import AttestationAnswer
from messages.node_keys import (
    NodeKeyAdopted,
    NodeKeyChallenged,
    NodeKeyRotated,
    NodeKeyRotationRefused,
)
from messages.signing import ED25519, TrustedKey, key_id
from messages.verifier_state import KeyInForce
from orchestrator.core.rollout.state import ROLLOUT_FOLDS, RolloutBook, attested

NodeStatus = Literal["announced", "enrolling", "enrolled", "rejected"]
EnrollmentStatus = Literal["open", "enrolled", "rejected"]
RotationStatus = Literal["open", "rotated", "adopted", "refused"]


@dataclass(frozen=True)
class Lease:
    """Who acts as the orchestrator, under which epoch (0: nobody yet)."""

    holder: str = ""
    epoch: int = 0


@dataclass(frozen=True)
class Policy:
    """Enrollment policy in force: trusted vendor roots (DER), allowed software, nonce lifetime."""

    vendor_roots: tuple[bytes, ...]
    allowed_measurements: tuple[str, ...]
    nonce_ttl_ms: int
    auto_enroll: bool


@dataclass(frozen=True)
class Identity:
    """What an accepted attestation established about a node."""

    identity_alg: str
    identity_key: bytes
    transport_alg: str
    transport_key: bytes
    measurement: str
    device_fingerprint: str
    attestation_digest: str

    @property
    def kid(self) -> str:
        """The identity key's id."""
        return key_id(self.identity_alg, self.identity_key)

    def trusted(self, node_id: str) -> TrustedKey:
        """The identity key, trusted to sign as node ``node_id``."""
        return TrustedKey(node_id, self.identity_alg, self.identity_key, frozenset({NODE_ROLE}))


@dataclass(frozen=True)
class Node:
    """A node as the orchestrator knows it."""

    node_id: str
    domain: str
    hsm: str
    measurement: str
    status: NodeStatus = "announced"
    enrollment_id: str | None = None
    reason: str | None = None
    identity: Identity | None = None
    identity_version: int = 0
    """How many identity keys the node has had on record (1 after its first enrollment)."""
    past_identities: tuple[Identity, ...] = ()
    """The identities it had before, oldest first."""
    rotation_id: str | None = None
    """Its latest identity-key rotation, if any."""

    def knows_key(self, identity_key: bytes) -> bool:
        """Whether ``identity_key`` is or was this node's identity key."""
        return any(
            i.identity_key == identity_key for i in (self.identity, *self.past_identities) if i
        )


@dataclass(frozen=True)
class Enrollment:
    """One challenge and its outcome. ``nonce`` may be answered once, until ``expires_ms``."""

    enrollment_id: str
    node_id: str
    nonce: bytes
    expires_ms: int
    requested_by: str
    status: EnrollmentStatus = "open"
    reason: str | None = None


@dataclass(frozen=True)
class KeyRotation:
    """One identity-key rotation of a node: its challenge and outcome."""

    rotation_id: str
    node_id: str
    nonce: bytes
    expires_ms: int
    requested_by: str
    status: RotationStatus = "open"
    reason: str | None = None
    identity_kid: str | None = None
    """The new key's id, once rotated."""


@dataclass(frozen=True)
class State:
    """Everything the orchestrator knows, folded from its log."""

    lease: Lease = Lease()
    policy: Policy | None = None
    nodes: Map[str, Node] = field(default_factory=Map)
    enrollments: Map[str, Enrollment] = field(default_factory=Map)
    open_enrollments: Map[str, str] = field(default_factory=Map)
    """Enrollment id -> node id of every challenge still waiting for its answer."""
    used_nonces: Map[str, str] = field(default_factory=Map)
    """Base64 nonce -> enrollment or rotation id of every challenge answered or closed."""
    rotations: Map[str, KeyRotation] = field(default_factory=Map)
    """Identity-key rotations by id."""
    open_rotations: Map[str, str] = field(default_factory=Map)
    """Rotation id -> node id of every rotation still waiting: for the node's answer (open),
    or for it to adopt its recorded new key (rotated)."""
    book: RolloutBook = field(default_factory=RolloutBook)
    """Rollouts and the fleets they build."""
    signer_keys: Map[str, tuple[KeyInForce, ...]] = field(default_factory=Map)
    """Cosigner name -> its log keys walked by recorded rotations, oldest first (the key
    the first rotation replaced included)."""
    attestations: Map[str, Attestation] = field(default_factory=Map)
    """Attestation digest (hex) -> the attestation answered to a challenge: a fleet's key
    generator wraps keys only to members whose attestation its HSM checks itself."""

    def open_enrollment_of(self, node_id: str) -> Enrollment | None:
        node = self.nodes.get(node_id)
        if node is None or node.status != "enrolling" or node.enrollment_id is None:
            return None
        return self.enrollments[node.enrollment_id]

    def rotation_of(self, node_id: str) -> KeyRotation | None:
        """The node's latest identity-key rotation, if any."""
        node = self.nodes.get(node_id)
        if node is None or node.rotation_id is None:
            return None
        return self.rotations[node.rotation_id]


def _lease_taken(state: State, e: LeaseTaken) -> State:
    return replace(state, lease=Lease(e.holder, e.epoch))


def _policy_set(state: State, e: PolicySet) -> State:
    policy = Policy(e.vendor_roots, e.allowed_measurements, e.nonce_ttl_ms, e.auto_enroll)
    return replace(state, policy=policy)


def _node_announced(state: State, e: NodeAnnounced) -> State:
    old = state.nodes.get(e.node_id)
    node = (
        Node(e.node_id, e.domain, e.hsm, e.measurement)
        if old is None
        else replace(old, domain=e.domain, hsm=e.hsm, measurement=e.measurement)
    )
    return replace(state, nodes=state.nodes.set(e.node_id, node))


def _challenge_issued(state: State, e: ChallengeIssued) -> State:
    enrollment = Enrollment(e.enrollment_id, e.node_id, e.nonce, e.expires_ms, e.requested_by)
    node = replace(state.nodes[e.node_id], status="enrolling", enrollment_id=e.enrollment_id)
    return replace(
        state,
        nodes=state.nodes.set(e.node_id, node),
        enrollments=state.enrollments.set(e.enrollment_id, enrollment),
        open_enrollments=state.open_enrollments.set(e.enrollment_id, e.node_id),
    )


def _close(state: State, enrollment_id: str, status: EnrollmentStatus, reason: str | None) -> State:
    enrollment = replace(state.enrollments[enrollment_id], status=status, reason=reason)
    return replace(
        state,
        enrollments=state.enrollments.set(enrollment_id, enrollment),
        open_enrollments=state.open_enrollments.delete(enrollment_id),
        used_nonces=state.used_nonces.set(b64(enrollment.nonce), enrollment_id),
    )


def _with_identity(node: Node, identity: Identity, version: int | None = None) -> Node:
    """``node`` with ``identity`` in force, the one it replaces kept in its history; a key
    already in force only has its attested facts refreshed."""
    old = node.identity
    if old is not None and old.identity_key == identity.identity_key:
        return replace(node, identity=identity)
    past = node.past_identities if old is None else (*node.past_identities, old)
    number = node.identity_version + 1 if version is None else version
    return replace(node, identity=identity, identity_version=number, past_identities=past)


def _identity_of(e: NodeEnrolled | NodeKeyRotated) -> Identity:
    """The identity an accepted attestation (at enrollment or rotation) established."""
    return Identity(
        e.identity_alg,
        e.identity_key,
        e.transport_alg,
        e.transport_key,
        e.measurement,
        e.device_fingerprint,
        e.attestation_digest,
    )


def _node_enrolled(state: State, e: NodeEnrolled) -> State:
    identity = _identity_of(e)
    node = replace(
        _with_identity(state.nodes[e.node_id], identity),
        status="enrolled",
        enrollment_id=e.enrollment_id,
        reason=None,
    )
    state = _close(state, e.enrollment_id, "enrolled", None)
    state = replace(
        state, book=attested(state.book, e.enrollment_id, e.node_id, e.attestation_digest)
    )
    return replace(state, nodes=state.nodes.set(e.node_id, node))


def _node_rejected(state: State, e: NodeRejected) -> State:
    old = state.nodes[e.node_id]
    # A rejected re-attempt leaves an enrolled node enrolled; only its enrollment failed.
    node = old if old.status == "enrolled" else replace(old, status="rejected", reason=e.reason)
    state = _close(state, e.enrollment_id, "rejected", e.reason)
    return replace(state, nodes=state.nodes.set(e.node_id, node))


def _node_key_challenged(state: State, e: NodeKeyChallenged) -> State:
    rotation = KeyRotation(e.rotation_id, e.node_id, e.nonce, e.expires_ms, e.requested_by)
    node = state.nodes[e.node_id]
    waiting = state.open_rotations
    if node.rotation_id is not None:
        # A new challenge stands in for the adoption the last rotation may still wait for: the
        # node adopts a recorded key before it rotates away from it.
        waiting = waiting.delete(node.rotation_id) if node.rotation_id in waiting else waiting
    return replace(
        state,
        nodes=state.nodes.set(e.node_id, replace(node, rotation_id=e.rotation_id)),
        rotations=state.rotations.set(e.rotation_id, rotation),
        open_rotations=waiting.set(e.rotation_id, e.node_id),
    )


def _rotation_closed(
    state: State, rotation_id: str, status: RotationStatus, **outcome: Any
) -> State:
    rotation = replace(state.rotations[rotation_id], status=status, **outcome)
    waiting = state.open_rotations
    if status != "rotated" and rotation_id in waiting:
        waiting = waiting.delete(rotation_id)
    used = state.used_nonces
    if status in ("rotated", "refused"):
        used = used.set(b64(rotation.nonce), rotation_id)
    return replace(
        state,
        rotations=state.rotations.set(rotation_id, rotation),
        open_rotations=waiting,
        used_nonces=used,
    )


def _node_key_rotated(state: State, e: NodeKeyRotated) -> State:
    identity = _identity_of(e)
    node = _with_identity(state.nodes[e.node_id], identity, e.version)
    state = _rotation_closed(state, e.rotation_id, "rotated", identity_kid=identity.kid)
    return replace(state, nodes=state.nodes.set(e.node_id, node))


def _node_key_rotation_refused(state: State, e: NodeKeyRotationRefused) -> State:
    if e.rotation_id not in state.rotations:
        # Refused before any challenge went out (the node was not enrolled): on record only.
        rotation = KeyRotation(e.rotation_id, e.node_id, b"", 0, "", "refused", e.reason)
        node = replace(state.nodes[e.node_id], rotation_id=e.rotation_id)
        return replace(
            state,
            nodes=state.nodes.set(e.node_id, node),
            rotations=state.rotations.set(e.rotation_id, rotation),
        )
    return _rotation_closed(state, e.rotation_id, "refused", reason=e.reason)


def _node_key_adopted(state: State, e: NodeKeyAdopted) -> State:
    return _rotation_closed(state, e.rotation_id, "adopted")


def signer_keys_after(state: State, rotated: SignerKeyRotated) -> tuple[KeyInForce, ...]:
    """The log keys of ``rotated``'s cosigner once it is recorded, oldest first: those walked
    so far (before its first rotation, the key that rotation replaces, the version before) and
    the one ``rotated`` puts in force from its log entry on."""
    walked = state.signer_keys.get(rotated.signer) or (
        KeyInForce(ED25519, rotated.old_key, rotated.version - 1, 0, None),
    )
    new = KeyInForce(ED25519, rotated.new_key, rotated.version, rotated.from_index, rotated.at)
    return (*walked, new)


def _signer_key_rotated(state: State, e: SignerKeyRotated) -> State:
    return replace(state, signer_keys=state.signer_keys.set(e.signer, signer_keys_after(state, e)))


def _decision(state: State, e: Decision) -> State:
    """A decision changes nothing itself (the events it emitted do), but the attestation an
    answer it was made on carries is kept, by digest (see :attr:`State.attestations`)."""
    if e.input_type != AttestationAnswer.TYPE:
        return state
    try:
        answer = AttestationAnswer.from_json(e.input)
        attestation = Attestation.from_json(Envelope.decode(answer.reply).body)
    except MessageError:
        return state  # a garbled answer was refused by its decision; nothing to keep
    return replace(
        state,
        attestations=state.attestations.set(digest(attestation.to_json()).hex(), attestation),
    )


def _on_book(fold: Callable[[RolloutBook, Any], RolloutBook]) -> Callable[[State, Any], State]:
    """A rollout fold, which changes only the rollout part, as a fold of the whole state."""
    return lambda state, e: replace(state, book=fold(state.book, e))


# Each fold takes the event type it is listed under.
_FOLDS: dict[type[LogEntry], Callable[[State, Any], State]] = {
    Decision: _decision,
    LeaseTaken: _lease_taken,
    PolicySet: _policy_set,
    NodeAnnounced: _node_announced,
    ChallengeIssued: _challenge_issued,
    NodeEnrolled: _node_enrolled,
    NodeRejected: _node_rejected,
    NodeKeyChallenged: _node_key_challenged,
    NodeKeyRotated: _node_key_rotated,
    NodeKeyRotationRefused: _node_key_rotation_refused,
    NodeKeyAdopted: _node_key_adopted,
    SignerKeyRotated: _signer_key_rotated,
}
_FOLDS |= {kind: _on_book(fold) for kind, fold in ROLLOUT_FOLDS.items()}


def evolve(state: State, entry: LogEntry) -> State:
    """The state after ``entry``. Pure: the same state and entry always give the same result."""
    fold = _FOLDS.get(type(entry))
    if fold is None:
        raise TypeError(f"{type(entry).__name__} is not an entry of the orchestrator's log")
    return fold(state, entry)
