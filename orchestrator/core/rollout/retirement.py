"""Fleet retirement in the pure core.

An operator retires an active fleet, usually once its successor is active. The retirement is a
rollout of its own over the active rollout's members, in two stages:

- ``drain``: every member stops taking new registrations on the fleet (recoveries go on, so
  users can still recover and re-register on the successor); a ``drain`` bundle of their signed
  answers is logged;
- ``retire``: once a tick finds the drain window over, every member destroys the fleet's keys
  and leaves its replication group, answering with a signed receipt; a ``retire`` bundle of the
  receipts is logged, then the fleet-retirement document (:class:`~messages.retirement.
  FleetRetirement`), which the shell has the plan's cosigners log; the logged notice it records
  (:class:`~messages.inputs.RetirementLogged`) is what verifiers ingest to refuse the fleet.

A member that does not answer is asked again until it does. A retirement cannot be aborted:
once members stopped taking registrations, the fleet is on its way out.
"""

from __future__ import annotations

from messages.bundle import DESTROY, DRAIN, RETIRE, Evidence
from messages.ceremony import DrainFleet
from messages.documents import DocumentError
from messages.errors import MessageError
from messages.events import FleetRetired, LogEntry, RetirementStarted, StageEntered
from messages.ids import format_time
from messages.inputs import CosignerAnswer, RetirementLogged, StartRetirement
from messages.retirement import FleetRetirement
from messages.schema import Body
from messages.verification import MalformedBundle
from messages.verify import parse_notice
from orchestrator.core import evidence
from orchestrator.core.context import Context
from orchestrator.core.fleet_errors import BadRetirement, NoActiveSuccessor
from orchestrator.core.rollout.decisions import issue, member_command
from orchestrator.core.rollout.rotation import active_rollout, not_after_ms, planned_members
from orchestrator.core.rollout.state import Rollout, RolloutMember
from orchestrator.core.rollout.step import Step
from orchestrator.core.state import State

MAX_DRAIN_S = 365 * 24 * 3600


def start(state: State, c: StartRetirement, ctx: Context) -> list[LogEntry]:
    """Begin retiring the active fleet ``c.fleet``."""
    active = active_rollout(state, c.fleet)  # refuses a fleet retiring already
    if not 0 <= c.drain_s <= MAX_DRAIN_S:
        raise BadRetirement(f"the drain window is 0 to {MAX_DRAIN_S} seconds", drain_s=c.drain_s)
    successor = state.book.fleets.get(c.successor) if c.successor is not None else None
    if c.successor == c.fleet:
        raise NoActiveSuccessor("a fleet cannot succeed itself", fleet=c.fleet)
    if not c.force and (successor is None or successor.active_epoch is None):
        raise NoActiveSuccessor(
            "the successor is not an active fleet (force retires without one)",
            fleet=c.fleet,
            successor=c.successor,
        )
    rollout_id = ctx.new_id(f"retirement:{c.fleet}", 0)
    members = planned_members(active)
    return [
        RetirementStarted(
            rollout_id=rollout_id,
            fleet=c.fleet,
            epoch=active.epoch,
            predecessor=active.rollout_id,
            members=members,
            successor=c.successor,
            drain_until_ms=ctx.now_ms + c.drain_s * 1000,
            not_before_ms=ctx.now_ms,
            not_after_ms=not_after_ms(active, ctx.now_ms),
            requested_by=c.requested_by,
            reason=c.reason,
        ),
        StageEntered(rollout_id, c.fleet, DRAIN),
    ]


def document(rollout: Rollout) -> FleetRetirement:
    """The fleet-retirement document of ``rollout`` (a retirement), from the state alone."""
    retirement = rollout.retirement
    assert retirement is not None
    return FleetRetirement(
        fleet=rollout.fleet,
        last_epoch=rollout.epoch,
        successor=retirement.successor,
        retired_at=format_time(retirement.drain_until_ms),
        reason=retirement.reason,
    )


def to_log(state: State) -> list[Rollout]:
    """Retirements whose ``retire`` bundle is logged and whose document is still to log."""
    out = []
    for rollout_id in sorted(state.book.rollouts):
        rollout = state.book.rollouts[rollout_id]
        if rollout.kind != "retirement" or rollout.status != "running":
            continue
        chain = state.book.fleets[rollout.fleet]
        waiting = rollout.waiting_for
        if rollout.stage == RETIRE and waiting is not None and chain.logged >= waiting:
            out.append(rollout)
    return out


