"""The pure core: :func:`decide` turns the state and one input into events.

Nothing here reads a clock, a random source or the network: the time, the random seed and the
lease under which a decision is made come in a :class:`Context`, and the :class:`Decision`
record keeps them so that a replay re-runs every decision exactly. Iterations over maps are
sorted: map order depends on per-process string hashing, decisions must not.

Every decision, whatever its input, ends by advancing the rollouts
(:mod:`orchestrator.core.rollout.decisions`) as far as the state after its events allows, so a
rollout moves on in the same decision that recorded what it waited for.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cryptography import x509

from messages import subjects
from messages.attestation import (
    GARBLED,
    WRONG_NONCE,
    Attestation,
    AttestationRejected,
    NodeAnnounce,
    NodeHeartbeat,
    verify_answer_signature,
    verify_attestation,
)
from messages.envelope import Envelope
from messages.errors import MessageError
from messages.events import (
    NO_ANSWER,
    NODE_MISMATCH,
    NONCE_EXPIRED,
    NONCE_REUSED,
    REFUSED,
    ChallengeIssued,
    LeaseTaken,
    LogEntry,
    NodeAnnounced,
    NodeEnrolled,
    NodeRejected,
    PolicySet,
)
from messages.inputs import (
    ArtifactPublished,
    AttestationAnswer,
    BundleCosigned,
    EnrollNode,
    MemberAnswer,
    OperateRollout,
    RecordSignerRotation,
    ReplaceMember,
    RetirementLogged,
    RotateFleet,
    ScheduleRotation,
    SetPolicy,
    StartRetirement,
    StartRollout,
    TakeLease,
    Tick,
)
from messages.rejected import Rejected
from messages.schema import REGISTRY, Body
from orchestrator.core import node_keys, signer_keys
from orchestrator.core.context import Context
from orchestrator.core.errors import (
    CommandRefused,
    EnrollmentConflict,
    Fenced,
    NoPolicy,
    UnknownEnrollment,
    UnknownNode,
)
from orchestrator.core.flow import Flow
from orchestrator.core.rollout import answers as rollout_answers
from orchestrator.core.rollout import decisions as rollout
from orchestrator.core.rollout import replacement as rollout_replacement
from orchestrator.core.rollout import retirement as rollout_retirement
from orchestrator.core.rollout import rotation as rollout_rotation
from orchestrator.core.state import Enrollment, Node, Policy, State, evolve

NONCE_BYTES = 32
UNKNOWN = "unknown"
MAX_ADVANCES = 16
"""Bound on the rounds of :func:`rollout.advance` in one decision (each stage moves at most a
few steps per round; a rollout that kept moving for longer would be a bug)."""
FLOWS: tuple[Flow, ...] = (node_keys, rollout, rollout_rotation, rollout_retirement)
"""The flows, in the order their events are emitted."""


class DomainChangeRefused(CommandRefused):
    """An announcement would move an enrolled node to another failure domain."""

    kind = "domain_change_refused"


class ReattestationRequired(CommandRefused):
    """An announcement would change what an enrolled node runs (its HSM kind or software
    measurement): that is for a new attestation to establish, not for an announcement."""

    kind = "reattestation_required"


def decide(state: State, command: Body, ctx: Context) -> list[LogEntry]:
    """The events ``command`` causes in ``state``; raises a typed error to refuse it.

    Every decision but a lease takeover must be made under the lease in force: a standby or a
    deposed orchestrator is :class:`Fenced`.
    """
    if isinstance(command, TakeLease):
        if ctx.epoch <= state.lease.epoch:
            raise Fenced("lease epoch is not newer than the one in force", epoch=ctx.epoch)
        return [LeaseTaken(holder=ctx.holder, epoch=ctx.epoch)]
    if (ctx.holder, ctx.epoch) != (state.lease.holder, state.lease.epoch):
        raise Fenced(
            "decision made outside the lease in force",
            holder=ctx.holder,
            epoch=ctx.epoch,
            active=state.lease.holder,
            active_epoch=state.lease.epoch,
        )
    handler = _DECIDERS.get(type(command))
    if handler is None:
        raise CommandRefused("the orchestrator takes no such input", type=command.TYPE)
    events = handler(state, command, ctx)
    return events + _advance(state, events, ctx)


def _advance(state: State, events: list[LogEntry], ctx: Context) -> list[LogEntry]:
    """The events with which rollouts move on after ``events``."""
    for event in events:
        state = evolve(state, event)
    more: list[LogEntry] = []
    for _ in range(MAX_ADVANCES):
        step = [event for flow in FLOWS for event in flow.advance(state, ctx)]
        if not step:
            return more
        for event in step:
            state = evolve(state, event)
        more += step
    raise CommandRefused("rollouts did not settle within one decision", rounds=MAX_ADVANCES)


def open_enrollments(state: State) -> list[Enrollment]:
    """Challenges still waiting for their answer, oldest id first: the effects to carry out."""
    return [state.enrollments[eid] for eid in sorted(state.open_enrollments)]


def _set_policy(state: State, c: SetPolicy, ctx: Context) -> list[LogEntry]:
    if c.nonce_ttl_ms <= 0:
        raise CommandRefused("nonce lifetime must be positive", nonce_ttl_ms=c.nonce_ttl_ms)
    for der in c.vendor_roots:
        try:
            x509.load_der_x509_certificate(der)
        except ValueError as exc:
            raise CommandRefused(f"a vendor root is not a certificate: {exc}") from exc
    policy = Policy(c.vendor_roots, c.allowed_measurements, c.nonce_ttl_ms, c.auto_enroll)
    if policy == state.policy:
        return []
    return [
        PolicySet(
            vendor_roots=c.vendor_roots,
            allowed_measurements=c.allowed_measurements,
            nonce_ttl_ms=c.nonce_ttl_ms,
            auto_enroll=c.auto_enroll,
        )
    ]


def _challenge(state: State, node_id: str, requested_by: str, ctx: Context) -> ChallengeIssued:
    if state.policy is None:
        raise NoPolicy("no enrollment policy is in force")
    return ChallengeIssued(
        enrollment_id=ctx.new_id("enrollment", 0),
        node_id=node_id,
        nonce=ctx.derive("nonce", 0, NONCE_BYTES),
        expires_ms=ctx.now_ms + state.policy.nonce_ttl_ms,
        requested_by=requested_by,
    )


def _node_announce(state: State, c: NodeAnnounce, ctx: Context) -> list[LogEntry]:
    subjects.token(c.node_id, "node id")
    subjects.token(c.domain, "failure domain")
    old = state.nodes.get(c.node_id)
    if old is not None and old.identity is not None and old.domain != c.domain:
        # Where an attested node runs decides which fleets' quorums it may count in; its
        # announcement cannot move it (THREAT_MODEL G11).
        raise DomainChangeRefused(
            "an enrolled node's failure domain does not change by announcement",
            node_id=c.node_id,
            domain=old.domain,
            announced=c.domain,
        )
    if old is not None and old.identity is not None:
        _check_unchanged(old, c)
    events: list[LogEntry] = []
    if old is None or (old.domain, old.hsm, old.measurement) != (c.domain, c.hsm, c.measurement):
        events.append(
            NodeAnnounced(node_id=c.node_id, domain=c.domain, hsm=c.hsm, measurement=c.measurement)
        )
    never_tried = old is None or old.status == "announced"
    if state.policy is not None and state.policy.auto_enroll and never_tried:
        events.append(_challenge(state, c.node_id, "policy:auto_enroll", ctx))
    return events


def _check_unchanged(node: Node, c: NodeAnnounce) -> None:
    """An enrolled node announces what it was attested to run: the measurement of its latest
    attestation, and the HSM kind on record (filled in once when unknown, as for a node first
    heard of by its heartbeat). A change is a re-attestation (a node-key rotation attests
    afresh), not an announcement."""
    assert node.identity is not None
    if c.measurement != node.identity.measurement:
        raise ReattestationRequired(
            "an enrolled node announces the measurement it was attested with; re-attest it",
            node_id=c.node_id,
            attested=node.identity.measurement,
            announced=c.measurement,
        )
    if node.hsm not in (UNKNOWN, c.hsm):
        raise ReattestationRequired(
            "an enrolled node's HSM kind does not change by announcement",
            node_id=c.node_id,
            recorded=node.hsm,
            announced=c.hsm,
        )


def _node_heartbeat(state: State, c: NodeHeartbeat, ctx: Context) -> list[LogEntry]:
    """A node heard from only by its heartbeat (its announcement went out while no
    orchestrator listened) is recorded with its failure domain; what it runs is learnt later."""
    if c.node_id in state.nodes:
        return []
    announce = NodeAnnounce(node_id=c.node_id, domain=c.domain, hsm=UNKNOWN, measurement=UNKNOWN)
    return _node_announce(state, announce, ctx)


def _enroll_node(state: State, c: EnrollNode, ctx: Context) -> list[LogEntry]:
    node = state.nodes.get(c.node_id)
    if node is None:
        raise UnknownNode("no node of this id has announced itself", node_id=c.node_id)
    if node.status == "enrolling":
        raise EnrollmentConflict(
            "an enrollment of this node is in progress",
            node_id=c.node_id,
            enrollment_id=node.enrollment_id,
        )
    if node.status == "enrolled":
        raise EnrollmentConflict("the node is enrolled already", node_id=c.node_id)
    return [_challenge(state, c.node_id, c.requested_by, ctx)]


def _attestation_answer(state: State, c: AttestationAnswer, ctx: Context) -> list[LogEntry]:
    enrollment = state.enrollments.get(c.enrollment_id)
    if enrollment is None or enrollment.node_id != c.node_id:
        raise UnknownEnrollment(
            "no challenge of this id went to this node",
            enrollment_id=c.enrollment_id,
            node_id=c.node_id,
        )
    if enrollment.status != "open":
        return []  # the outcome is on record; a late or repeated answer changes nothing
    if state.policy is None:
        raise NoPolicy("no enrollment policy is in force")
    outcome = _judge(state, state.policy, enrollment, c.reply, ctx.now_ms)
    if isinstance(outcome, str):
        return [NodeRejected(enrollment_id=c.enrollment_id, node_id=c.node_id, reason=outcome)]
    return [outcome]


def _judge(
    state: State, policy: Policy, enrollment: Enrollment, reply: bytes, now_ms: int
) -> NodeEnrolled | str:
    """The enrollment's outcome: the event admitting the node, or the reason to reject it."""
    if now_ms > enrollment.expires_ms:
        return NONCE_EXPIRED
    try:
        env = Envelope.decode(reply)
        if env.type == Rejected.TYPE:
            return REFUSED
        if env.type != Attestation.TYPE:
            return GARBLED
        body: dict[str, Any] = REGISTRY.upcast(env).body
    except MessageError:
        return GARBLED
    try:
        node = verify_attestation(
            body,
            nonce=enrollment.nonce,
            vendor_roots=policy.vendor_roots,
            allowed_measurements=policy.allowed_measurements,
            now_ms=now_ms,
        )
    except AttestationRejected as exc:
        echoed = body.get("nonce")
        if exc.reason == WRONG_NONCE and isinstance(echoed, str) and echoed in state.used_nonces:
            return NONCE_REUSED
        return exc.reason
    if node.node_id != enrollment.node_id:
        return NODE_MISMATCH
    try:
        verify_answer_signature(env, node)
    except AttestationRejected as exc:
        return exc.reason
    return NodeEnrolled(
        enrollment_id=enrollment.enrollment_id,
        node_id=node.node_id,
        domain=state.nodes[node.node_id].domain,
        identity_alg=node.identity_alg,
        identity_key=node.identity_key,
        transport_alg=node.transport_alg,
        transport_key=node.transport_key,
        measurement=node.measurement,
        device_fingerprint=node.device_fingerprint,
        attestation_digest=node.attestation_digest,
    )


