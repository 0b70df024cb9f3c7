"""Rollouts in the pure core: deciding on rollout inputs, and advancing rollouts.

The deciders here take the operator's commands (:class:`StartRollout`, :class:`OperateRollout`)
and the passing of time; members' answers and cosigners' outcomes are judged in
:mod:`orchestrator.core.rollout.answers`. After every decision, whatever its input,
:func:`advance` moves each rollout as far as its state allows: it challenges members, opens
member commands in waves, pauses or fails on lost members as the plan says, issues each stage's
bundle and enters the next stage once the cosigners logged it. The effects the shell carries
out (member commands, bundles to sign, the artifact to publish) are read off the state by
:mod:`orchestrator.core.rollout.effects`; nothing here touches the network.

Stages: ``enroll`` → ``ceremony`` → ``quorum`` → ``publish`` → ``activate``. A rollout's status is
``running``, ``paused`` (clocks stopped), ``failed`` (``retry`` or ``abort``), or one it never
leaves: ``active``, ``aborted`` (its keys are destroyed on every member, then an ``abort``
bundle closes the chain), ``superseded`` (a new plan for the fleet took over; keys destroyed),
``rotated`` (it was active and a later epoch of the fleet took over).

An active fleet's later flows are rollouts too, of other kinds, started by their own modules and
run by the same stages here: a key rotation (:mod:`orchestrator.core.rollout.rotation`) and a member
replacement (:mod:`orchestrator.core.rollout.replacement`). A retirement
(:mod:`orchestrator.core.rollout.retirement`) has stages of its own and is run there.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from messages.artifact import Member, Quorum
from messages.bundle import (
    ABORT,
    ACTIVATE,
    CEREMONY,
    ENROLL,
    PUBLISH,
    QUORUM,
    Evidence,
)
from messages.ceremony import (
    GenerateFleetKeys,
    ImportFleetKeys,
    JoinFleet,
    Recipient,
    RetireFleet,
)
from messages.documents import time_ms
from messages.events import (
    NO_ANSWER,
    NONCE_EXPIRED,
    ArtifactPrepared,
    ChallengeIssued,
    ConfigFixed,
    LogEntry,
    MemberChallenged,
    MemberCommanded,
    MemberFailed,
    PlannedMember,
    ProbeFailed,
    RolloutAborted,
    RolloutActivated,
    RolloutApproved,
    RolloutFailed,
    RolloutPaused,
    RolloutResumed,
    RolloutRetried,
    RolloutStarted,
    RolloutSuperseded,
    StageBundleIssued,
    StageEntered,
)
from messages.inputs import ROLLOUT_ACTIONS, OperateRollout, StartRollout
from messages.plan import RolloutPlan, check_plan
from messages.schema import Body
from orchestrator.core import evidence
from orchestrator.core.context import Context
from orchestrator.core.errors import (
    CommandRefused,
    FleetActive,
    MembersUnavailable,
    RolloutConflict,
    UnknownNode,
    UnknownRollout,
)
from orchestrator.core.rollout.state import ENDED, TERMINAL, Rollout, RolloutMember
from orchestrator.core.rollout.step import Step
from orchestrator.core.state import State

DAY_MS = 24 * 3600 * 1000
MAX_PROBE_FAILURES = 3
POLICY = "policy"
NODE_ROLE = "node"

GENERATE, IMPORT, JOIN, PROBE, RETIRE = "generate", "import", "join", "probe", "retire"
NEXT_STAGE = {ENROLL: CEREMONY, CEREMONY: QUORUM, QUORUM: PUBLISH, PUBLISH: ACTIVATE}
RETRYABLE_ENROLLMENT = (NO_ANSWER, NONCE_EXPIRED)
"""Rejections that say only that the answer did not come in time: the member is challenged
again while its own deadline lasts."""


# --- starting ------------------------------------------------------------------------------


def start(state: State, c: StartRollout, ctx: Context) -> list[LogEntry]:
    """Begin a rollout by ``c.plan``; a rollout of the same fleet in progress is superseded."""
    plan = c.plan
    check_plan(plan)
    chain = state.book.fleets.get(plan.fleet)
    if chain is not None and chain.active_epoch is not None:
        raise FleetActive("the fleet is active; roll out a new fleet id instead", fleet=plan.fleet)
    members = select_members(state, plan)
    rollout_id = ctx.new_id("rollout", 0)
    events: list[LogEntry] = []
    current = state.book.of_fleet(plan.fleet)
    if current is not None and current.status not in TERMINAL:
        events.append(RolloutSuperseded(current.rollout_id, plan.fleet, by=rollout_id))
    given = plan.validity.not_before
    not_before = time_ms(given, "not_before") if given is not None else ctx.now_ms
    events += [
        RolloutStarted(
            rollout_id=rollout_id,
            fleet=plan.fleet,
            epoch=chain.next_epoch if chain is not None else 1,
            plan=plan,
            members=tuple(members),
            not_before_ms=not_before,
            not_after_ms=not_before + plan.validity.days * DAY_MS,
            requested_by=c.requested_by,
        ),
        StageEntered(rollout_id, plan.fleet, ENROLL),
    ]
    return events


def select_members(state: State, plan: RolloutPlan) -> list[PlannedMember]:
    """The plan's members among the announced nodes: named ones, or ``count`` picked in id
    order, ``min_per_domain`` from each domain first, then round robin over the domains."""
    selection = plan.members
    if selection.ids:
        for node_id in selection.ids:
            if node_id not in state.nodes:
                raise UnknownNode("a planned member has not announced itself", node_id=node_id)
        chosen = [PlannedMember(n, state.nodes[n].domain) for n in selection.ids]
    else:
        chosen = _pick(state, plan)
    domains = Counter(m.domain for m in chosen)
    outside = sorted(set(domains) - set(selection.domains)) if selection.domains else []
    if outside:
        raise MembersUnavailable("members outside the plan's failure domains", domains=outside)
    for domain in selection.domains or sorted(domains):
        if domains[domain] < selection.min_per_domain:
            raise MembersUnavailable(
                "too few members in a failure domain",
                domain=domain,
                members=domains[domain],
                min_per_domain=selection.min_per_domain,
            )
    if plan.quorum.survive_domain_loss:
        quorum = Quorum(tuple(Member(m.node_id, m.domain) for m in chosen), plan.threshold)
        if not quorum.survives_domain_loss():
            raise MembersUnavailable(
                "losing one failure domain would lose the quorum", domains=dict(domains)
            )
    return chosen


def _pick(state: State, plan: RolloutPlan) -> list[PlannedMember]:
    selection = plan.members
    by_domain: dict[str, list[str]] = {}
    for node in sorted(state.nodes.values(), key=lambda n: n.node_id):
        if node.status == "rejected":
            continue
        if selection.domains and node.domain not in selection.domains:
            continue
        if selection.hsm is not None and node.hsm != selection.hsm:
            continue
        by_domain.setdefault(node.domain, []).append(node.node_id)
    order = list(selection.domains) if selection.domains else sorted(by_domain)
    queues = {d: list(by_domain.get(d, [])) for d in order}
    chosen: list[PlannedMember] = []
    for domain in order:
        for _ in range(min(selection.min_per_domain, len(queues[domain]))):
            chosen.append(PlannedMember(queues[domain].pop(0), domain))
    if len(chosen) > selection.count:
        raise MembersUnavailable(
            "min_per_domain in every failure domain with nodes needs more members than planned",
            domains=len(order),
            count=selection.count,
        )
    while len(chosen) < selection.count and any(queues.values()):
        for domain in order:
            if queues[domain] and len(chosen) < selection.count:
                chosen.append(PlannedMember(queues[domain].pop(0), domain))
    if len(chosen) < selection.count:
        raise MembersUnavailable(
            "fewer eligible nodes have announced themselves than the plan needs",
            eligible=len(chosen),
            count=selection.count,
        )
    return chosen


# --- operator actions ----------------------------------------------------------------------


def operate(state: State, c: OperateRollout, ctx: Context) -> list[LogEntry]:
    """``pause``, ``resume``, ``abort``, ``retry`` or ``approve`` the fleet's latest rollout.

    Repeating an action that already took effect changes nothing; an action that does not fit
    the rollout's status is a :class:`RolloutConflict`.
    """
    rollout = state.book.of_fleet(c.fleet)
    if rollout is None:
        raise UnknownRollout("no rollout of this fleet", fleet=c.fleet)
    rid, fleet, by, status = rollout.rollout_id, rollout.fleet, c.requested_by, rollout.status
    if c.action not in ROLLOUT_ACTIONS:
        raise CommandRefused("unknown rollout action", action=c.action)
    already = {
        "abort": status == "aborted",
        "pause": status == "paused",
        "resume": status == "running",
        "approve": rollout.approved,
    }
    if already.get(c.action, False):
        return []
    _refuse_if(status in TERMINAL, c.action, rollout)
    # A retirement's members stopped registering: no way back. A replacement is aborted only
    # while its newcomer is being attested: after that it holds keys and the group changes.
    allowed = {
        "retirement": ("pause", "resume"),
        "replacement": ("pause", "resume", "retry", "approve")
        + (("abort",) if rollout.stage == ENROLL else ()),
    }
    _refuse_if(c.action not in allowed.get(rollout.kind, ROLLOUT_ACTIONS), c.action, rollout)
    if c.action == "abort":
        return [RolloutAborted(rid, fleet, by=by, reason=c.reason or "aborted by the operator")]
    if c.action == "pause":
        _refuse_if(status != "running", c.action, rollout)
        return [RolloutPaused(rid, fleet, by=by, reason=c.reason or "paused", at_ms=ctx.now_ms)]
    if c.action == "resume":
        _refuse_if(status != "paused", c.action, rollout)
        return [_resumed(rollout, by, ctx)]
    if c.action == "retry":
        again = [m for m in rollout.in_order() if m.status != "active"]
        _refuse_if(not again and status != "failed", c.action, rollout)
        events: list[LogEntry] = [RolloutRetried(rid, fleet, by=by)]
        return events + ([_resumed(rollout, by, ctx)] if status == "paused" else [])
    _refuse_if(rollout.artifact is not None, c.action, rollout)
    return [RolloutApproved(rid, fleet, by=by)]


def _resumed(rollout: Rollout, by: str, ctx: Context) -> RolloutResumed:
    paused_ms = max(0, ctx.now_ms - (rollout.paused_at_ms or ctx.now_ms))
    return RolloutResumed(rollout.rollout_id, rollout.fleet, by=by, paused_ms=paused_ms)


def _refuse_if(condition: bool, action: str, rollout: Rollout) -> None:
    if condition:
        raise RolloutConflict(
            f"cannot {action} a rollout that is {rollout.status} in stage {rollout.stage}",
            fleet=rollout.fleet,
            rollout_id=rollout.rollout_id,
        )


# --- time ----------------------------------------------------------------------------------------


def _overdue_members(state: State, now_ms: int) -> list[tuple[Rollout, RolloutMember]]:
    """Members whose open step (or enroll) is past its deadline, in rollouts whose clocks run:
    running ones, ended ones destroying their keys, active ones destroying an old epoch's."""
    out = []
    for rollout_id in sorted(state.book.rollouts):
        rollout = state.book.rollouts[rollout_id]
        if rollout.status not in ("running", "active", *ENDED):
            continue
        for member in rollout.in_order():
            if member.deadline_ms is None or member.deadline_ms >= now_ms:
                continue
            if member.step is None and (rollout.status != "running" or member.status != "active"):
                continue  # an enroll deadline counts only while the rollout runs
            out.append((rollout, member))
    return out