def logged(state: State, c: RetirementLogged, ctx: Context) -> list[LogEntry]:
    """Record the logged notice of the fleet's retirement document."""
    retiring = [r for r in to_log(state) if r.fleet == c.fleet]
    chain = state.book.fleets.get(c.fleet)
    if not retiring:
        if chain is not None and chain.retirement is not None:
            return []  # recorded already
        raise BadRetirement("no retirement of this fleet waits for its document", fleet=c.fleet)
    rollout = retiring[0]
    expected = document(rollout)
    try:
        notice = parse_notice(c.notice)
    except (MalformedBundle, DocumentError, MessageError) as exc:
        raise BadRetirement(f"not a logged notice: {exc}") from None
    if notice.logged.digest != expected.digest:
        raise BadRetirement("the notice is not this fleet's retirement document", fleet=c.fleet)
    answers = [
        CosignerAnswer(p.log, p.statement.to_json(), p.signature, p.inclusion, p.checkpoint)
        for p in notice.proofs
    ]
    vouched = evidence.vouchers(expected, answers, evidence.pins_of(rollout), state.signer_keys)
    if len(vouched) < rollout.plan.cosigners.threshold:
        raise evidence.BadCosignerAnswers(
            "too few pinned cosigners vouch",
            vouchers=sorted(vouched),
            threshold=rollout.plan.cosigners.threshold,
        )
    return [
        FleetRetired(
            rollout.rollout_id, c.fleet, rollout.epoch, digest=expected.digest, notice=c.notice
        )
    ]


# --- time and advancing -------------------------------------------------------------------


def _drained_out(state: State, now_ms: int) -> list[Rollout]:
    """Running retirements whose drain bundle is logged and whose drain window is over."""
    out = []
    for rollout_id in sorted(state.book.rollouts):
        rollout = state.book.rollouts[rollout_id]
        retirement = rollout.retirement
        if retirement is None or rollout.status != "running" or rollout.stage != DRAIN:
            continue
        waiting = rollout.waiting_for
        logged_all = waiting is not None and state.book.fleets[rollout.fleet].logged >= waiting
        if logged_all and now_ms >= retirement.drain_until_ms:
            out.append(rollout)
    return out


def overdue(state: State, now_ms: int) -> bool:
    """Whether a tick at ``now_ms`` would end a drain window."""
    return bool(_drained_out(state, now_ms))


def tick(state: State, ctx: Context) -> list[LogEntry]:
    """Move each retirement whose drain window is over on to destroying the fleet's keys."""
    return [StageEntered(r.rollout_id, r.fleet, RETIRE) for r in _drained_out(state, ctx.now_ms)]


def advance(state: State, ctx: Context) -> list[LogEntry]:
    """What each running retirement does next."""
    events: list[LogEntry] = []
    for rollout_id in sorted(state.book.rollouts):
        rollout = state.book.rollouts[rollout_id]
        if rollout.kind == "retirement" and rollout.status == "running":
            events += _run(state, rollout, ctx)
    return events


def _run(state: State, rollout: Rollout, ctx: Context) -> list[LogEntry]:
    if rollout.waiting_for is not None:
        return []  # the tick (drain) or the shell (retirement document) moves it on
    if rollout.stage == DRAIN:
        step, done = DRAIN, {m.node_id: m.drained for m in rollout.in_order()}
    else:
        step, done = DESTROY, {m.node_id: m.destroyed for m in rollout.in_order()}
    pending = [m for m in rollout.in_order() if done[m.node_id] is None]
    if pending:
        return [member_command(rollout, m, step, ctx) for m in pending if m.step is None]
    receipts = evidence.refs(done.items())
    return issue(state, rollout, rollout.stage, Evidence.of(receipts=receipts))


def _drain_command(state: State, rollout: Rollout, member: RolloutMember) -> Body:
    """Stop taking new registrations in the retiring fleet."""
    return DrainFleet(rollout.fleet, rollout.epoch)


STEPS = {DRAIN: Step("retire", _drain_command)}
"""The member step that drains a retiring fleet."""
