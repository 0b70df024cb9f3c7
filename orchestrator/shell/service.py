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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import Error as NatsError

from messages import subjects
from messages.attestation import NodeAnnounce, NodeHeartbeat
from messages.errors import HsmfleetError, MessageError
from messages.events import LogEntry
from messages.inputs import RecordSignerRotation, SetPolicy, TakeLease, Tick
from messages.rotation import KeyRotation
from messages.schema import Body
from messages.signing import Signer, TrustStore, verify_envelope
from messages.validation import LoggedNotice
from orchestrator.core.context import Context
from orchestrator.core.decisions import decide, open_enrollments, overdue
from orchestrator.core.errors import (
    AppendConflict,
    Fenced,
    LogCorrupt,
    NotActive,
    ReplayDivergence,
    StoreUnavailable,
)
from orchestrator.core.node_key_jobs import node_key_jobs
from orchestrator.core.node_keys import status_trust
from orchestrator.core.rollout.decisions import NODE_ROLE
from orchestrator.core.rollout.effects import (
    ToLog,
    artifacts_to_publish,
    bundles_to_log,
    member_commands,
    retirements_to_log,
)
from orchestrator.core.signer_keys import recorded
from orchestrator.core.state import State
from orchestrator.shell.config import Settings
from orchestrator.shell.cosigning import Cosigning
from orchestrator.shell.effects import (
    SLOW_BACKOFF_S,
    Effect,
    attestation,
    carry_out,
    member_command,
    node_key_request,
)
from orchestrator.shell.keys import KeyFileError, load_rotation_chain, trust_for
from orchestrator.shell.lease import Lease, LeaseLost
from orchestrator.shell.log import SOURCE, LogReader, seal
from orchestrator.shell.metrics import Metrics
from orchestrator.shell.replay import Replayer
from orchestrator.shell.retirement_document import log_retirement
from orchestrator.shell.store import EventStore
from transport.cosign_client import NatsTransport
from transport.gate import Gate
from transport.outbox import Outbox
from transport.tasks import cancel_all

STATUS_SUBJECTS = "fleet.node.*.status"
NOT_STATUS = "not_status"
"""How the status gate counts an admitted message of another type on a status subject."""
APPEND_ATTEMPTS = 3


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
        self.metrics.unreachable.set_function(
            lambda: sum(1 for n in self.state.nodes if self.reachable(n) is False)
        )
        self.active = False
        self.cosigning = (
            Cosigning(NatsTransport(nc, self.outbox), operator) if operator is not None else None
        )
        self.effect_errors: dict[str, str] = {}
        """What last went wrong with an effect still to do, by fleet (not logged)."""
        self.clock_ms = clock_ms
        """The wall clock this process decides and times its effects by, in milliseconds."""
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

    def reachable(self, node_id: str) -> bool | None:
        """Whether ``node_id`` was heard from lately (``unreachable_after_s``); None if this
        orchestrator never heard from it."""
        seen = self.liveness.get(node_id)
        if seen is None:
            return None
        return self.clock_ms() - seen.seen_ms <= self.settings.unreachable_after_s * 1000

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
            await cancel_all(keepers)
            with contextlib.suppress(Exception):
                await status.unsubscribe()

    async def _stand_down(self) -> None:
        if self.active:
            self.log.info("standing down", epoch=self.lease.epoch)
        self.active = False
        self.metrics.active.set(0)
        await cancel_all(list(self._in_flight.values()))
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
            if overdue(self.state, self.clock_ms()):
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
        ctx = Context(self.clock_ms(), self._seed(command), self.lease.epoch, self.holder)
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
        for effect in self._effects():
            self._start(effect)

    def _effects(self) -> list[Effect]:
        """Every effect the state calls for now."""
        nc, outbox = self.nc, self.outbox
        effects = [attestation(nc, outbox, e) for e in open_enrollments(self.state)]
        effects += [member_command(nc, outbox, c) for c in member_commands(self.state)]
        effects += [node_key_request(nc, outbox, j) for j in node_key_jobs(self.state)]
        if self.cosigning is not None:
            cosigning = self.cosigning
            effects += [self._to_log(j, cosigning.log_document) for j in bundles_to_log(self.state)]
            effects += [
                self._to_log(j, cosigning.publish_artifact)
                for j in artifacts_to_publish(self.state)
            ]
            effects += [
                self._to_log(j, lambda j: log_retirement(cosigning, j))
                for j in retirements_to_log(self.state)
            ]
        return effects

    def _to_log(self, job: ToLog, carry: Callable[[ToLog], Awaitable[Body]]) -> Effect:
        """A document for the cosigners (logged, and countersigned for an artifact), asked
        for again while they refuse or do not answer: they answer a document they logged
        already with their receipt for it, so nothing is signed twice."""

        async def perform(_: float) -> Body:
            await self.follow_rotations()
            return await carry(job)

        return Effect(
            key=job.key,
            stage="cosign",
            perform=perform,
            due=lambda state: job.key in _documents_to_log(state),
            backoff_s=SLOW_BACKOFF_S,
            fleet=job.fleet,
            context={"fleet": job.fleet, "document": job.key},
        )

    def _start(self, effect: Effect) -> None:
        """Carry ``effect`` out unless one under its key runs already."""
        if effect.key in self._in_flight:
            return
        task = asyncio.create_task(carry_out(self, effect))
        self._in_flight[effect.key] = task

        def forget(done: asyncio.Task[None]) -> None:
            if self._in_flight.get(effect.key) is done:
                del self._in_flight[effect.key]

        task.add_done_callback(forget)

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
        self.liveness[body.node_id] = Liveness(self.clock_ms(), hsm_ok)
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


def _documents_to_log(state: State) -> set[str]:
    jobs = [*bundles_to_log(state), *artifacts_to_publish(state), *retirements_to_log(state)]
    return {j.key for j in jobs}