def overdue(state: State, now_ms: int) -> bool:
    """Whether a tick at ``now_ms`` would fail a member or a probe."""
    return bool(_overdue_members(state, now_ms))


def tick(state: State, ctx: Context) -> list[LogEntry]:
    """Fail every member step (and probe) whose deadline passed."""
    events: list[LogEntry] = []
    for rollout, member in _overdue_members(state, ctx.now_ms):
        rid, fleet, node = rollout.rollout_id, rollout.fleet, member.node_id
        if member.step == PROBE:
            events.append(ProbeFailed(rid, fleet, node, reason=NO_ANSWER))
        else:
            step = member.step or ENROLL
            events.append(MemberFailed(rid, fleet, node, step=step, reason=NO_ANSWER))
    return events


# --- advancing -----------------------------------------------------------------------------------


def advance(state: State, ctx: Context) -> list[LogEntry]:
    """What every rollout does next in ``state`` (empty when none can move)."""
    events: list[LogEntry] = []
    index = 0
    for rollout_id in sorted(state.book.rollouts):
        rollout = state.book.rollouts[rollout_id]
        if rollout.status in ENDED:
            events += _clean_up(state, rollout, ctx)
        elif rollout.status == "running" and rollout.kind != "retirement":
            moved = _run(state, rollout, ctx, index)
            index += len(moved)
            events += moved
    return events