def _tick(state: State, _: Tick, ctx: Context) -> list[LogEntry]:
    closed: list[LogEntry] = [
        NodeRejected(enrollment_id=e.enrollment_id, node_id=e.node_id, reason=NO_ANSWER)
        for e in open_enrollments(state)
        if e.expires_ms < ctx.now_ms
    ]
    return closed + [event for flow in FLOWS for event in flow.tick(state, ctx)]


def overdue(state: State, now_ms: int) -> bool:
    """Whether a :class:`Tick` at ``now_ms`` would close a challenge (enrollment or node-key
    rotation), fail a member step, end a rotation's overlap window or start a scheduled
    rotation."""
    return any(e.expires_ms < now_ms for e in open_enrollments(state)) or any(
        flow.overdue(state, now_ms) for flow in FLOWS
    )


_DECIDERS: dict[type[Body], Callable[[State, Any, Context], list[LogEntry]]] = {
    SetPolicy: _set_policy,
    NodeAnnounce: _node_announce,
    NodeHeartbeat: _node_heartbeat,
    EnrollNode: _enroll_node,
    AttestationAnswer: _attestation_answer,
    Tick: _tick,
    StartRollout: rollout.start,
    OperateRollout: rollout.operate,
    MemberAnswer: rollout_answers.answer,
    BundleCosigned: rollout_answers.cosigned,
    ArtifactPublished: rollout_answers.published,
    RotateFleet: rollout_rotation.rotate,
    ScheduleRotation: rollout_rotation.schedule,
    StartRetirement: rollout_retirement.start,
    ReplaceMember: rollout_replacement.replace_member,
    RetirementLogged: rollout_retirement.logged,
    RecordSignerRotation: signer_keys.record,
    **node_keys.DECIDERS,
}
