"""The orchestrator's event log as a protocol: what auditors replay.

The log holds two kinds of entries, each a signed envelope:

- a :class:`Decision` records one input the orchestrator decided on (an operator command, a
  node's announcement or attestation answer, the passing of time, a lease takeover), the
  context it decided in (time, random seed, lease epoch and holder) and how many events the
  decision emitted; those events follow it in the same atomic append. The inputs are
  :mod:`messages.inputs`;
- the events themselves: :class:`LeaseTaken`, :class:`PolicySet`, :class:`NodeAnnounced`,
  :class:`ChallengeIssued`, :class:`NodeEnrolled`, :class:`NodeRejected`, and the events of
  fleet rollouts, appended under ``fleet.evt.rollout.<fleet>`` and correlated by
  the rollout's id: :class:`RolloutStarted` and the stage, member, bundle and operator events
  after it.

Replaying a log re-runs every recorded decision and checks that it emits the recorded events.
Every entry carries ``prev``, the SHA-256 of the previous entry's wire bytes, as an envelope
extension field: one verified signature then vouches for every entry before it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from messages import subjects
from messages.artifact import FleetKey, FleetKeyArtifact
from messages.bundle import StageBundle
from messages.ceremony import WrappedFleetKey
from messages.inputs import CosignerAnswer
from messages.plan import RolloutPlan
from messages.quorum import Config
from messages.schema import Body, message, upcaster

# Reasons of a NodeRejected that the orchestrator's bookkeeping adds to the attestation
# verifier's own (messages.attestation.REASONS).
NONCE_REUSED = "nonce_reused"


NONCE_EXPIRED = "nonce_expired"


NO_ANSWER = "no_answer"


REFUSED = "refused"


NODE_MISMATCH = "node_mismatch"


ORCHESTRATOR_FLOW = "orchestrator"


def _orchestrator_subject(name: str) -> str:
    # The flows' subjects name no orchestrator flow; its own entries live beside the others
    # under fleet.evt.> so that one stream holds the whole, totally ordered log.
    return f"fleet.evt.{ORCHESTRATOR_FLOW}.{subjects.token(name)}"


class LogEntry(Body):
    """An entry of the orchestrator's log; ``subject()`` is where it is appended."""

    def subject(self) -> str:
        raise NotImplementedError

    def corr(self) -> str | None:
        """The flow this entry belongs to (``corr`` of its envelope), if any."""
        return None


# --- the decision record ---------------------------------------------------------------------


@message
@dataclass(frozen=True)
class Decision(LogEntry):
    """One decision: its input (type, version, JSON body), its context, its event count."""

    TYPE = "orchestrator.decision"
    input_type: str
    input_v: int
    input: dict[str, Any]
    now_ms: int
    seed: bytes
    epoch: int
    holder: str
    emits: int

    def subject(self) -> str:
        return _orchestrator_subject("decision")


# --- events ----------------------------------------------------------------------------------


@message
@dataclass(frozen=True)
class LeaseTaken(LogEntry):
    """``holder`` became the active orchestrator under lease ``epoch``."""

    TYPE = "orchestrator.lease_taken"
    holder: str
    epoch: int

    def subject(self) -> str:
        return _orchestrator_subject("lease")


@message
@dataclass(frozen=True)
class PolicySet(LogEntry):
    """The enrollment policy in force from here on."""

    TYPE = "orchestrator.policy_set"
    vendor_roots: tuple[bytes, ...]
    allowed_measurements: tuple[str, ...]
    nonce_ttl_ms: int
    auto_enroll: bool

    def subject(self) -> str:
        return _orchestrator_subject("policy")


@message
@dataclass(frozen=True)
class SignerKeyRotated(LogEntry):
    """Cosigner ``signer``'s log key moved from ``old_key`` to ``new_key`` (Ed25519, key
    ``version``), signing its log's entries from ``from_index`` on (the rotation's own entry,
    logged as ``digest``)."""

    TYPE = "orchestrator.signer_key_rotated"
    signer: str
    version: int
    old_key: bytes
    new_key: bytes
    from_index: int
    at: str
    digest: str

    def subject(self) -> str:
        return _orchestrator_subject("signer")