def _deadline(rollout: Rollout, ctx: Context) -> int:
    return ctx.now_ms + rollout.plan.rollout.member_deadline_s * 1000


def member_command(
    rollout: Rollout, member: RolloutMember, step: str, ctx: Context
) -> MemberCommanded:
    return MemberCommanded(
        rollout.rollout_id, rollout.fleet, member.node_id, step, _deadline(rollout, ctx)
    )


def _run(state: State, rollout: Rollout, ctx: Context, index: int) -> list[LogEntry]:
    rid, fleet = rollout.rollout_id, rollout.fleet
    failed = [m for m in rollout.in_order() if m.status == "failed"]
    if failed:
        names = ", ".join(f"{m.node_id} ({m.reason})" for m in failed)
        return [
            RolloutPaused(rid, fleet, by=POLICY, reason=f"member lost: {names}", at_ms=ctx.now_ms)
        ]
    short = shortfall(rollout)
    if short is not None:
        return [RolloutFailed(rid, fleet, reason=short)]
    if rollout.waiting_for is not None:
        chain = state.book.fleets[fleet]
        if chain.logged < rollout.waiting_for:
            return []
        if rollout.stage == ACTIVATE:
            return [RolloutActivated(rid, fleet, epoch=rollout.epoch)]
        following = NEXT_STAGE[rollout.stage]
        entered: list[LogEntry] = [StageEntered(rid, fleet, following)]
        if following == QUORUM:
            entered.append(ConfigFixed(rid, fleet, evidence.quorum_config(state, rollout)))
        return entered
    stage = {
        ENROLL: _enroll,
        CEREMONY: _ceremony,
        QUORUM: _quorum,
        PUBLISH: _publish,
        ACTIVATE: _activate,
    }[rollout.stage]
    return stage(state, rollout, ctx, index)


