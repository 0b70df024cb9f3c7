"""The orchestrator process: the asyncio shell around the pure core.

A standby follows the log and keeps its state current. When it takes the lease it records the
takeover and the configured policy, then listens to the nodes, decides on each input, appends
the decision and its events (fenced by the log's expected sequence), folds them, and carries
out the effects the state calls for: an attestation request for every open challenge, and for
rollouts each open member command (ceremony, join, retire), each stage bundle issued but not
yet logged (to the cosigners) and each artifact prepared but not yet published (to the
cosigners, then countersigned with the operator key). Effects are derived from the state, not
remembered, so after a crash the next holder sends exactly the requests whose outcome is not
yet on record, and none whose outcome is; cosigners answer a document they already logged with
their receipt for it, so no bundle is ever signed twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from messages import subjects
from messages.attestation import AttestRequest, NodeAnnounce, NodeHeartbeat
from messages.errors import HsmfleetError, MessageError
from messages.events import (
    AttestationAnswer,
    LogEntry,
    MemberAnswer,
    RecordSignerRotation,
    SetPolicy,
    TakeLease,
    Tick,
)
from messages.rotation import KeyRotation
from messages.schema import Body
from messages.signing import Signer, TrustStore, verify_envelope
from messages.validation import LoggedNotice
from orchestrator.config import Settings
from orchestrator.context import Context
from orchestrator.core import decide, open_enrollments, overdue
from orchestrator.cosigning import Cosigning
from orchestrator.errors import (
    AppendConflict,
    Fenced,
    LogCorrupt,
    NotActive,
    ReplayDivergence,
    StoreUnavailable,
)
from orchestrator.keys import KeyFileError, load_rotation_chain, trust_for
from orchestrator.lease import Lease, LeaseLost
from orchestrator.log import SOURCE, LogReader, seal
from orchestrator.metrics import Metrics
from orchestrator.node_keys import status_trust
from orchestrator.node_keys_effects import carry_out, node_key_jobs
from orchestrator.replay import Replayer
from orchestrator.rollout import NODE_ROLE
from orchestrator.rollout_answers import AnswerNotForCommand
from orchestrator.rollout_effects import (
    MemberCommand,
    ToLog,
    artifacts_to_publish,
    bundles_to_log,
    member_commands,
    retirements_to_log,
)
from orchestrator.rollout_notices import log_retirement
from orchestrator.signer_keys import recorded
from orchestrator.state import Enrollment, State
from orchestrator.store import EventStore
from transport.bus import headers_for
from transport.cosign_client import NatsTransport
from transport.gate import Gate
from transport.outbox import Outbox

STATUS_SUBJECTS = "fleet.node.*.status"
NOT_STATUS = "not_status"
"""How the status gate counts an admitted message of another type on a status subject."""
APPEND_ATTEMPTS = 3
COMMAND_TIMEOUT_S = 10.0
"""How long a member may take over one command (a probe waits for its replica to vote, then
for a quorum round)."""
COSIGNING_BACKOFF_S = (0.2, 5.0)


@dataclass(frozen=True)
class Liveness:
    """What the node said last on its status subject (not logged: it changes every second)."""

    seen_ms: int
    hsm_ok: bool


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


def random_seed(_: Body) -> bytes:
    """A fresh seed for each decision."""
    return os.urandom(16)


class Orchestrator:
    """One orchestrator process; :meth:`run` until :meth:`stop`."""

    def __init__(
        self,
        nc: NATS,
        settings: Settings,
        signer: Signer,
        *,
        operator: Signer | None = None,
        metrics: Metrics | None = None,
        clock_ms: Callable[[], int] = wall_clock_ms,
        seed: Callable[[Body], bytes] = random_seed,
    ) -> None:
        """``operator`` countersigns published artifacts (a signer over a key in an HSM
        backend); without it, rollouts stop before ``publish``. ``seed`` gives each decision
        its random seed (tests make it a function of the input, to compare runs)."""
        self.nc = nc
        self.settings = settings
        self.signer = signer
        self.metrics = metrics or Metrics()
        self.store = EventStore(nc)
        self.lease = Lease(nc.jetstream(), settings.holder, ttl=settings.lease_ttl_s)
        self.trust: TrustStore = trust_for(signer)
        self.reader = LogReader(self.trust)
        self.replayer = Replayer(check=False)
        self.last_seq = 0
        self.outbox = Outbox(SOURCE, signer)
        self.status_gate = Gate(TrustStore())
        self.liveness: dict[str, Liveness] = {}
        self.active = False
        self.cosigning = (
            Cosigning(NatsTransport(nc, self.outbox), operator) if operator is not None else None
        )
        self.effect_errors: dict[str, str] = {}
        """What last went wrong with an effect still to do, by fleet (not logged)."""
        self._clock_ms = clock_ms
        self._seed = seed
        self._lock = asyncio.Lock()
        self._in_flight: dict[str, asyncio.Task[None]] = {}
        self._stop = asyncio.Event()
        self._lost = asyncio.Event()
        self._policy = settings.policy()
        self.log = structlog.get_logger("hsmfleet.orchestrator").bind(holder=settings.holder)

    @property
    def state(self) -> State:
        return self.replayer.state

    @property
    def holder(self) -> str:
        return self.settings.holder

    # --- lifecycle ---------------------------------------------------------------------

    async def run(self) -> None:
        """Follow the log as a standby; act while holding the lease; return after :meth:`stop`."""
        await self.store.ensure(self.settings.replicas)
        await self.lease.open(self.settings.replicas)
        poll = min(0.25, self.settings.lease_ttl_s / 8)
        while not self._stop.is_set():
            try:
                await self.catch_up()
                if await self.lease.try_acquire() is not None:
                    await self._act()
            except (LeaseLost, Fenced) as exc:
                self._count(exc)
                self.log.warning("lease lost; standing by", reason=str(exc))
            except (StoreUnavailable, AppendConflict) as exc:
                self._count(exc)
                self.log.warning("log unavailable; retrying", reason=str(exc))
            except NatsError as exc:
                self.metrics.errors.labels("nats").inc()
                self.log.warning("NATS failed; retrying", reason=repr(exc))
            finally:
                await self._stand_down()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), poll)
        await self.lease.release()

    def stop(self) -> None:
        """Ask :meth:`run` to stand down, give the lease up and return."""
        self._stop.set()

    async def _act(self) -> None:
        self._lost.clear()
        self.log.info("lease taken", epoch=self.lease.epoch)
        await self.submit(TakeLease())
        await self.submit(self._policy)
        self.active = True
        self.metrics.active.set(1)
        status = await self.nc.subscribe(STATUS_SUBJECTS, cb=self._on_status)
        keepers = [
            asyncio.create_task(self._renew()),
            asyncio.create_task(self._tick()),
            asyncio.create_task(self._lost.wait()),
            asyncio.create_task(self._stop.wait()),
        ]
        await self.follow_rotations()
        self._kick_effects()
        try:
            done, _ = await asyncio.wait(keepers, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
            if self._lost.is_set():
                raise LeaseLost("the log shows another orchestrator holds the lease")
        finally:
            for task in keepers:
                task.cancel()
            await asyncio.gather(*keepers, return_exceptions=True)
            with contextlib.suppress(Exception):
                await status.unsubscribe()

    async def _stand_down(self) -> None:
        if self.active:
            self.log.info("standing down", epoch=self.lease.epoch)
        self.active = False
        self.metrics.active.set(0)
        tasks = list(self._in_flight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._in_flight.clear()
        if self._stop.is_set():
            await self.lease.release()

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self.settings.lease_ttl_s / 4)
            await self.lease.renew()

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(0.25)
            if overdue(self.state, self._clock_ms()):
                try:
                    await self.submit(Tick())
                except HsmfleetError as exc:
                    self._count(exc)

    # --- the log -----------------------------------------------------------------------

    async def catch_up(self) -> int:
        """Fold every entry appended since the last one read; returns how many."""
        async with self._lock:
            return await self._catch_up()

    async def _catch_up(self) -> int:
        started = time.perf_counter()
        last = await self.store.last_seq()
        if last <= self.last_seq:
            return 0
        count = await self.store.scan(self.last_seq + 1, last, self._fold)
        self.metrics.stage.labels("catch_up").observe(time.perf_counter() - started)
        return count

    def _fold(self, seq: int, data: bytes) -> None:
        try:
            self.replayer.apply(self.reader.admit(data, f"seq {seq}"))
        except (LogCorrupt, Fenced, ReplayDivergence) as exc:
            # An entry that is not a well-formed, signed entry of this lease's history changes
            # nothing; it is counted and reported, never folded.
            self._count(exc)
            self.log.error("log entry refused", seq=seq, reason=str(exc))
        self.last_seq = seq
        self.metrics.last_seq.set(seq)

    async def submit(self, command: Body) -> list[LogEntry]:
        """Decide on ``command``, append the decision and its events, fold them, and start the
        effects they call for. Returns the events; raises the core's typed refusal."""
        if not self.active and not isinstance(command, TakeLease | SetPolicy):
            raise NotActive("this orchestrator is a standby", holder=self.holder)
        async with self._lock:
            for _ in range(APPEND_ATTEMPTS):
                ctx, events = self._decide(command)
                if not events:
                    return events
                if await self._append(command, events, ctx):
                    self._kick_effects()
                    return events
        raise AppendConflict("the log kept moving; the decision was not recorded")

    def _decide(self, command: Body) -> tuple[Context, list[LogEntry]]:
        if self.lease.epoch is None:
            raise LeaseLost("this orchestrator holds no lease")
        ctx = Context(self._clock_ms(), self._seed(command), self.lease.epoch, self.holder)
        started = time.perf_counter()
        try:
            events = decide(self.state, command, ctx)
        except Fenced as exc:
            self._lost.set()
            self._count(exc)
            raise
        except HsmfleetError as exc:
            self._count(exc)
            raise
        finally:
            self.metrics.stage.labels("decide").observe(time.perf_counter() - started)
        self.metrics.decisions.labels(command.TYPE).inc()
        return ctx, events

    async def _append(self, command: Body, events: list[LogEntry], ctx: Context) -> bool:
        """Append the decision just made; False when the log moved on (after catching up)."""
        batch = seal(command, events, ctx, self.reader.head, self.signer)
        started = time.perf_counter()
        try:
            await self.store.append(batch, self.last_seq)
        except (AppendConflict, StoreUnavailable) as exc:
            self._count(exc)
            await self._catch_up()
            return False
        finally:
            self.metrics.stage.labels("append").observe(time.perf_counter() - started)
        first = self.last_seq + 1
        for offset, item in enumerate(batch):
            self._fold(first + offset, item.data)
            self.metrics.events.labels(item.subject.split(".")[2]).inc()
        return True

    def _count(self, exc: HsmfleetError) -> None:
        self.metrics.errors.labels(exc.kind).inc()

    # --- effects -----------------------------------------------------------------------

    def rotation_chain(self) -> list[LoggedNotice]:
        """The logged signer-key rotations (kept beside the orchestrator's key by the rotation
        verbs, which run in their own process): read afresh on each use."""
        return load_rotation_chain(self.settings)

    async def follow_rotations(self) -> None:
        """Take in every logged signer-key rotation: the cosigning clients follow it (the
        orchestrator talks to rotated cosigners with their keys in force) and the log records
        each cosigner's not yet on record (the core then checks that cosigner's later answers
        with its new key). An unreadable chain or a refused rotation is counted and logged;
        what was taken in before stays."""
        try:
            chain = self.rotation_chain()
        except KeyFileError as exc:
            self._count(exc)
            self.log.error("rotation chain unreadable", reason=str(exc))
            return
        if self.cosigning is not None:
            self.cosigning.follow(chain)
        for notice in chain:
            rotation = notice.logged
            if not isinstance(rotation, KeyRotation) or recorded(self.state, rotation):
                continue
            try:
                await self.submit(RecordSignerRotation(notice=notice.to_json()))
            except HsmfleetError as exc:
                self._count(exc)
                self.log.error("signer rotation refused", signer=rotation.signer, reason=str(exc))

    def _kick_effects(self) -> None:
        if not self.active:
            return
        for enrollment in open_enrollments(self.state):
            self._start(enrollment.enrollment_id, lambda e=enrollment: self._attest(e))
        for command in member_commands(self.state):
            self._start(command.key, lambda c=command: self._command(c))
        for job in node_key_jobs(self.state):
            self._start(job.key, lambda j=job: carry_out(self, j, self._clock_ms))
        if self.cosigning is None:
            return
        for job in bundles_to_log(self.state):
            self._start(job.key, lambda j=job: self._cosign(j, self.cosigning.log_document))
        for job in artifacts_to_publish(self.state):
            self._start(job.key, lambda j=job: self._cosign(j, self.cosigning.publish_artifact))
        for job in retirements_to_log(self.state):
            self._start(job.key, lambda j=job: self._cosign(j, self._log_retirement))

    def _start(self, key: str, effect: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run ``effect`` unless one under ``key`` runs already."""
        if key in self._in_flight:
            return
        task = asyncio.create_task(effect())
        self._in_flight[key] = task

        def forget(done: asyncio.Task[None]) -> None:
            if self._in_flight.get(key) is done:
                del self._in_flight[key]

        task.add_done_callback(forget)

    async def _command(self, command: MemberCommand) -> None:
        """Send a rollout command to its member until it answers, the step closes (answered,
        failed, paused) or its deadline passes (the tick then fails it); record the answer,
        retrying while the log cannot take it (:meth:`_record_answer`)."""
        log = self.log.bind(corr=command.rollout_id, node=command.node_id, step=command.step)
        subject = subjects.node_command(command.node_id, command.verb)
        started = time.perf_counter()
        try:
            while self._command_open(command):
                remaining = (command.deadline_ms - self._clock_ms()) / 1000
                if remaining <= 0:
                    return
                request = self.outbox.envelope(command.body, corr=command.rollout_id)
                try:
                    reply: Msg = await self.nc.request(
                        subject,
                        request.encode(),
                        timeout=min(COMMAND_TIMEOUT_S, max(remaining, 0.1)),
                        headers=headers_for(request),
                    )
                except (NatsTimeout, NoRespondersError):
                    self.metrics.errors.labels("member_unanswered").inc()
                    await asyncio.sleep(min(0.5, max(remaining, 0)))
                    continue
                answer = MemberAnswer(
                    command.rollout_id, command.node_id, command.step, reply.data, request.id
                )
                try:
                    events = await self._record_answer(answer, lambda: self._command_open(command))
                except AnswerNotForCommand as exc:
                    log.warning("reply to another command; asking again", reason=str(exc))
                    await asyncio.sleep(min(0.5, max(remaining, 0)))
                    continue
                log.info("member answered", events=[e.TYPE for e in events])
                return
        except HsmfleetError as exc:
            self._count(exc)
            log.warning("member command stopped", reason=str(exc))
        finally:
            self.metrics.stage.labels(command.step).observe(time.perf_counter() - started)

    def _command_open(self, command: MemberCommand) -> bool:
        return self.active and command.key in {c.key for c in member_commands(self.state)}

    def _challenge_open(self, enrollment: Enrollment) -> bool:
        return self.active and enrollment.enrollment_id in self.state.open_enrollments

    async def _record_answer(self, answer: Body, due: Callable[[], bool]) -> list[LogEntry]:
        """Record an answer that arrived, retrying with backoff while the log is unavailable
        or keeps moving (a stream leader election, say) and the answer is still ``due``: it
        arrived once and is not asked for again. The core's refusal is raised at once."""
        pause, longest = COSIGNING_BACKOFF_S
        while True:
            try:
                return await self.submit(answer)
            except (StoreUnavailable, AppendConflict, NatsError) as exc:
                if isinstance(exc, HsmfleetError):
                    self._count(exc)
                else:
                    self.metrics.errors.labels("nats").inc()
                if not due():
                    return []
                self.log.warning("answer not recorded; retrying", reason=repr(exc), after_s=pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, longest)

    def _documents_to_log(self) -> set[str]:
        jobs = [
            *bundles_to_log(self.state),
            *artifacts_to_publish(self.state),
            *retirements_to_log(self.state),
        ]
        return {j.key for j in jobs}

    async def _log_retirement(self, job: ToLog) -> Body:
        assert self.cosigning is not None
        return await log_retirement(self.cosigning, job)

    async def _cosign(self, job: ToLog, carry_out: Callable[[ToLog], Awaitable[Body]]) -> None:
        """Get ``job``'s document logged (and countersigned, for an artifact), retrying with
        backoff while the cosigners refuse or do not answer and the job is still to do; record
        the outcome."""
        log = self.log.bind(fleet=job.fleet, document=job.key)
        pause, longest = COSIGNING_BACKOFF_S
        started = time.perf_counter()
        while self.active and job.key in self._documents_to_log():
            await self.follow_rotations()
            try:
                outcome = await carry_out(job)
                await self.submit(outcome)
            except HsmfleetError as exc:
                self._count(exc)
                self.effect_errors[job.fleet] = f"{job.key}: {exc}"
                log.warning("cosigning failed; retrying", reason=str(exc), after_s=pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, longest)
                continue
            self.effect_errors.pop(job.fleet, None)
            self.metrics.stage.labels("cosign").observe(time.perf_counter() - started)
            log.info("logged by the cosigners")
            return

    async def _attest(self, enrollment: Enrollment) -> None:
        """Send the challenge until the node answers or the nonce expires; record the answer
        (:meth:`_record_answer`)."""
        log = self.log.bind(corr=enrollment.enrollment_id, node=enrollment.node_id)
        subject = subjects.node_command(enrollment.node_id, "attest")
        started = time.perf_counter()
        try:
            while self.active:
                remaining = (enrollment.expires_ms - self._clock_ms()) / 1000
                if remaining <= 0:
                    return  # the tick closes it as unanswered
                request = self.outbox.envelope(
                    AttestRequest(nonce=enrollment.nonce, expires_ms=enrollment.expires_ms),
                    corr=enrollment.enrollment_id,
                )
                try:
                    reply: Msg = await self.nc.request(
                        subject,
                        request.encode(),
                        timeout=min(2.0, remaining),
                        headers=headers_for(request),
                    )
                except (NatsTimeout, NoRespondersError):
                    self.metrics.errors.labels("attest_unanswered").inc()
                    await asyncio.sleep(min(0.5, max(remaining, 0)))
                    continue
                answer = AttestationAnswer(
                    enrollment_id=enrollment.enrollment_id,
                    node_id=enrollment.node_id,
                    reply=reply.data,
                )
                events = await self._record_answer(answer, lambda: self._challenge_open(enrollment))
                log.info("enrollment decided", events=[e.TYPE for e in events])
                return
        except HsmfleetError as exc:
            self._count(exc)
            log.warning("attestation effect stopped", reason=str(exc))
        finally:
            self.metrics.stage.labels("attest").observe(time.perf_counter() - started)

    async def _on_status(self, msg: Msg) -> None:
        """Take a node's status: an announcement or heartbeat on its own subject, signed by
        its recorded identity key once it is enrolled (before, its announcement introduces
        it). Anything else is refused and counted by the status gate."""
        try:
            received = self.status_gate.admit(msg.data, None)
        except MessageError:
            return  # counted and logged by the gate
        body = received.body
        if not isinstance(body, NodeAnnounce | NodeHeartbeat):
            self.status_gate.refused(NOT_STATUS)
            return
        if received.envelope.source != body.node_id or msg.subject != _status_subject(body):
            self.metrics.errors.labels("status_spoofed").inc()
            return
        trust = status_trust(self.state, body.node_id)
        if trust is not None:
            try:
                verify_envelope(received.envelope, trust, NODE_ROLE)
            except MessageError as exc:
                self.status_gate.refused(exc.kind)
                self.log.warning("status refused", node=body.node_id, reason=str(exc))
                return
        hsm_ok = body.hsm_ok if isinstance(body, NodeHeartbeat) else True
        self.liveness[body.node_id] = Liveness(self._clock_ms(), hsm_ok)
        if isinstance(body, NodeAnnounce) or body.node_id not in self.state.nodes:
            try:
                await self.submit(body)
            except HsmfleetError as exc:
                self.log.warning("announcement refused", node=body.node_id, reason=str(exc))


def _status_subject(body: NodeAnnounce | NodeHeartbeat) -> str | None:
    try:
        return subjects.node_status(body.node_id)
    except HsmfleetError:
        return None