@message
@dataclass(frozen=True)
class NodeAnnounced(LogEntry):
    """A node made itself known: where it runs (failure domain) and what it runs."""

    TYPE = "node.announced"
    VERSION = 2
    node_id: str
    domain: str
    hsm: str
    measurement: str

    def subject(self) -> str:
        return subjects.event("node", self.node_id)


@upcaster(NodeAnnounced.TYPE, 1)
def _announced_v1_to_v2(body: dict[str, Any]) -> dict[str, Any]:
    """v1 called the failure domain ``zone`` and did not record the HSM kind or software."""
    out = dict(body)
    out["domain"] = out.pop("zone")
    out.setdefault("hsm", "unknown")
    out.setdefault("measurement", "")
    return out


class _EnrollmentEvent(LogEntry):
    """An event of one enrollment flow, appended under and correlated by its id."""

    enrollment_id: str

    def subject(self) -> str:
        return subjects.event("enrollment", self.enrollment_id)

    def corr(self) -> str | None:
        return self.enrollment_id


@message
@dataclass(frozen=True)
class ChallengeIssued(_EnrollmentEvent):
    """A fresh nonce was issued to ``node_id``; it may be answered once, until ``expires_ms``."""

    TYPE = "enrollment.challenge_issued"
    enrollment_id: str
    node_id: str
    nonce: bytes
    expires_ms: int
    requested_by: str


@message
@dataclass(frozen=True)
class NodeEnrolled(_EnrollmentEvent):
    """The node's attestation verified: these are its keys, software and device."""

    TYPE = "enrollment.node_enrolled"
    enrollment_id: str
    node_id: str
    domain: str
    identity_alg: str
    identity_key: bytes
    transport_alg: str
    transport_key: bytes
    measurement: str
    device_fingerprint: str
    attestation_digest: str


@message
@dataclass(frozen=True)
class NodeRejected(_EnrollmentEvent):
    """The enrollment failed; ``reason`` is a stable code (verifier's or orchestrator's)."""

    TYPE = "enrollment.node_rejected"
    enrollment_id: str
    node_id: str
    reason: str


# --- rollout events --------------------------------------------------------------------------


class _RolloutEvent(LogEntry):
    """An event of one rollout, appended under its fleet and correlated by the rollout id."""

    rollout_id: str
    fleet: str

    def subject(self) -> str:
        return subjects.event("rollout", self.fleet)

    def corr(self) -> str | None:
        return self.rollout_id


@dataclass(frozen=True)
class PlannedMember(Body):
    """A member the rollout picked, with its failure domain."""

    node_id: str
    domain: str


@message
@dataclass(frozen=True)
class RolloutStarted(_RolloutEvent):
    """A rollout of ``fleet`` at key ``epoch`` began with these members and validity window."""

    TYPE = "rollout.started"
    rollout_id: str
    fleet: str
    epoch: int
    plan: RolloutPlan
    members: tuple[PlannedMember, ...]
    not_before_ms: int
    not_after_ms: int
    requested_by: str


@message
@dataclass(frozen=True)
class RolloutSuperseded(_RolloutEvent):
    """A new plan for the fleet replaced this rollout; ``by`` is the new rollout's id."""

    TYPE = "rollout.superseded"
    rollout_id: str
    fleet: str
    by: str


@message
@dataclass(frozen=True)
class StageEntered(_RolloutEvent):
    """The rollout entered ``stage``."""

    TYPE = "rollout.stage_entered"
    rollout_id: str
    fleet: str
    stage: str


@message
@dataclass(frozen=True)
class ConfigFixed(_RolloutEvent):
    """The fleet's replication group, fixed as the quorum stage begins: the members holding
    the fleet keys, their attested identity keys as vote keys, the plan's threshold."""

    TYPE = "rollout.config_fixed"
    rollout_id: str
    fleet: str
    config: Config