def shortfall(rollout: Rollout) -> str | None:
    """Why the members still active cannot make the planned fleet, if they cannot."""
    plan = rollout.plan
    active = rollout.active_members()
    replacement = rollout.replacement
    newcomer = rollout.members.get(replacement.newcomer) if replacement else None
    if newcomer is not None and newcomer.status != "active":
        return f"the replacement node {newcomer.node_id} was not admitted ({newcomer.reason})"
    if len(active) < plan.threshold:
        return f"too few members left: {len(active)} of the {plan.threshold} the quorum needs"
    domains = Counter(m.domain for m in active)
    for domain in plan.members.domains or sorted({m.domain for m in rollout.in_order()}):
        if domains[domain] < plan.members.min_per_domain:
            return f"too few members left in failure domain {domain}"
    if plan.quorum.survive_domain_loss:
        quorum = Quorum(tuple(Member(m.node_id, m.domain) for m in active), plan.threshold)
        if not quorum.survives_domain_loss():
            return "the members left do not survive losing a failure domain"
    return None


def issue(state: State, rollout: Rollout, stage: str, proof: Any) -> list[LogEntry]:
    chain = state.book.fleets.get(rollout.fleet)
    bundle = evidence.stage_bundle(chain, rollout, stage, proof)
    return [StageBundleIssued(rollout.rollout_id, rollout.fleet, bundle)]


def _enroll(state: State, rollout: Rollout, ctx: Context, index: int) -> list[LogEntry]:
    events: list[LogEntry] = []
    for member in rollout.active_members():
        if member.attestation is not None:
            continue
        enrollment = state.enrollments.get(member.enrollment_id) if member.enrollment_id else None
        if enrollment is not None and enrollment.status == "open":
            continue
        if enrollment is not None and enrollment.reason not in RETRYABLE_ENROLLMENT:
            events.append(
                MemberFailed(
                    rollout.rollout_id,
                    rollout.fleet,
                    member.node_id,
                    step=ENROLL,
                    reason=str(enrollment.reason),
                )
            )
            continue
        if state.policy is None:
            continue  # the rollout waits for an enrollment policy
        events += _challenge(state, rollout, member, ctx, index + len(events))
    if events or any(m.attestation is None for m in rollout.active_members()):
        return events
    return issue(state, rollout, ENROLL, evidence.enroll_evidence(rollout))


