"""What the orchestrator knows about rollouts and fleets, and how rollout events fold into it.

A :class:`Rollout` is one plan being carried out: its members (each with what it proved so far
and the command it has open), its stage and status, the fleet keys' public halves, the artifact
and its validation bundle. Its ``kind`` says which flow it is: a new fleet's rollout, a key
rotation, a member replacement or a retirement of an active fleet (the later ones name the
rollout they follow, ``predecessor``). A :class:`FleetChain` is what a fleet accumulates across
rollouts: its chain of stage bundles (issued, and how many of them the cosigners logged), the
artifacts prepared for it, its active epoch and rollout, its rotation schedule, its retirement.
The folds here are part of :func:`orchestrator.core.state.evolve`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, ClassVar, Literal

from immutables import Map

from messages.artifact import FleetKey, FleetKeyArtifact
from messages.bundle import DESTROY, DRAIN, StageBundle
from messages.ceremony import WrappedFleetKey
from messages.documents import time_ms
from messages.events import (
    ArtifactPrepared,
    ConfigFixed,
    FleetKeysGenerated,
    FleetRetired,
    LegacyEpochClosed,
    LegacyKeysDestroyed,
    LegacyWindowOpened,
    LogEntry,
    MemberChallenged,
    MemberCommanded,
    MemberDrained,
    MemberFailed,
    MemberJoined,
    MemberKeysDestroyed,
    MemberKeysImported,
    MemberReconfigured,
    ProbeFailed,
    QuorumProved,
    ReplacementStarted,
    RetirementStarted,
    RolloutAborted,
    RolloutActivated,
    RolloutApproved,
    RolloutFailed,
    RolloutPaused,
    RolloutResumed,
    RolloutRetried,
    RolloutStarted,
    RolloutSuperseded,
    RotationScheduled,
    RotationStarted,
    StageBundleIssued,
    StageBundleLogged,
    StageEntered,
    ValidationBundleIssued,
)
from messages.plan import RolloutPlan
from messages.quorum import Config

RolloutStatus = Literal[
    "running", "paused", "failed", "aborted", "superseded", "active", "rotated", "retired"
]
RolloutKind = Literal["rollout", "rotation", "retirement", "replacement"]
MemberStatus = Literal["active", "failed", "lost"]
TERMINAL = ("aborted", "superseded", "active", "rotated", "retired")
"""Statuses a rollout never leaves (``rotated``: it was active and a rotation took over, its
keys stay until the rotation's overlap window ends; ``retired``: a retirement that is done)."""
ENDED = ("aborted", "superseded")
"""Ended without activating: the rollout's keys are to be destroyed."""


@dataclass(frozen=True)
class RolloutMember:
    """One member's progress: what it proved, the command it has open, whether it is lost."""

    node_id: str
    domain: str
    status: MemberStatus = "active"
    reason: str | None = None
    enrollment_id: str | None = None
    attestation: str | None = None
    receipt: str | None = None
    joined: bool = False
    step: str | None = None
    deadline_ms: int | None = None
    destroyed: str | None = None
    destroy_failed: str | None = None
    legacy_destroyed: str | None = None
    """A rotation's member: digest of its answer destroying the old epoch's keys."""
    drained: str | None = None
    """A retirement's member: digest of its answer saying it takes no new registrations."""
    config_epoch: int = 0
    """A replacement's member: the last configuration epoch of the change it applied."""

    @property
    def holds_keys(self) -> bool:
        return self.receipt is not None


@dataclass(frozen=True)
class Rotation:
    """What a fleet-key rotation adds to its rollout: how long the old epoch's keys stay usable
    and whether the old epoch is closed (its keys destroyed everywhere, the bundle logged)."""

    KIND: ClassVar[RolloutKind] = "rotation"
    overlap_ms: int
    overlap_from_activation: bool = False
    """The overlap counts from activation (false in rotations recorded before windows did,
    which counted from when the artifact was prepared)."""
    window_until_ms: int | None = None
    """Activation time + overlap, once activated (a window counted from activation)."""
    legacy_closed: bool = False


@dataclass(frozen=True)
class Retirement:
    """What a fleet's retirement adds: the fleet its users move to, when the members destroy
    the fleet's keys, and why."""

    KIND: ClassVar[RolloutKind] = "retirement"
    successor: str | None
    drain_until_ms: int
    reason: str


@dataclass(frozen=True)
class Replacement:
    """What a member replacement adds: the member replaced, the node that takes its place, and
    the rollout whose key labels hold the keys it wraps (its predecessor's)."""

    KIND: ClassVar[RolloutKind] = "replacement"
    replaced: str
    newcomer: str
    keys_of: str


@dataclass(frozen=True)
class Rollout:
    """One plan being carried out: what every rollout has, and in :attr:`later` what a later
    flow of the fleet (rotation, retirement, replacement) adds."""

    rollout_id: str
    fleet: str
    plan: RolloutPlan
    epoch: int
    order: tuple[str, ...]
    members: Map[str, RolloutMember]
    not_before_ms: int
    not_after_ms: int
    requested_by: str
    stage: str = "enroll"
    status: RolloutStatus = "running"
    reason: str | None = None
    paused_at_ms: int | None = None
    approved: bool = False
    generator: str | None = None
    keys: tuple[FleetKey, ...] = ()
    wrapped: tuple[WrappedFleetKey, ...] = ()
    probe_failures: int = 0
    config: Config | None = None
    """The replication group, fixed when the quorum stage begins."""
    quorum_proof: str | None = None
    artifact: FleetKeyArtifact | None = None
    validation: dict[str, Any] | None = None
    waiting_for: int | None = None
    """Serial of the stage bundle the next stage waits for the cosigners to log."""
    superseded_by: str | None = None
    predecessor: str | None = None
    """A rotation or retirement: the rollout that was active when it began (a rotation makes
    its keys legacy, a retirement destroys them)."""
    group: str | None = None
    """The rollout whose replication group this one continues (None: its own)."""
    later: Rotation | Retirement | Replacement | None = None
    """What a later flow of the fleet adds (None: the fleet's first rollout)."""

    def in_order(self) -> list[RolloutMember]:
        return [self.members[m] for m in self.order]

    def active_members(self) -> list[RolloutMember]:
        return [m for m in self.in_order() if m.status == "active"]

    @property
    def awaiting_approval(self) -> bool:
        return self.stage == "publish" and self.plan.rollout.approve_publish and not self.approved

    @property
    def kind(self) -> RolloutKind:
        return "rollout" if self.later is None else self.later.KIND

    @property
    def rotation(self) -> Rotation | None:
        return self.later if isinstance(self.later, Rotation) else None

    @property
    def retirement(self) -> Retirement | None:
        return self.later if isinstance(self.later, Retirement) else None

    @property
    def replacement(self) -> Replacement | None:
        return self.later if isinstance(self.later, Replacement) else None

    @property
    def key_rollout(self) -> str:
        """The rollout id in the labels of this rollout's keys."""
        replacement = self.replacement
        return self.rollout_id if replacement is None else replacement.keys_of

    @property
    def replication_group(self) -> str:
        """The rollout that formed the replication group this one serves (its store)."""
        return self.group or self.rollout_id

    @cached_property
    def legacy_until_ms(self) -> int | None:
        """When the legacy keys the artifact lists stop being usable (None: it lists none)."""
        if self.artifact is None:
            return None
        ends = [
            time_ms(k.legacy_until, "legacy_until") for k in self.artifact.keys if k.legacy_until
        ]
        return min(ends) if ends else None

    @property
    def legacy_ends_ms(self) -> int | None:
        """When the old epoch's keys may be destroyed: once the overlap after activation is
        over, and not before the artifact's ``legacy_until`` (None: not known yet)."""
        until, rotation = self.legacy_until_ms, self.rotation
        if rotation is None or not rotation.overlap_from_activation or until is None:
            return until
        return None if rotation.window_until_ms is None else max(until, rotation.window_until_ms)

    @property
    def settled(self) -> bool:
        """Nothing of this rollout is under way: it ended, or is active with no old key epoch
        left to destroy."""
        if self.status not in TERMINAL:
            return False
        rotation = self.rotation
        return self.status != "active" or rotation is None or rotation.legacy_closed


@dataclass(frozen=True)
class FleetChain:
    """A fleet across its rollouts: its stage-bundle chain and artifacts."""

    fleet: str
    bundles: tuple[StageBundle, ...] = ()
    issued_by: tuple[str, ...] = ()
    """The rollout that issued each bundle (the cosigner policy it is signed under)."""
    logged: int = 0
    """How many bundles, from the first, the cosigners have logged."""
    artifacts: tuple[FleetKeyArtifact, ...] = ()
    rollout_id: str | None = None
    active_epoch: int | None = None
    validation: dict[str, Any] | None = None
    """The validation bundle of the active epoch."""
    retirement: dict[str, Any] | None = None
    """The logged retirement notice, once the fleet is retired."""
    active_rollout: str | None = None
    """The rollout whose keys are the fleet's current ones."""
    rotate_every_days: int = 0
    """Scheduled rotation period (0: rotations only when an operator asks)."""
    rotation_overlap_s: int = 7 * 24 * 3600
    overlap_from_activation: bool = False
    """Scheduled rotations count their overlap from their activation (false for schedules
    recorded before windows did)."""
    retiring: bool = False
    """The fleet is being retired: it takes no new registrations, its keys are to go."""

    @property
    def next_epoch(self) -> int:
        return self.artifacts[-1].epoch + 1 if self.artifacts else 1


@dataclass(frozen=True)
class RolloutBook:
    """The rollout part of the state."""

    rollouts: Map[str, Rollout] = field(default_factory=Map)
    fleets: Map[str, FleetChain] = field(default_factory=Map)
    enrollments: Map[str, tuple[str, ...]] = field(default_factory=Map)
    """Enrollment id -> the rollouts waiting on that challenge: the one that issued it, and any
    that adopted it while it was open (rollouts of different fleets sharing a node)."""

    def of_fleet(self, fleet: str) -> Rollout | None:
        """The fleet's latest rollout."""
        chain = self.fleets.get(fleet)
        if chain is None or chain.rollout_id is None:
            return None
        return self.rollouts[chain.rollout_id]


# --- folds -----------------------------------------------------------------------------------


def _put(book: RolloutBook, rollout: Rollout) -> RolloutBook:
    return replace(book, rollouts=book.rollouts.set(rollout.rollout_id, rollout))


def _member(book: RolloutBook, rollout_id: str, node_id: str, **changes: Any) -> RolloutBook:
    rollout = book.rollouts[rollout_id]
    member = replace(rollout.members[node_id], **changes)
    return _put(book, replace(rollout, members=rollout.members.set(node_id, member)))


def _rollout(book: RolloutBook, rollout_id: str, **changes: Any) -> RolloutBook:
    return _put(book, replace(book.rollouts[rollout_id], **changes))


def _rotation(book: RolloutBook, rollout_id: str, **changes: Any) -> RolloutBook:
    rollout = book.rollouts[rollout_id]
    assert rollout.rotation is not None
    return _put(book, replace(rollout, later=replace(rollout.rotation, **changes)))


def _chain(book: RolloutBook, fleet: str, **changes: Any) -> RolloutBook:
    chain = replace(book.fleets.get(fleet) or FleetChain(fleet), **changes)
    return replace(book, fleets=book.fleets.set(fleet, chain))


def _started(book: RolloutBook, e: RolloutStarted) -> RolloutBook:
    members = Map({m.node_id: RolloutMember(m.node_id, m.domain) for m in e.members})
    rollout = Rollout(
        rollout_id=e.rollout_id,
        fleet=e.fleet,
        plan=e.plan,
        epoch=e.epoch,
        order=tuple(m.node_id for m in e.members),
        members=members,
        not_before_ms=e.not_before_ms,
        not_after_ms=e.not_after_ms,
        requested_by=e.requested_by,
    )
    return _chain(_put(book, rollout), e.fleet, rollout_id=e.rollout_id)


def _later_flow(
    book: RolloutBook, e: RotationStarted | RetirementStarted, later: Rotation | Retirement
) -> Rollout:
    """A flow of an active fleet (rotation, retirement): its predecessor's plan and
    replication group, the members ``e`` names."""
    predecessor = book.rollouts[e.predecessor]
    return Rollout(
        rollout_id=e.rollout_id,
        fleet=e.fleet,
        plan=predecessor.plan,
        epoch=e.epoch,
        order=tuple(m.node_id for m in e.members),
        members=Map({m.node_id: RolloutMember(m.node_id, m.domain) for m in e.members}),
        not_before_ms=e.not_before_ms,
        not_after_ms=e.not_after_ms,
        requested_by=e.requested_by,
        predecessor=e.predecessor,
        group=predecessor.replication_group,
        later=later,
    )


def _rotation_started(book: RolloutBook, e: RotationStarted) -> RolloutBook:
    rotation = _later_flow(
        book, e, Rotation(e.overlap_s * 1000, overlap_from_activation=e.overlap_from_activation)
    )
    return _chain(_put(book, rotation), e.fleet, rollout_id=e.rollout_id)


def _window_opened(book: RolloutBook, e: LegacyWindowOpened) -> RolloutBook:
    return _rotation(book, e.rollout_id, window_until_ms=e.until_ms)


def _retirement_started(book: RolloutBook, e: RetirementStarted) -> RolloutBook:
    retirement = _later_flow(book, e, Retirement(e.successor, e.drain_until_ms, e.reason))
    return _chain(_put(book, retirement), e.fleet, rollout_id=e.rollout_id, retiring=True)


def _drained(book: RolloutBook, e: MemberDrained) -> RolloutBook:
    return _done(book, e.rollout_id, e.node_id, drained=e.receipt)


def _retired(book: RolloutBook, e: FleetRetired) -> RolloutBook:
    book = _chain(book, e.fleet, retirement=e.notice)
    return _rollout(book, e.rollout_id, status="retired", stage="retired", waiting_for=None)


def _replacement_started(book: RolloutBook, e: ReplacementStarted) -> RolloutBook:
    """The predecessor's members carry over what they proved (attestation, keys, the
    configuration they serve); the replaced one is lost; the newcomer starts afresh."""
    predecessor = book.rollouts[e.predecessor]
    assert predecessor.config is not None
    members = {}
    for old in predecessor.in_order():
        if old.status != "active" or not old.holds_keys:
            continue
        if old.node_id == e.replaced:
            members[old.node_id] = RolloutMember(
                old.node_id, old.domain, status="lost", reason="replaced"
            )
            continue
        members[old.node_id] = RolloutMember(
            old.node_id,
            old.domain,
            attestation=old.attestation,
            receipt=old.receipt,
            joined=True,
            config_epoch=predecessor.config.epoch,
        )
    new = e.replacement
    members[new.node_id] = RolloutMember(new.node_id, new.domain)
    replacement = Rollout(
        rollout_id=e.rollout_id,
        fleet=e.fleet,
        plan=predecessor.plan,
        epoch=e.epoch,
        order=tuple(members),
        members=Map(members),
        not_before_ms=e.not_before_ms,
        not_after_ms=e.not_after_ms,
        requested_by=e.requested_by,
        predecessor=e.predecessor,
        group=predecessor.replication_group,
        keys=predecessor.keys,
        later=Replacement(e.replaced, new.node_id, predecessor.key_rollout),
    )
    return _chain(_put(book, replacement), e.fleet, rollout_id=e.rollout_id)


def _reconfigured(book: RolloutBook, e: MemberReconfigured) -> RolloutBook:
    return _done(book, e.rollout_id, e.node_id, config_epoch=e.config_epoch, joined=True)


def _legacy_destroyed(book: RolloutBook, e: LegacyKeysDestroyed) -> RolloutBook:
    return _done(book, e.rollout_id, e.node_id, legacy_destroyed=e.receipt)


def _legacy_closed(book: RolloutBook, e: LegacyEpochClosed) -> RolloutBook:
    rollout = book.rollouts[e.rollout_id]
    assert rollout.rotation is not None
    closed = replace(rollout.rotation, legacy_closed=True)
    return _put(book, replace(rollout, later=closed, waiting_for=None))


def _rotation_scheduled(book: RolloutBook, e: RotationScheduled) -> RolloutBook:
    return _chain(
        book,
        e.fleet,
        rotate_every_days=e.every_days,
        rotation_overlap_s=e.overlap_s,
        overlap_from_activation=e.overlap_from_activation,
    )


def _superseded(book: RolloutBook, e: RolloutSuperseded) -> RolloutBook:
    return _rollout(book, e.rollout_id, status="superseded", superseded_by=e.by)


def _stage_entered(book: RolloutBook, e: StageEntered) -> RolloutBook:
    return _rollout(book, e.rollout_id, stage=e.stage, waiting_for=None)


def _config_fixed(book: RolloutBook, e: ConfigFixed) -> RolloutBook:
    return _rollout(book, e.rollout_id, config=e.config)


def _challenged(book: RolloutBook, e: MemberChallenged) -> RolloutBook:
    waiting = book.enrollments.get(e.enrollment_id, ())
    if e.rollout_id not in waiting:
        enrollments = book.enrollments.set(e.enrollment_id, (*waiting, e.rollout_id))
        book = replace(book, enrollments=enrollments)
    return _member(
        book, e.rollout_id, e.node_id, enrollment_id=e.enrollment_id, deadline_ms=e.deadline_ms
    )


def attested(book: RolloutBook, enrollment_id: str, node_id: str, digest: str) -> RolloutBook:
    """Note an accepted attestation for every rollout waiting on it (a rejected one leaves
    the members as they are: each rollout reads the reason and challenges again or gives the
    member up)."""
    for rollout_id in book.enrollments.get(enrollment_id, ()):
        book = _member(book, rollout_id, node_id, attestation=digest, deadline_ms=None)
    return book


def _commanded(book: RolloutBook, e: MemberCommanded) -> RolloutBook:
    return _member(book, e.rollout_id, e.node_id, step=e.step, deadline_ms=e.deadline_ms)


def _done(book: RolloutBook, rollout_id: str, node_id: str, **changes: Any) -> RolloutBook:
    return _member(book, rollout_id, node_id, step=None, deadline_ms=None, **changes)


def _keys_generated(book: RolloutBook, e: FleetKeysGenerated) -> RolloutBook:
    book = _rollout(book, e.rollout_id, generator=e.generator, keys=e.keys, wrapped=e.wrapped)
    return _done(book, e.rollout_id, e.generator, receipt=e.receipt)


def _keys_imported(book: RolloutBook, e: MemberKeysImported) -> RolloutBook:
    return _done(book, e.rollout_id, e.node_id, receipt=e.receipt)


def _joined(book: RolloutBook, e: MemberJoined) -> RolloutBook:
    return _done(book, e.rollout_id, e.node_id, joined=True)


def _quorum_proved(book: RolloutBook, e: QuorumProved) -> RolloutBook:
    book = _rollout(book, e.rollout_id, quorum_proof=e.proof)
    return _done(book, e.rollout_id, e.node_id)


def _probe_failed(book: RolloutBook, e: ProbeFailed) -> RolloutBook:
    failures = book.rollouts[e.rollout_id].probe_failures + 1
    return _done(_rollout(book, e.rollout_id, probe_failures=failures), e.rollout_id, e.node_id)


def _member_failed(book: RolloutBook, e: MemberFailed) -> RolloutBook:
    rollout = book.rollouts[e.rollout_id]
    if e.step == "retire":
        return _done(book, e.rollout_id, e.node_id, destroy_failed=e.reason)
    if e.step in (DESTROY, DRAIN):
        return _done(book, e.rollout_id, e.node_id)  # asked again until it answers
    status = "lost" if rollout.plan.rollout.on_member_loss == "continue" else "failed"
    return _done(book, e.rollout_id, e.node_id, status=status, reason=e.reason)


def _keys_destroyed(book: RolloutBook, e: MemberKeysDestroyed) -> RolloutBook:
    return _done(book, e.rollout_id, e.node_id, destroyed=e.receipt)


def _paused(book: RolloutBook, e: RolloutPaused) -> RolloutBook:
    return _rollout(book, e.rollout_id, status="paused", reason=e.reason, paused_at_ms=e.at_ms)


def _resumed(book: RolloutBook, e: RolloutResumed) -> RolloutBook:
    rollout = book.rollouts[e.rollout_id]
    members = rollout.members
    for member in rollout.in_order():
        changes: dict[str, Any] = {}
        if member.deadline_ms is not None:
            changes["deadline_ms"] = member.deadline_ms + e.paused_ms
        if member.status == "failed":
            changes["status"] = "lost"
        if changes:
            members = members.set(member.node_id, replace(member, **changes))
    return _put(
        book,
        replace(rollout, members=members, status="running", reason=None, paused_at_ms=None),
    )


def _retried(book: RolloutBook, e: RolloutRetried) -> RolloutBook:
    rollout = book.rollouts[e.rollout_id]
    members = rollout.members
    for member in rollout.in_order():
        if member.status != "active":
            fresh = replace(member, status="active", reason=None, step=None, deadline_ms=None)
            members = members.set(member.node_id, fresh)
    status = "running" if rollout.status == "failed" else rollout.status
    return _put(
        book,
        replace(rollout, members=members, status=status, reason=None, probe_failures=0),
    )


def _approved(book: RolloutBook, e: RolloutApproved) -> RolloutBook:
    return _rollout(book, e.rollout_id, approved=True)


def _failed(book: RolloutBook, e: RolloutFailed) -> RolloutBook:
    return _rollout(book, e.rollout_id, status="failed", reason=e.reason)


def _aborted(book: RolloutBook, e: RolloutAborted) -> RolloutBook:
    return _rollout(book, e.rollout_id, status="aborted", reason=e.reason, paused_at_ms=None)


def _artifact_prepared(book: RolloutBook, e: ArtifactPrepared) -> RolloutBook:
    chain = book.fleets.get(e.fleet) or FleetChain(e.fleet)
    book = _chain(book, e.fleet, artifacts=(*chain.artifacts, e.artifact))
    return _rollout(book, e.rollout_id, artifact=e.artifact)


def _validation(book: RolloutBook, e: ValidationBundleIssued) -> RolloutBook:
    return _rollout(book, e.rollout_id, validation=e.bundle)


def _bundle_issued(book: RolloutBook, e: StageBundleIssued) -> RolloutBook:
    chain = book.fleets.get(e.fleet) or FleetChain(e.fleet)
    book = _chain(
        book,
        e.fleet,
        bundles=(*chain.bundles, e.bundle),
        issued_by=(*chain.issued_by, e.rollout_id),
    )
    return _rollout(book, e.rollout_id, waiting_for=e.bundle.serial)


def _bundle_logged(book: RolloutBook, e: StageBundleLogged) -> RolloutBook:
    return _chain(book, e.fleet, logged=e.serial)


def _activated(book: RolloutBook, e: RolloutActivated) -> RolloutBook:
    rollout = book.rollouts[e.rollout_id]
    book = _chain(
        book,
        e.fleet,
        active_epoch=e.epoch,
        validation=rollout.validation,
        active_rollout=e.rollout_id,
    )
    if rollout.predecessor is not None:
        book = _rollout(book, rollout.predecessor, status="rotated")
    return _rollout(book, e.rollout_id, status="active", stage="active")


# Each fold takes the event type it is listed under.
ROLLOUT_FOLDS: dict[type[LogEntry], Callable[[RolloutBook, Any], RolloutBook]] = {
    RolloutStarted: _started,
    RolloutSuperseded: _superseded,
    StageEntered: _stage_entered,
    ConfigFixed: _config_fixed,
    MemberChallenged: _challenged,
    MemberCommanded: _commanded,
    FleetKeysGenerated: _keys_generated,
    MemberKeysImported: _keys_imported,
    MemberJoined: _joined,
    QuorumProved: _quorum_proved,
    ProbeFailed: _probe_failed,
    MemberFailed: _member_failed,
    MemberKeysDestroyed: _keys_destroyed,
    RolloutPaused: _paused,
    RolloutResumed: _resumed,
    RolloutRetried: _retried,
    RolloutApproved: _approved,
    RolloutFailed: _failed,
    RolloutAborted: _aborted,
    ArtifactPrepared: _artifact_prepared,
    ValidationBundleIssued: _validation,
    StageBundleIssued: _bundle_issued,
    StageBundleLogged: _bundle_logged,
    RolloutActivated: _activated,
    RotationStarted: _rotation_started,
    LegacyWindowOpened: _window_opened,
    LegacyKeysDestroyed: _legacy_destroyed,
    LegacyEpochClosed: _legacy_closed,
    RotationScheduled: _rotation_scheduled,
    RetirementStarted: _retirement_started,
    MemberDrained: _drained,
    FleetRetired: _retired,
    ReplacementStarted: _replacement_started,
    MemberReconfigured: _reconfigured,
}