@message
@dataclass(frozen=True)
class MemberChallenged(_RolloutEvent):
    """The rollout challenged ``node_id`` to attest (enrollment ``enrollment_id``); the member
    has until ``deadline_ms`` of running time to be attested."""

    TYPE = "rollout.member_challenged"
    rollout_id: str
    fleet: str
    node_id: str
    enrollment_id: str
    deadline_ms: int


@message
@dataclass(frozen=True)
class MemberCommanded(_RolloutEvent):
    """The rollout started ``step`` (generate, import, join, probe, retire) on ``node_id``,
    to be answered by ``deadline_ms`` of running time."""

    TYPE = "rollout.member_commanded"
    rollout_id: str
    fleet: str
    node_id: str
    step: str
    deadline_ms: int


@message
@dataclass(frozen=True)
class FleetKeysGenerated(_RolloutEvent):
    """``generator`` holds the fleet keys (``receipt`` is the digest of its signed receipt) and
    wrapped them to the members named in ``wrapped``."""

    TYPE = "rollout.keys_generated"
    rollout_id: str
    fleet: str
    generator: str
    keys: tuple[FleetKey, ...]
    wrapped: tuple[WrappedFleetKey, ...]
    receipt: str


@message
@dataclass(frozen=True)
class MemberKeysImported(_RolloutEvent):
    """``node_id`` imported the fleet keys; ``receipt`` is the digest of its signed receipt."""

    TYPE = "rollout.keys_imported"
    rollout_id: str
    fleet: str
    node_id: str
    receipt: str


@message
@dataclass(frozen=True)
class MemberJoined(_RolloutEvent):
    """``node_id`` serves the fleet's replication group."""

    TYPE = "rollout.member_joined"
    rollout_id: str
    fleet: str
    node_id: str


@message
@dataclass(frozen=True)
class QuorumProved(_RolloutEvent):
    """A test write committed with a quorum: ``proof`` is the digest of the quorum-proof
    document, ``votes`` the members' signed acceptances as they were sent."""

    TYPE = "rollout.quorum_proved"
    rollout_id: str
    fleet: str
    node_id: str
    proof: str
    votes: tuple[bytes, ...]


@message
@dataclass(frozen=True)
class ProbeFailed(_RolloutEvent):
    """The test write through ``node_id`` did not commit; ``reason`` says why."""

    TYPE = "rollout.probe_failed"
    rollout_id: str
    fleet: str
    node_id: str
    reason: str


@message
@dataclass(frozen=True)
class MemberFailed(_RolloutEvent):
    """``node_id`` failed ``step``: it refused, answered wrongly, or not by its deadline."""

    TYPE = "rollout.member_failed"
    rollout_id: str
    fleet: str
    node_id: str
    step: str
    reason: str


@message
@dataclass(frozen=True)
class MemberKeysDestroyed(_RolloutEvent):
    """``node_id`` destroyed the rollout's keys (``roles``); ``receipt`` is its answer's
    digest."""

    TYPE = "rollout.keys_destroyed"
    rollout_id: str
    fleet: str
    node_id: str
    roles: tuple[str, ...]
    receipt: str


@message
@dataclass(frozen=True)
class RolloutPaused(_RolloutEvent):
    """The rollout stopped sending commands at ``at_ms``; its clocks stop too. ``by`` is the
    operator, or ``policy`` when a lost member paused it."""

    TYPE = "rollout.paused"
    rollout_id: str
    fleet: str
    by: str
    reason: str
    at_ms: int


@message
@dataclass(frozen=True)
class RolloutResumed(_RolloutEvent):
    """The rollout goes on; open deadlines move by ``paused_ms``, the time it stood still.
    Members a lost-member pause was about are left out from here on."""

    TYPE = "rollout.resumed"
    rollout_id: str
    fleet: str
    by: str
    paused_ms: int


@message
@dataclass(frozen=True)
class RolloutRetried(_RolloutEvent):
    """Failed and lost members are tried again, and a failed rollout runs again."""

    TYPE = "rollout.retried"
    rollout_id: str
    fleet: str
    by: str


@message
@dataclass(frozen=True)
class RolloutApproved(_RolloutEvent):
    """The operator opened the gate before ``publish``."""

    TYPE = "rollout.approved"
    rollout_id: str
    fleet: str
    by: str


