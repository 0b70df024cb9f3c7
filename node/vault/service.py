"""The vault on NATS (``fleet.vault.<fleet>.<op>``): a member's host side, which carries
ciphertext between clients, its quorum replica and its HSM's vault applet.

Members serve the four operations in one queue group, so each request reaches one member. The
host never opens a request: it asks its applet (:class:`AppletPort`) who the request is for, has
the applet compute each record change (which the other members' applets check before they
accept it), commits it through its proposer, and has the applet answer the client (the answer is
sealed inside the HSM under the key the client sent). ``recover-start`` commits the attempt
before the applet answers the login; ``recover-finish`` commits the success before the applet
releases the secret. Requests are handled concurrently, so that many share each quorum round.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Callable
from typing import Protocol

import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError

from messages import subjects
from messages.errors import HsmfleetError, MessageError
from messages.quorum import Ballot, OutcomeUnknown, ProofOfAnotherConfiguration, QuorumError
from messages.rejected import Rejected
from messages.schema import Body
from messages.signing import TrustStore
from messages.vault import (
    OK,
    OPERATIONS,
    RECOVER_START,
    REGISTER,
    REGISTER_START,
    BudgetExhausted,
    Outcome,
    RegistrationsClosed,
    UnreadableRequest,
    VaultAnswer,
    VaultBusy,
    VaultRequest,
    VaultUnavailable,
)
from messages.vault_policy import VaultError
from node.quorum.proposer import Commit, Proposer, Step
from node.vault import metrics
from node.vault import record as records
from node.vault.applet import ATTEMPTED, DESTROYED, REGISTERED, SUCCEEDED, RequestInfo
from transport.backoff import Backoff
from transport.bus import headers_for
from transport.gate import Gate
from transport.outbox import Outbox
from transport.tasks import cancel_all

log = structlog.get_logger("hsmfleet.vault")

# Times a change whose outcome a read showed to be lost is made again.
UNKNOWN_RETRIES = 2

# How long reads are tried to learn the outcome of a change that may have committed. An attempt
# that committed unseen would be spent with its guess never evaluated (another proposer may
# write it back later), so contention (which ends a single read) is waited out.
DECIDE_S = 30.0

# Times a commit proof is renewed when the applet does not know the configuration it was made in.
PROOF_RENEWALS = 2

# How long a stopping member goes on answering the requests it already took.
STOP_GRACE_S = 5.0


class AppletPort(Protocol):
    """One fleet's vault applet as the host reaches it (in the HSM device, or in-process):
    see :class:`node.vault.applet.FleetVault` for what each call does."""

    def peek(self, op: str, request: VaultRequest) -> RequestInfo: ...

    def register_start(self, request: VaultRequest) -> bytes: ...

    def propose(
        self, change: str, key: str, pred: bytes | None, request: VaultRequest, evaluator: str = ""
    ) -> tuple[bytes, bytes]: ...

    def evaluate(
        self, request: VaultRequest, value: bytes, ballot: Ballot, votes: tuple[bytes, ...]
    ) -> bytes: ...

    def release(
        self, request: VaultRequest, value: bytes, ballot: Ballot, votes: tuple[bytes, ...]
    ) -> bytes: ...

    def answer(self, op: str, request: VaultRequest, outcome: Outcome) -> bytes: ...


class VaultService:
    """One member's vault front on NATS."""

    def __init__(
        self,
        fleet: str,
        member: str,
        proposer: Proposer,
        applet: AppletPort,
        *,
        concurrency: int = 512,
        max_pending: int = 2048,
    ) -> None:
        self.fleet = fleet
        self.member = member
        self.proposer = proposer
        self.applet = applet
        self.max_pending = max_pending
        self.rejects: Counter[str] = Counter()
        self.draining = False
        """The fleet is retiring: registrations are refused, recoveries go on."""
        self._gate = Gate(TrustStore())
        self._outbox = Outbox(member)
        self._slots = asyncio.Semaphore(concurrency)
        self._records: dict[str, tuple[asyncio.Lock, int]] = {}
        """A lock per user record with changes under way here, and how many hold or wait."""
        self._tasks: set[asyncio.Task[None]] = set()
        self._subs: list[Subscription] = []
        self._nc: NATS | None = None

    async def start(self, nc: NATS) -> None:
        self._nc = nc
        for op in OPERATIONS:
            self._subs.append(
                await nc.subscribe(
                    subjects.vault(self.fleet, op),
                    queue=f"vault-{self.fleet}",
                    cb=self._on_msg,
                )
            )

    @property
    def in_progress(self) -> int:
        """Requests taken and not answered yet."""
        return len(self._tasks)

    async def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """Take no new requests, answer the ones already taken, and abandon what is left after
        ``grace_s`` seconds in all. Draining (not just unsubscribing) matters: a request the
        server routed here before it saw the unsubscribe still gets its answer. A drain that
        cannot finish (the server is unreachable) falls back to unsubscribing."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        subs, self._subs = self._subs, []
        try:
            async with asyncio.timeout(grace_s):
                await asyncio.gather(*(sub.drain() for sub in subs))
        except (TimeoutError, NatsError):
            for sub in subs:
                with contextlib.suppress(NatsError):
                    await sub.unsubscribe()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=max(0.0, deadline - loop.time()))
        await cancel_all(list(self._tasks))

    def drain(self) -> None:
        """Take no new registrations from now on (the fleet is retiring)."""
        self.draining = True

    async def _on_msg(self, msg: Msg) -> None:
        if not msg.reply:
            self._refuse("no_reply_subject")
            return
        if self.in_progress >= self.max_pending:  # anonymous clients must not grow memory
            busy = VaultBusy("too many requests in progress; try again later")
            self._refuse(busy.kind)
            await self._reply(msg.reply, Rejected(kind=busy.kind, reason=str(busy)), None)
            return
        task = asyncio.create_task(self._answer(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, msg: Msg) -> None:
        async with self._slots:
            op = msg.subject.rsplit(".", 1)[1]
            causation = None
            try:
                received = self._gate.admit(msg.data, None)
                causation = received.envelope.id
                request = received.body
                if not isinstance(request, VaultRequest):
                    raise UnreadableRequest("not a vault request", type=received.envelope.type)
                info = await asyncio.to_thread(self.applet.peek, op, request)
                if info.id != causation:
                    raise UnreadableRequest("the sealed request names another envelope id")
            except (MessageError, VaultError) as exc:
                self._refuse(exc.kind)
                await self._reply(msg.reply, Rejected(kind=exc.kind, reason=str(exc)), causation)
                return
            status, sealed = await self.handle(op, request, info)
            metrics.OUTCOMES.labels(self.fleet, self.member, op, status).inc()
            await self._reply(msg.reply, VaultAnswer(sealed=sealed), causation)

    def _refuse(self, kind: str) -> None:
        self.rejects[kind] += 1
        metrics.REQUESTS_REJECTED.labels(self.fleet, self.member, kind).inc()

    async def _reply(self, subject: str, body: Body, causation: str | None) -> None:
        env = self._outbox.envelope(body, causation=causation)
        await self._nc.publish(subject, env.encode(), headers=headers_for(env))

    async def handle(self, op: str, request: VaultRequest, info: RequestInfo) -> tuple[str, bytes]:
        """Run one request; returns the outcome's status and the sealed answer (a refusal too
        is sealed for the client by the applet)."""
        try:
            if op in (REGISTER_START, REGISTER) and self.draining:
                raise RegistrationsClosed(
                    "the fleet is retiring: register on its successor", fleet=self.fleet
                )
            if op == REGISTER_START:
                return OK, await asyncio.to_thread(self.applet.register_start, request)
            if op == REGISTER:
                return OK, await self._register(request, info)
            if op == RECOVER_START:
                return OK, await self._recover_start(request, info)
            return OK, await self._recover_finish(request, info)
        except HsmfleetError as exc:
            log.info("vault operation refused", op=op, kind=exc.kind, reason=str(exc))
            remaining = exc.detail.get("remaining") if isinstance(exc, VaultError) else None
            outcome = Outcome(
                status=exc.kind,
                reason=str(exc),
                remaining=remaining,  # type: ignore[arg-type]
            )
            return exc.kind, await asyncio.to_thread(self.applet.answer, op, request, outcome)

    async def _register(self, request: VaultRequest, info: RequestInfo) -> bytes:
        key = records.record_key(info.user)
        commit = await self._commit(
            key,
            self._step(REGISTERED, key, request),
            lambda record: _registered(record, info.registration),
        )
        record = records.decode(commit.value)
        assert record is not None
        outcome = Outcome(status=OK, generation=record.generation, replaced=record.replaced)
        return await asyncio.to_thread(self.applet.answer, REGISTER, request, outcome)

    async def _recover_start(self, request: VaultRequest, info: RequestInfo) -> bytes:
        key = records.record_key(info.user)
        attempt = self._step(ATTEMPTED, key, request, self.member)
        destroy = self._step(DESTROYED, key, request)

        def step(pred: bytes | None, proof: object) -> tuple[bytes | None, bytes | None]:
            try:
                return attempt(pred, proof)
            except BudgetExhausted:
                return destroy(pred, proof)  # past the limit, once the last login is over

        commit = await self._commit(
            key, step, lambda record: record is not None and record.started(info.id) is not None
        )
        record = records.decode(commit.value)
        if record is None or record.destroyed or record.started(info.id) is None:
            raise BudgetExhausted("the user's guesses are used up", user=info.user)
        return await self._proven(key, commit, self.applet.evaluate, request)

    async def _recover_finish(self, request: VaultRequest, info: RequestInfo) -> bytes:
        key = records.record_key(info.user)
        commit = await self._commit(key, self._step(SUCCEEDED, key, request), lambda _r: None)
        return await self._proven(key, commit, self.applet.release, request)

    def _step(self, change: str, key: str, request: VaultRequest, evaluator: str = "") -> Step:
        def step(pred: bytes | None, _proof: object) -> tuple[bytes | None, bytes | None]:
            return self.applet.propose(change, key, pred, request, evaluator)

        return step

    async def _proven(
        self,
        key: str,
        commit: Commit,
        use: Callable[[VaultRequest, bytes, Ballot, tuple[bytes, ...]], bytes],
        request: VaultRequest,
    ) -> bytes:
        """``use`` (the applet's evaluate or release) on ``commit`` with its proof.

        The applet verifies a proof under the configuration its votes were cast in, if it
        knows it (the current one, or one the member applied before and kept); otherwise a
        read under the current configuration proves the same value again, provided no later
        change overtook it (values are unique, so an equal value is this very one). The attempt
        is spent either way, so a failure here says so."""
        for renewal in range(PROOF_RENEWALS + 1):
            assert commit.value is not None
            try:
                return await asyncio.to_thread(
                    use, request, commit.value, commit.ballot, commit.proof.votes
                )
            except ProofOfAnotherConfiguration as exc:
                outdated = exc
            if renewal == PROOF_RENEWALS:
                break
            try:
                renewed = await self._decide(key)
            except QuorumError as exc:
                raise VaultUnavailable(
                    f"the change could not be proven again: {exc}", attempt_spent=True
                ) from exc
            if renewed.value != commit.value:
                raise VaultUnavailable(
                    "a later change overtook this one before it was used", attempt_spent=True
                )
            commit = renewed
        raise VaultUnavailable(
            f"the configuration kept changing under the change: {outdated}", attempt_spent=True
        ) from outdated

    async def _commit(
        self,
        key: str,
        step: Step,
        applied: Callable[[records.UserRecord | None], bool | None],
    ) -> Commit:
        """:meth:`_commit_now`, one change of a record at a time on this member: changes of one
        user's record made here at once would only compete with each other for its ballots,
        and a change whose outcome is unknown must get to read the record before the next
        one, or it may stay unknown while the attempt it made counts."""
        lock, users = self._records.get(key) or (asyncio.Lock(), 0)
        self._records[key] = (lock, users + 1)
        try:
            async with lock:
                return await self._commit_now(key, step, applied)
        finally:
            lock, users = self._records[key]
            if users == 1:
                del self._records[key]
            else:
                self._records[key] = (lock, users - 1)

    async def _commit_now(
        self,
        key: str,
        step: Step,
        applied: Callable[[records.UserRecord | None], bool | None],
    ) -> Commit:
        """Commit ``step`` to the record ``key``. When the outcome is unknown, a read decides.

        The read commits the record's current value under a ballot above the unknown one, so a
        value that is not the current one can never be chosen afterwards. If the record holds
        exactly the value proposed, it committed (values are unique: each carries a new
        registration or request id). If ``applied`` says the change is in the current value's
        history (a login started), the read's value proves it too. If it says the change is not
        there, it never took effect and never will: it is made again, at most
        ``UNKNOWN_RETRIES`` times. Otherwise the outcome stays unknown.
        """
        for _ in range(UNKNOWN_RETRIES + 1):
            proposed: list[bytes | None] = []

            def recording(pred: bytes | None, proof: object, out: list = proposed) -> tuple:
                new, witness = step(pred, proof)
                out.append(new)
                return new, witness

            try:
                return await self.proposer.transit(key, recording)
            except OutcomeUnknown as exc:
                unknown = exc
            except QuorumError as exc:
                raise VaultUnavailable(f"the fleet cannot commit now: {exc}") from exc
            try:
                commit = await self._decide(key)
            except QuorumError as again:
                raise VaultUnavailable(
                    f"the operation may or may not have committed: {again}"
                ) from unknown
            if proposed and commit.value == proposed[-1]:
                return commit
            seen = applied(records.decode(commit.value))
            if seen:
                return commit
            if seen is not False:
                break
        raise VaultUnavailable(
            f"the operation may or may not have committed: {unknown}"
        ) from unknown

    async def _decide(self, key: str) -> Commit:
        """The record's value, read (written back under a new ballot) until a read commits or
        :data:`DECIDE_S` passes; raises the last read's :class:`QuorumError`."""
        loop = asyncio.get_running_loop()
        until = loop.time() + DECIDE_S
        backoff = Backoff(0.01, 0.5)
        while True:
            try:
                return await self.proposer.read(key)
            except QuorumError:
                if loop.time() >= until:
                    raise
            await backoff.wait(until - loop.time())


def _registered(record: records.UserRecord | None, registration: str) -> bool | None:
    """Whether registration ``registration`` is in ``record``'s history: registrations only go
    forward, so below it it never took effect; above it, who knows."""
    if record is None or record.registration < registration:
        return False
    return True if record.registration == registration else None
