"""Carrying out what the state says is due: one shape for every effect, and one runner.

An :class:`Effect` is one thing due in the current state: a challenge to a node, a command to
a member, an identity-key request, a document for the cosigners. It says how to do it once
(``perform``: ask, and turn the answer into the core's input), whether it is still due, and how
long it may take. :func:`carry_out` performs it until its outcome is on record or it is no
longer due: between attempts it backs off with jitter, never past the effect's deadline; an
outcome the log cannot take yet (a stream leader election, the log moving on) is recorded again
without asking again, as the answer arrived once; one the core refuses is asked for again.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError

from messages import subjects
from messages.attestation import AttestRequest
from messages.errors import HsmfleetError
from messages.events import LogEntry
from messages.inputs import AttestationAnswer, MemberAnswer
from messages.schema import Body
from orchestrator.core.errors import AppendConflict, StoreUnavailable
from orchestrator.core.node_key_jobs import ADOPTION_ATTEMPTS, NodeKeyJob, node_key_jobs
from orchestrator.core.rollout.effects import MemberCommand, member_commands
from orchestrator.core.state import Enrollment, State
from orchestrator.shell.metrics import Metrics
from transport.backoff import Backoff
from transport.bus import ask
from transport.outbox import Outbox

COMMAND_TIMEOUT_S = 10.0
"""How long a member may take over one command (a probe waits for its replica, then a round)."""
ATTESTATION_TIMEOUT_S = 2.0
"""How long a node may take to attest (asked again within the challenge's life)."""
NODE_KEY_TIMEOUT_S = 5.0
"""How long a node may take over an identity-key request (a PKCS#11 token makes a key)."""
SLOW_BACKOFF_S = (0.2, 5.0)
"""Pauses between tries of what waits on others' logs: recording an outcome, cosigning."""


@dataclass(frozen=True)
class Effect:
    """One thing the state calls for, named by ``key`` (one runs at a time per key).

    ``perform(timeout_s)`` does it once and returns the core's input for its outcome;
    ``due(state)`` says whether the state still calls for it; ``deadline_ms`` (an expiry the
    core enforces with its tick) and ``attempts`` bound it. ``fleet``, when set, is where the
    operator's views show the last failure while it is still to do.
    """

    key: str
    stage: str
    perform: Callable[[float], Awaitable[Body]]
    due: Callable[[State], bool]
    deadline_ms: int | None = None
    attempts: int | None = None
    attempt_s: float = COMMAND_TIMEOUT_S
    """The longest one attempt may take."""
    backoff_s: tuple[float, float] = (0.2, 2.0)
    fleet: str | None = None
    context: Mapping[str, str] = field(default_factory=dict)


class Host(Protocol):
    """What :func:`carry_out` needs of the orchestrator process."""

    metrics: Metrics
    effect_errors: dict[str, str]
    log: Any

    @property
    def state(self) -> State: ...

    @property
    def active(self) -> bool: ...

    def clock_ms(self) -> int: ...

    def submit(self, command: Body) -> Awaitable[list[LogEntry]]: ...


def attestation(nc: NATS, outbox: Outbox, enrollment: Enrollment) -> Effect:
    """The challenge to an enrolling node, answered with its attestation."""

    async def perform(timeout_s: float) -> Body:
        body = AttestRequest(nonce=enrollment.nonce, expires_ms=enrollment.expires_ms)
        request = outbox.envelope(body, corr=enrollment.enrollment_id)
        subject = subjects.node_command(enrollment.node_id, "attest")
        reply = await ask(nc, subject, request, timeout_s)
        return AttestationAnswer(
            enrollment_id=enrollment.enrollment_id, node_id=enrollment.node_id, reply=reply
        )

    return Effect(
        key=enrollment.enrollment_id,
        stage="attest",
        perform=perform,
        due=lambda state: enrollment.enrollment_id in state.open_enrollments,
        deadline_ms=enrollment.expires_ms,
        attempt_s=ATTESTATION_TIMEOUT_S,
        context={"corr": enrollment.enrollment_id, "node": enrollment.node_id},
    )


def member_command(nc: NATS, outbox: Outbox, command: MemberCommand) -> Effect:
    """A rollout command to a member, until it answers or its step closes (answered,
    failed, paused); an answer to another command is asked for again."""

    async def perform(timeout_s: float) -> Body:
        request = outbox.envelope(command.body, corr=command.rollout_id)
        subject = subjects.node_command(command.node_id, command.verb)
        reply = await ask(nc, subject, request, timeout_s)
        return MemberAnswer(command.rollout_id, command.node_id, command.step, reply, request.id)

    return Effect(
        key=command.key,
        stage=command.step,
        perform=perform,
        due=lambda state: command.key in {c.key for c in member_commands(state)},
        deadline_ms=command.deadline_ms,
        context={"corr": command.rollout_id, "node": command.node_id, "step": command.step},
    )


def node_key_request(nc: NATS, outbox: Outbox, job: NodeKeyJob) -> Effect:
    """A node's identity-key challenge (until it expires) or adoption (a bounded number
    of tries, until the next kick)."""

    async def perform(timeout_s: float) -> Body:
        request = outbox.envelope(job.body, corr=job.rotation_id)
        subject = subjects.node_command(job.node_id, "rotate")
        return job.answer(await ask(nc, subject, request, timeout_s))

    return Effect(
        key=job.key,
        stage="node_key",
        perform=perform,
        due=lambda state: job.key in {j.key for j in node_key_jobs(state)},
        deadline_ms=job.deadline_ms,
        attempts=None if job.deadline_ms is not None else ADOPTION_ATTEMPTS,
        attempt_s=NODE_KEY_TIMEOUT_S,
        context={"corr": job.rotation_id, "node": job.node_id},
    )


async def carry_out(host: Host, effect: Effect) -> None:
    """Perform ``effect`` until its outcome is on record, it is no longer due, this process
    stands down, or its deadline or attempts run out."""
    log = host.log.bind(effect=effect.key, **effect.context)
    backoff = Backoff(*effect.backoff_s)
    started = time.perf_counter()
    tries = 0
    try:
        while host.active and effect.due(host.state):
            left = _left_s(host, effect)
            if left is not None and left <= 0:
                return  # the core's tick closes what expired
            if effect.attempts is not None and tries == effect.attempts:
                log.warning("effect gave up until the state calls for it again", tries=tries)
                return
            tries += 1
            try:
                outcome = await effect.perform(
                    effect.attempt_s if left is None else max(min(left, effect.attempt_s), 0.1)
                )
                events = await _record(host, outcome, lambda: effect.due(host.state), log)
            except (HsmfleetError, NatsError) as exc:
                _failed(host, effect, exc)
                log.warning("effect failed; retrying", reason=str(exc) or repr(exc))
                await backoff.wait(_left_s(host, effect))
                continue
            if effect.fleet is not None:
                host.effect_errors.pop(effect.fleet, None)
            log.info("effect done", events=[e.TYPE for e in events])
            return
    finally:
        host.metrics.stage.labels(effect.stage).observe(time.perf_counter() - started)


async def _record(host: Host, outcome: Body, due: Callable[[], bool], log: Any) -> list[LogEntry]:
    """Record an outcome that arrived, again and again while the log cannot take it and it is
    still due; the core's refusal is raised at once."""
    backoff = Backoff(*SLOW_BACKOFF_S)
    while True:
        try:
            return await host.submit(outcome)
        except (StoreUnavailable, AppendConflict, NatsError) as exc:
            _count(host, exc)
            if not due():
                return []
            log.warning("outcome not recorded; retrying", reason=repr(exc))
            await backoff.wait()


def _left_s(host: Host, effect: Effect) -> float | None:
    """Seconds until the effect's deadline has passed: the core takes a deadline as passed once
    the clock is beyond it, so the runner stops no earlier (else the next decision, in the same
    millisecond, would still find the effect due)."""
    if effect.deadline_ms is None:
        return None
    return (effect.deadline_ms + 1 - host.clock_ms()) / 1000


def _failed(host: Host, effect: Effect, exc: Exception) -> None:
    _count(host, exc)
    if effect.fleet is not None:
        host.effect_errors[effect.fleet] = f"{effect.key}: {exc}"


def _count(host: Host, exc: Exception) -> None:
    host.metrics.errors.labels(exc.kind if isinstance(exc, HsmfleetError) else "nats").inc()