def _challenge(
    state: State, rollout: Rollout, member: RolloutMember, ctx: Context, index: int
) -> list[LogEntry]:
    """Challenge ``member`` to attest, or adopt the challenge it already has open."""
    deadline = member.deadline_ms if member.deadline_ms is not None else _deadline(rollout, ctx)
    rid, fleet, node = rollout.rollout_id, rollout.fleet, member.node_id
    open_one = state.open_enrollment_of(node)
    if open_one is not None:
        return [MemberChallenged(rid, fleet, node, open_one.enrollment_id, deadline)]
    assert state.policy is not None
    issued = ChallengeIssued(
        enrollment_id=ctx.new_id("rollout-enrollment", index),
        node_id=node,
        nonce=ctx.derive("rollout-nonce", index),
        expires_ms=ctx.now_ms + state.policy.nonce_ttl_ms,
        requested_by=f"rollout:{rid}",
    )
    return [issued, MemberChallenged(rid, fleet, node, issued.enrollment_id, deadline)]


def recipients(state: State, rollout: Rollout, source: str) -> list[Recipient]:
    """The members the fleet keys are to be wrapped to: active, not holding them yet."""
    out = []
    for member in rollout.active_members():
        identity = state.nodes[member.node_id].identity
        if member.node_id == source or member.holds_keys or identity is None:
            continue
        if member.attestation is None:
            continue  # keys go only to a member attested for this rollout
        attestation = state.attestations.get(member.attestation)
        out.append(
            Recipient(member.node_id, identity.transport_alg, identity.transport_key, attestation)
        )
    return out


def _key_source(rollout: Rollout) -> RolloutMember:
    """Who makes (or wraps again) the fleet keys: the generator while it is active, else a
    member that imported them, else (nobody holds them) the first active member, afresh."""
    active = rollout.active_members()
    holders = [m for m in active if m.holds_keys]
    generator = rollout.members.get(rollout.generator) if rollout.generator else None
    if generator is not None and generator.status == "active" and generator.holds_keys:
        return generator
    return holders[0] if holders else active[0]


def _ceremony(state: State, rollout: Rollout, ctx: Context, index: int) -> list[LogEntry]:
    active = rollout.active_members()
    if any(m.step == GENERATE for m in active):
        return []
    wrapped_for = {w.node for w in rollout.wrapped}
    waiting = [m for m in active if not m.holds_keys]
    if len(waiting) == len(active) or any(m.node_id not in wrapped_for for m in waiting):
        return [member_command(rollout, _key_source(rollout), GENERATE, ctx)]
    if not waiting:
        return issue(state, rollout, CEREMONY, evidence.ceremony_evidence(rollout))
    return _wave(rollout, waiting, IMPORT, ctx)


def _wave(
    rollout: Rollout, waiting: list[RolloutMember], step: str, ctx: Context
) -> list[LogEntry]:
    """Open ``step`` on waiting members, no more at once than the plan's wave size."""
    open_now = sum(1 for m in rollout.active_members() if m.step == step)
    room = rollout.plan.rollout.wave_size - open_now
    ready = [m for m in waiting if m.step is None]
    return [member_command(rollout, m, step, ctx) for m in ready[: max(room, 0)]]


def _generate_command(state: State, rollout: Rollout, member: RolloutMember) -> Body:
    """Make the plan's keys on ``member`` and wrap them to every other member."""
    to = tuple(recipients(state, rollout, member.node_id))
    plan = rollout.plan
    return GenerateFleetKeys(
        rollout.fleet, rollout.epoch, rollout.key_rollout, plan.keys, to, plan.vault
    )


def _import_command(state: State, rollout: Rollout, member: RolloutMember) -> Body:
    """Import the keys wrapped to ``member``."""
    keys = tuple(w for w in rollout.wrapped if w.node == member.node_id)
    return ImportFleetKeys(
        rollout.fleet, rollout.epoch, rollout.key_rollout, keys, rollout.plan.vault
    )


def _quorum(state: State, rollout: Rollout, ctx: Context, index: int) -> list[LogEntry]:
    active = rollout.active_members()
    if rollout.kind == "replacement":
        changing = _membership_change(state, rollout, ctx)
        if changing is not None:
            return changing
    else:
        waiting = [m for m in active if not m.joined and m.holds_keys]
        if waiting:
            return _wave(rollout, waiting, JOIN, ctx)
    if rollout.quorum_proof is not None:
        return issue(state, rollout, QUORUM, Evidence.of(quorum_proof=rollout.quorum_proof))
    if any(m.step == PROBE for m in active):
        return []
    if rollout.probe_failures >= MAX_PROBE_FAILURES:
        return [
            RolloutFailed(rollout.rollout_id, rollout.fleet, reason="the test write did not commit")
        ]
    joined = [m for m in active if m.joined]
    return [member_command(rollout, joined[rollout.probe_failures % len(joined)], PROBE, ctx)]


