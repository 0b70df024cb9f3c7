"""Fleet-key rotation in the pure core: on an operator's command or by schedule.

A rotation is a rollout of an active fleet to the next key epoch, by the active rollout's plan,
over its members, keeping its replication group and stored records: every member attests again
to a fresh nonce (``enroll``), one of them makes the new keys inside its HSM and wraps them to
the others (``ceremony``, under the rotation's own key labels), the members join the group they
already serve (their replicas and records carry over) and a test write commits at the new epoch
(``quorum``), the new artifact lists the new keys and the old ones with ``legacy_until`` = the
time it is prepared + the overlap (``publish``), then ``activate``. The rollout that was active
becomes ``rotated``; its keys stay on the members until the overlap ends.

The overlap runs from the activation, when clients can first fetch the new bundle (a
:class:`~messages.events.LegacyWindowOpened` records its end in the decision that activates),
and never ends before the artifact's ``legacy_until``: time lost between preparing the artifact
and activating it (an approval gate, an orchestrator down) does not come out of the window of
clients still holding the old bundle. Rotations recorded before (commands of version 1) keep
the window they had, from the artifact's preparation.

Once a :class:`~messages.inputs.Tick` finds the overlap over, the rotation enters ``destroy``:
each member destroys the old epoch's keys (the group stays) and answers with a signed receipt;
a ``destroy`` bundle of those receipts, chained like every other, closes the rotation. A member
that does not answer is asked again until it does (a lost one is replaced, then the rotation
completes).

A fleet's schedule (:class:`~messages.inputs.ScheduleRotation`) makes a tick start a rotation
``every_days`` after the fleet's latest rollout began, when nothing else of the fleet is under
way. Everything here is decided from the state and the decision's time.
"""

from __future__ import annotations

from messages.bundle import DESTROY, ENROLL, Evidence
from messages.ceremony import DestroyFleetKeys
from messages.events import (
    LegacyEpochClosed,
    LegacyWindowOpened,
    LogEntry,
    PlannedMember,
    RotationScheduled,
    RotationStarted,
    StageEntered,
)
from messages.inputs import RotateFleet, ScheduleRotation
from messages.schema import Body
from orchestrator.core import evidence
from orchestrator.core.context import Context
from orchestrator.core.fleet_errors import (
    BadRotationSetting,
    FleetBusy,
    FleetNotActive,
    FleetRetiring,
    UnknownFleet,
)
from orchestrator.core.rollout.decisions import DAY_MS, issue, member_command
from orchestrator.core.rollout.state import FleetChain, Rollout, RolloutMember
from orchestrator.core.rollout.step import Step
from orchestrator.core.state import State

MAX_EVERY_DAYS = 3650
MAX_OVERLAP_S = 365 * 24 * 3600
SCHEDULE = "policy:schedule"


def _chain(state: State, fleet: str) -> FleetChain:
    chain = state.book.fleets.get(fleet)
    if chain is None:
        raise UnknownFleet("no rollout of this fleet is on record", fleet=fleet)
    return chain


def planned_members(active: Rollout) -> tuple[PlannedMember, ...]:
    """The active rollout's fleet members, as a later flow of the fleet plans them."""
    return tuple(
        PlannedMember(node, active.members[node].domain) for node in evidence.fleet_members(active)
    )


def not_after_ms(active: Rollout, now_ms: int) -> int:
    """The end of validity of an artifact a later flow of ``active``'s fleet starts at now."""
    return now_ms + active.plan.validity.days * DAY_MS


def active_rollout(state: State, fleet: str) -> Rollout:
    """The fleet's active rollout, once nothing else of the fleet is under way; raises
    :class:`FleetNotActive`, :class:`FleetRetiring` or :class:`FleetBusy`."""
    chain = _chain(state, fleet)
    if chain.active_rollout is None:
        raise FleetNotActive("the fleet has no active key epoch yet", fleet=fleet)
    if chain.retiring:
        raise FleetRetiring("the fleet is retiring", fleet=fleet)
    latest = state.book.of_fleet(fleet)
    assert latest is not None
    if not latest.settled:
        raise FleetBusy(
            f"rollout {latest.rollout_id} of the fleet is {latest.status} in stage {latest.stage}",
            fleet=fleet,
            rollout_id=latest.rollout_id,
        )
    return state.book.rollouts[chain.active_rollout]


def _check_overlap(overlap_s: int) -> None:
    if not 1 <= overlap_s <= MAX_OVERLAP_S:
        raise BadRotationSetting(
            f"the overlap window must be 1 to {MAX_OVERLAP_S} seconds", overlap_s=overlap_s
        )


def rotate(state: State, c: RotateFleet, ctx: Context) -> list[LogEntry]:
    """Begin a rotation of the active fleet ``c.fleet`` to its next key epoch."""
    active = active_rollout(state, c.fleet)
    chain = state.book.fleets[c.fleet]
    overlap_s = c.overlap_s if c.overlap_s is not None else chain.rotation_overlap_s
    _check_overlap(overlap_s)
    return _started(state, active, overlap_s, c.overlap_from_activation, c.requested_by, ctx)


def _started(
    state: State, active: Rollout, overlap_s: int, from_activation: bool, by: str, ctx: Context
) -> list[LogEntry]:
    fleet = active.fleet
    rollout_id = ctx.new_id(f"rotation:{fleet}", 0)
    members = planned_members(active)
    return [
        RotationStarted(
            rollout_id=rollout_id,
            fleet=fleet,
            epoch=state.book.fleets[fleet].next_epoch,
            predecessor=active.rollout_id,
            members=members,
            not_before_ms=ctx.now_ms,
            not_after_ms=not_after_ms(active, ctx.now_ms),
            overlap_s=overlap_s,
            requested_by=by,
            overlap_from_activation=from_activation,
        ),
        StageEntered(rollout_id, fleet, ENROLL),
    ]