@message
@dataclass(frozen=True)
class RolloutFailed(_RolloutEvent):
    """The current stage cannot complete (``reason``); ``retry`` or ``abort`` it."""

    TYPE = "rollout.failed"
    rollout_id: str
    fleet: str
    reason: str


@message
@dataclass(frozen=True)
class RolloutAborted(_RolloutEvent):
    """The rollout was aborted; its keys are destroyed on every member that holds them."""

    TYPE = "rollout.aborted"
    rollout_id: str
    fleet: str
    by: str
    reason: str


@message
@dataclass(frozen=True)
class ArtifactPrepared(_RolloutEvent):
    """The fleet-key artifact to publish, built from the rollout's keys and members."""

    TYPE = "rollout.artifact_prepared"
    rollout_id: str
    fleet: str
    artifact: FleetKeyArtifact


@message
@dataclass(frozen=True)
class ValidationBundleIssued(_RolloutEvent):
    """The artifact's validation bundle, as clients will receive it."""

    TYPE = "rollout.validation_bundle"
    rollout_id: str
    fleet: str
    epoch: int
    digest: str
    bundle: dict[str, Any]


@message
@dataclass(frozen=True)
class StageBundleIssued(_RolloutEvent):
    """A stage completed: its stage bundle, next in the fleet's chain, goes to the cosigners."""

    TYPE = "rollout.stage_bundle"
    rollout_id: str
    fleet: str
    bundle: StageBundle


@message
@dataclass(frozen=True)
class StageBundleLogged(_RolloutEvent):
    """The cosigners logged stage bundle ``serial``: what each of them signed."""

    TYPE = "rollout.stage_bundle_logged"
    rollout_id: str
    fleet: str
    serial: int
    digest: str
    answers: tuple[CosignerAnswer, ...]


@message
@dataclass(frozen=True)
class RolloutActivated(_RolloutEvent):
    """The fleet is active at key ``epoch``: every stage is done and its evidence logged."""

    TYPE = "rollout.activated"
    rollout_id: str
    fleet: str
    epoch: int


# --- fleet-key rotation ----------------------------------------------------------------------


@message
@dataclass(frozen=True)
class RotationStarted(_RolloutEvent):
    """A rotation of the active ``fleet`` to key ``epoch`` began: a rollout by the plan of
    ``predecessor`` (the active rollout) over its members, keeping its replication group; the
    old keys stay for ``overlap_s`` seconds once the new epoch is activated
    (``overlap_from_activation``; false in rotations recorded before it, whose window counted
    from when the new artifact was prepared)."""

    TYPE = "rollout.rotation_started"
    rollout_id: str
    fleet: str
    epoch: int
    predecessor: str
    members: tuple[PlannedMember, ...]
    not_before_ms: int
    not_after_ms: int
    overlap_s: int
    requested_by: str
    overlap_from_activation: bool = False


@message
@dataclass(frozen=True)
class LegacyWindowOpened(_RolloutEvent):
    """A rotation whose overlap counts from its activation was activated: its old keys stay on
    the members until ``until_ms`` (the activation's time plus the overlap), and not before the
    artifact's ``legacy_until``."""

    TYPE = "rollout.legacy_window_opened"
    rollout_id: str
    fleet: str
    until_ms: int


@message
@dataclass(frozen=True)
class LegacyKeysDestroyed(_RolloutEvent):
    """After the overlap window, ``node_id`` destroyed the keys of the old ``epoch``
    (``roles``); ``receipt`` is the digest of its signed answer."""

    TYPE = "rollout.legacy_keys_destroyed"
    rollout_id: str
    fleet: str
    node_id: str
    epoch: int
    roles: tuple[str, ...]
    receipt: str


@message
@dataclass(frozen=True)
class LegacyEpochClosed(_RolloutEvent):
    """Every member destroyed the keys of the old ``epoch`` and the ``destroy`` bundle is
    logged: the rotation is complete."""

    TYPE = "rollout.legacy_epoch_closed"
    rollout_id: str
    fleet: str
    epoch: int