def _membership_change(state: State, rollout: Rollout, ctx: Context) -> list[LogEntry] | None:
    """The next commands of a replacement's membership change (CASPaxos 2.3 steps, each
    applied by every active member before the next; the newcomer last, once the others serve
    the step it catches up under); None once every step is applied."""
    active = rollout.active_members()
    for config in evidence.membership_steps(state, rollout):
        named = {k.member for k in config.members}
        behind = [m for m in active if m.node_id in named and m.config_epoch < config.epoch]
        if not behind:
            continue
        replacement = rollout.replacement
        newcomer = replacement.newcomer if replacement else None
        first = [m for m in behind if m.node_id != newcomer] or behind
        return [member_command(rollout, m, JOIN, ctx) for m in first if m.step is None]
    return None


def _join_command(state: State, rollout: Rollout, member: RolloutMember) -> Body:
    """Join the replication group: the rollout's configuration, or for a replacement the
    membership-change step ``member`` is to apply next."""
    if rollout.kind == "replacement":
        config = evidence.membership_step(state, rollout, member.node_id)
    else:
        assert rollout.config is not None
        config = rollout.config
    return JoinFleet(
        rollout.fleet, rollout.epoch, rollout.rollout_id, config, probe=False, group=rollout.group
    )


def _probe_command(state: State, rollout: Rollout, member: RolloutMember) -> Body:
    """Commit the rollout's test record through a quorum."""
    assert rollout.config is not None
    return JoinFleet(
        rollout.fleet,
        rollout.epoch,
        rollout.rollout_id,
        rollout.config,
        probe=True,
        group=rollout.group,
    )


def _publish(state: State, rollout: Rollout, ctx: Context, index: int) -> list[LogEntry]:
    if rollout.awaiting_approval:
        return []
    if rollout.artifact is None:
        prepared = evidence.artifact(state, rollout, ctx.now_ms)
        return [ArtifactPrepared(rollout.rollout_id, rollout.fleet, prepared)]
    if rollout.validation is None:
        return []  # the shell is publishing it
    return issue(state, rollout, PUBLISH, Evidence.of(artifact=rollout.artifact.digest))


def _activate(state: State, rollout: Rollout, ctx: Context, index: int) -> list[LogEntry]:
    assert rollout.artifact is not None
    return issue(state, rollout, ACTIVATE, Evidence.of(artifact=rollout.artifact.digest))


def _clean_up(state: State, rollout: Rollout, ctx: Context) -> list[LogEntry]:
    """Destroy an ended rollout's keys on its members; an aborted rollout's chain then ends
    with an ``abort`` bundle naming the answers. Every member is asked, not only those on
    record as holding keys: one may hold keys whose receipt never arrived."""
    pending = [m for m in rollout.in_order() if m.destroyed is None and m.destroy_failed is None]
    events: list[LogEntry] = [
        member_command(rollout, m, RETIRE, ctx) for m in pending if m.step is None
    ]
    if pending or rollout.status != "aborted":
        return events
    chain = state.book.fleets.get(rollout.fleet)
    issued = chain is not None and any(
        b.stage == ABORT and by == rollout.rollout_id
        for b, by in zip(chain.bundles, chain.issued_by, strict=True)
    )
    return [] if issued else issue(state, rollout, ABORT, evidence.abort_evidence(rollout))


def _retire_command(state: State, rollout: Rollout, member: RolloutMember) -> Body:
    """Destroy the keys this rollout made on ``member`` and leave its replication group."""
    return RetireFleet(rollout.fleet, rollout.epoch, rollout.rollout_id)


STEPS = {
    GENERATE: Step("ceremony", _generate_command),
    IMPORT: Step("ceremony", _import_command),
    JOIN: Step("join", _join_command),
    PROBE: Step("join", _probe_command),
    RETIRE: Step("retire", _retire_command),
}
"""The member steps a rollout's own stages open."""
