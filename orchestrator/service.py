"""The orchestrator process: the asyncio shell around the pure core.

A standby follows the log and keeps its state current. When it takes the lease it records the
takeover and the configured policy, then listens to the nodes, decides on each input, appends
the decision and its events (fenced by the log's expected sequence), folds them, and carries
out the effects the state calls for: an attestation request for every open challenge. Effects
are derived from the state, not remembered, so after a crash the next holder sends exactly the
requests whose outcome is not yet on record, and none whose outcome is.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from messages import subjects
from messages.attestation import AttestRequest, NodeAnnounce, NodeHeartbeat
from messages.bus import headers_for
from messages.errors import HsmfleetError, MessageError
from messages.events import AttestationAnswer, LogEntry, SetPolicy, TakeLease, Tick
from messages.gate import Gate
from messages.outbox import Outbox
from messages.schema import Body
from messages.signing import Signer, TrustStore
from orchestrator.config import Settings
from orchestrator.core import Context, decide, open_enrollments, overdue
from orchestrator.errors import (
    AppendConflict,
    Fenced,
    LogCorrupt,
    NotActive,
    ReplayDivergence,
    StoreUnavailable,
)
from orchestrator.keys import trust_for
from orchestrator.lease import Lease, LeaseLost
from orchestrator.log import SOURCE, LogReader, seal
from orchestrator.metrics import Metrics
from orchestrator.replay import Replayer
from orchestrator.state import Enrollment, State
from orchestrator.store import EventStore

STATUS_SUBJECTS = "fleet.node.*.status"
APPEND_ATTEMPTS = 3


@dataclass(frozen=True)
class Liveness:
    """What the node said last on its status subject (not logged: it changes every second)."""

    seen_ms: int
    hsm_ok: bool


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class Orchestrator:
    """One orchestrator process; :meth:`run` until :meth:`stop`."""

    def __init__(
        self,
        nc: NATS,
        settings: Settings,
        signer: Signer,
        *,
        metrics: Metrics | None = None,
        clock_ms: Callable[[], int] = wall_clock_ms,
        entropy: Callable[[int], bytes] = os.urandom,
    ) -> None:
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
        self._clock_ms = clock_ms
        self._entropy = entropy
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
        ctx = Context(self._clock_ms(), self._entropy(16), self.lease.epoch, self.holder)
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

    def _kick_effects(self) -> None:
        if not self.active:
            return
        for enrollment in open_enrollments(self.state):
            if enrollment.enrollment_id not in self._in_flight:
                task = asyncio.create_task(self._attest(enrollment))
                self._in_flight[enrollment.enrollment_id] = task

    async def _attest(self, enrollment: Enrollment) -> None:
        """Send the challenge until the node answers or the nonce expires; record the answer."""
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
                events = await self.submit(answer)
                log.info("enrollment decided", events=[e.TYPE for e in events])
                return
        except HsmfleetError as exc:
            self._count(exc)
            log.warning("attestation effect stopped", reason=str(exc))
        finally:
            self._in_flight.pop(enrollment.enrollment_id, None)
            self.metrics.stage.labels("attest").observe(time.perf_counter() - started)

    async def _on_status(self, msg: Msg) -> None:
        try:
            received = self.status_gate.admit(msg.data, None)
        except MessageError:
            return  # counted and logged by the gate
        body = received.body
        if not isinstance(body, NodeAnnounce | NodeHeartbeat):
            return
        if received.envelope.source != body.node_id or msg.subject != _status_subject(body):
            self.metrics.errors.labels("status_spoofed").inc()
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