def schedule(state: State, c: ScheduleRotation, ctx: Context) -> list[LogEntry]:
    """Set (or, with ``every_days`` 0, stop) the fleet's rotation schedule."""
    chain = _chain(state, c.fleet)
    if not 0 <= c.every_days <= MAX_EVERY_DAYS:
        raise BadRotationSetting(
            f"every_days must be 0 to {MAX_EVERY_DAYS}", every_days=c.every_days
        )
    _check_overlap(c.overlap_s)
    if c.every_days and c.overlap_s * 1000 >= c.every_days * DAY_MS:
        raise BadRotationSetting(
            "the overlap must end before the next rotation is due",
            overlap_s=c.overlap_s,
            every_days=c.every_days,
        )
    scheduled = (chain.rotate_every_days, chain.rotation_overlap_s, chain.overlap_from_activation)
    if scheduled == (c.every_days, c.overlap_s, c.overlap_from_activation):
        return []
    return [
        RotationScheduled(
            c.fleet,
            c.every_days,
            c.overlap_s,
            by=c.requested_by,
            overlap_from_activation=c.overlap_from_activation,
        )
    ]


# --- time ----------------------------------------------------------------------------------


def _legacy_due(state: State, now_ms: int) -> list[Rollout]:
    """Active rotations whose overlap window is over and whose old keys are still to go."""
    out = []
    for rollout_id in sorted(state.book.rollouts):
        rollout = state.book.rollouts[rollout_id]
        rotation = rollout.rotation
        if rollout.status != "active" or rollout.predecessor is None:
            continue
        if rotation is not None and rotation.legacy_closed:
            continue
        until = rollout.legacy_ends_ms
        if rollout.stage != DESTROY and until is not None and now_ms >= until:
            out.append(rollout)
    return out


def _rotations_due(state: State, now_ms: int) -> list[Rollout]:
    """The active rollouts of fleets whose scheduled rotation is due."""
    out = []
    for fleet in sorted(state.book.fleets):
        chain = state.book.fleets[fleet]
        if not chain.rotate_every_days or chain.active_rollout is None:
            continue
        if chain.retiring:
            continue
        latest = state.book.of_fleet(fleet)
        if latest is None or not latest.settled:
            continue
        if now_ms >= latest.not_before_ms + chain.rotate_every_days * DAY_MS:
            out.append(state.book.rollouts[chain.active_rollout])
    return out


def overdue(state: State, now_ms: int) -> bool:
    """Whether a tick at ``now_ms`` would end an overlap window or start a rotation."""
    return bool(_legacy_due(state, now_ms) or _rotations_due(state, now_ms))


def tick(state: State, ctx: Context) -> list[LogEntry]:
    """End the overlap windows that are over; start the rotations that are due."""
    events: list[LogEntry] = [
        StageEntered(r.rollout_id, r.fleet, DESTROY) for r in _legacy_due(state, ctx.now_ms)
    ]
    for active in _rotations_due(state, ctx.now_ms):
        chain = state.book.fleets[active.fleet]
        events += _started(
            state, active, chain.rotation_overlap_s, chain.overlap_from_activation, SCHEDULE, ctx
        )
    return events


# --- advancing -----------------------------------------------------------------------------


def advance(state: State, ctx: Context) -> list[LogEntry]:
    """Open the overlap window of every rotation just activated; destroy the old epoch's keys
    of every rotation whose overlap ended."""
    events: list[LogEntry] = []
    for rollout_id in sorted(state.book.rollouts):
        rollout = state.book.rollouts[rollout_id]
        rotation = rollout.rotation
        if rollout.status != "active" or (rotation is not None and rotation.legacy_closed):
            continue
        if rotation and rotation.overlap_from_activation and rotation.window_until_ms is None:
            until = ctx.now_ms + rotation.overlap_ms
            events.append(LegacyWindowOpened(rollout.rollout_id, rollout.fleet, until_ms=until))
        elif rollout.stage == DESTROY:
            events += _destroy_legacy(state, rollout, ctx)
    return events


def _destroy_command(state: State, rollout: Rollout, member: RolloutMember) -> Body:
    """Destroy the keys of the epoch before ``rollout`` (a rotation's legacy keys, or a retiring
    fleet's keys, leaving its replication group too)."""
    old = state.book.rollouts[rollout.predecessor or ""]
    retiring = rollout.kind == "retirement"
    return DestroyFleetKeys(rollout.fleet, old.epoch, old.key_rollout, leave=retiring)


def _destroy_legacy(state: State, rollout: Rollout, ctx: Context) -> list[LogEntry]:
    predecessor = state.book.rollouts[rollout.predecessor or ""]
    if rollout.waiting_for is not None:
        if state.book.fleets[rollout.fleet].logged < rollout.waiting_for:
            return []
        return [LegacyEpochClosed(rollout.rollout_id, rollout.fleet, epoch=predecessor.epoch)]
    pending = [m for m in rollout.in_order() if m.legacy_destroyed is None]
    if pending:
        return [member_command(rollout, m, DESTROY, ctx) for m in pending if m.step is None]
    receipts = evidence.refs((m.node_id, m.legacy_destroyed) for m in rollout.in_order())
    return issue(state, rollout, DESTROY, Evidence.of(receipts=receipts))


STEPS = {DESTROY: Step("retire", _destroy_command)}
"""The member step that destroys an old epoch's keys (a rotation's, a retirement's)."""