class _FleetEvent(LogEntry):
    """An event about a fleet rather than one of its rollouts."""

    fleet: str

    def subject(self) -> str:
        return subjects.event("rollout", self.fleet)


@message
@dataclass(frozen=True)
class RotationScheduled(_FleetEvent):
    """``fleet``'s keys rotate every ``every_days`` days (0: only when an operator asks),
    each rotation with an overlap of ``overlap_s`` seconds (from its activation when
    ``overlap_from_activation``, false in schedules recorded before it)."""

    TYPE = "rollout.rotation_scheduled"
    fleet: str
    every_days: int
    overlap_s: int
    by: str
    overlap_from_activation: bool = False


# --- fleet retirement ------------------------------------------------------------------------


@message
@dataclass(frozen=True)
class RetirementStarted(_RolloutEvent):
    """The retirement of ``fleet`` began, at its last key ``epoch``: the members of
    ``predecessor`` (the active rollout) stop taking registrations, and destroy the fleet's
    keys once ``drain_until_ms`` has passed. ``successor`` is where users go."""

    TYPE = "rollout.retirement_started"
    rollout_id: str
    fleet: str
    epoch: int
    predecessor: str
    members: tuple[PlannedMember, ...]
    successor: str | None
    drain_until_ms: int
    not_before_ms: int
    not_after_ms: int
    requested_by: str
    reason: str


@message
@dataclass(frozen=True)
class MemberDrained(_RolloutEvent):
    """``node_id`` takes no new registrations on the fleet; ``receipt`` is its answer's digest."""

    TYPE = "rollout.member_drained"
    rollout_id: str
    fleet: str
    node_id: str
    receipt: str


@message
@dataclass(frozen=True)
class FleetRetired(_RolloutEvent):
    """The fleet's retirement document (``digest``) is logged: ``notice`` is what clients and
    verifiers ingest to refuse the fleet from now on."""

    TYPE = "rollout.fleet_retired"
    rollout_id: str
    fleet: str
    last_epoch: int
    digest: str
    notice: dict[str, Any]


# --- member replacement ----------------------------------------------------------------------


@message
@dataclass(frozen=True)
class ReplacementStarted(_RolloutEvent):
    """A replacement of ``replaced`` by ``replacement`` in the active ``fleet`` began: the next
    key ``epoch`` lists the same keys and the new quorum; the other members of ``predecessor``
    carry over what they proved."""

    TYPE = "rollout.replacement_started"
    rollout_id: str
    fleet: str
    epoch: int
    predecessor: str
    replaced: str
    replacement: PlannedMember
    not_before_ms: int
    not_after_ms: int
    requested_by: str


@message
@dataclass(frozen=True)
class MemberReconfigured(_RolloutEvent):
    """``node_id`` applied the replication configuration of ``config_epoch`` (a step of the
    membership change; a joining member answers once it caught up and votes)."""

    TYPE = "rollout.member_reconfigured"
    rollout_id: str
    fleet: str
    node_id: str
    config_epoch: int


EVENT_TYPES: tuple[type[LogEntry], ...] = (
    LeaseTaken,
    PolicySet,
    NodeAnnounced,
    ChallengeIssued,
    NodeEnrolled,
    NodeRejected,
    RolloutStarted,
    RolloutSuperseded,
    StageEntered,
    ConfigFixed,
    MemberChallenged,
    MemberCommanded,
    FleetKeysGenerated,
    MemberKeysImported,
    MemberJoined,
    QuorumProved,
    ProbeFailed,
    MemberFailed,
    MemberKeysDestroyed,
    RolloutPaused,
    RolloutResumed,
    RolloutRetried,
    RolloutApproved,
    RolloutFailed,
    RolloutAborted,
    ArtifactPrepared,
    ValidationBundleIssued,
    StageBundleIssued,
    StageBundleLogged,
    RolloutActivated,
    RotationStarted,
    LegacyWindowOpened,
    LegacyKeysDestroyed,
    LegacyEpochClosed,
    RotationScheduled,
    RetirementStarted,
    MemberDrained,
    FleetRetired,
    ReplacementStarted,
    MemberReconfigured,
)
