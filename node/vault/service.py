"""Register and recover on NATS (``fleet.vault.<fleet>.register`` and ``.recover``).

Members serve both subjects in one queue group, so each request reaches one member, which opens
it with the fleet's session key, runs it through its proposer, and seals the outcome for the
client. ``recover`` first commits the attempt (the incremented counter) with a quorum, then has
the evaluator look at the guess with the commit's proof, then clears the failures (right guess)
or destroys the record (last wrong guess). Requests are handled concurrently, so that many
requests share each quorum round.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import Counter
from collections.abc import Callable

import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError

from messages import subjects
from messages.bus import Rejected, headers_for
from messages.errors import HsmfleetError, MessageError
from messages.gate import Gate
from messages.ids import id_time_ms
from messages.outbox import Outbox
from messages.quorum import OutcomeUnknown, ProofOfAnotherConfiguration, QuorumError
from messages.schema import Body
from messages.signing import TrustStore
from messages.vault import (
    DEFAULT_LIMIT,
    OK,
    OPERATIONS,
    BudgetExhausted,
    Outcome,
    RecoverRequest,
    RegisterRequest,
    RegistrationsClosed,
    UnreadableRequest,
    VaultAnswer,
    VaultError,
    VaultRequest,
    VaultUnavailable,
    WrongGuess,
    open_request,
    seal_answer,
)
from node.quorum.proposer import Commit, Proposer
from node.vault import metrics
from node.vault import record as records
from node.vault.evaluator import GuessEvaluator
from node.vault.keys import VaultKeys

log = structlog.get_logger("hsmfleet.vault")


# Times a change whose outcome a read showed to be lost is made again.
UNKNOWN_RETRIES = 2

# Times an attempt's proof is renewed when the configuration changed before its evaluation.
PROOF_RENEWALS = 2

# How long a stopping member goes on answering the requests it already took.
STOP_GRACE_S = 5.0


class VaultBusy(VaultError):
    """The member holds as many requests as it may; the client should try again later."""

    kind = "vault_busy"


class VaultService:
    """One member's vault front: opens requests, runs them, seals the answers."""

    def __init__(
        self,
        fleet: str,
        member: str,
        proposer: Proposer,
        evaluator: GuessEvaluator,
        keys: VaultKeys,
        *,
        limit: int = DEFAULT_LIMIT,
        concurrency: int = 512,
        max_pending: int = 2048,
    ) -> None:
        self.fleet = fleet
        self.member = member
        self.proposer = proposer
        self.evaluator = evaluator
        self.keys = keys
        self.limit = limit
        self.max_pending = max_pending
        self.rejects: Counter[str] = Counter()
        self.draining = False
        """The fleet is retiring: registrations are refused, recoveries go on."""
        self._gate = Gate(TrustStore())
        self._outbox = Outbox(member)
        self._slots = asyncio.Semaphore(concurrency)
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
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

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
                if not isinstance(received.body, VaultRequest):
                    raise UnreadableRequest("not a vault request", type=received.envelope.type)
                plain = open_request(self.keys.session, self.fleet, op, received.body.sealed)
                if plain.id != causation:
                    raise UnreadableRequest("the sealed request names another envelope id")
            except (MessageError, VaultError) as exc:
                self._refuse(exc.kind)
                await self._reply(msg.reply, Rejected(kind=exc.kind, reason=str(exc)), causation)
                return
            outcome = await self.handle(plain)
            metrics.OUTCOMES.labels(self.fleet, self.member, op, outcome.status).inc()
            sealed = seal_answer(plain.answer_key, plain.id, outcome)
            await self._reply(msg.reply, VaultAnswer(sealed=sealed), causation)

    def _refuse(self, kind: str) -> None:
        self.rejects[kind] += 1
        metrics.REQUESTS_REJECTED.labels(self.fleet, self.member, kind).inc()

    async def _reply(self, subject: str, body: Body, causation: str | None) -> None:
        env = self._outbox.envelope(body, causation=causation)
        await self._nc.publish(subject, env.encode(), headers=headers_for(env))

    async def handle(self, plain: RegisterRequest | RecoverRequest) -> Outcome:
        """Run one opened request; every refusal becomes an outcome for the client."""
        try:
            self._check_fresh(plain.id)
            subjects.token(plain.user, "user")
            if isinstance(plain, RegisterRequest):
                return await self.register(plain)
            return await self.recover(plain)
        except WrongGuess as exc:
            return Outcome(status=exc.kind, reason=exc.args[0], remaining=exc.remaining)
        except HsmfleetError as exc:
            log.info("vault operation refused", kind=exc.kind, reason=str(exc))
            return Outcome(status=exc.kind, reason=str(exc))

    def _check_fresh(self, request_id: str) -> None:
        now = self.proposer.outbox.ids.now_ms()
        if abs(now - id_time_ms(request_id)) > records.REQUEST_WINDOW_MS:
            raise UnreadableRequest("the request is too old or from the future", id=request_id)

    def drain(self) -> None:
        """Take no new registrations from now on (the fleet is retiring)."""
        self.draining = True

    async def register(self, request: RegisterRequest) -> Outcome:
        """Replace the user's registration; the guess budget stays as it is. A draining
        member refuses it with :class:`RegistrationsClosed`."""
        if self.draining:
            raise RegistrationsClosed(
                "the fleet is retiring: register on its successor", fleet=self.fleet
            )
        sealed = records.seal_registration(
            self.keys.storage, request.user, request.id, request.pin, request.secret, os.urandom(12)
        )

        def change(old: records.UserRecord | None) -> records.UserRecord:
            return records.registered(old, request.user, request.id, sealed, self.limit)

        def applied(record: records.UserRecord | None) -> bool | None:
            # registered_by only grows: below ours, ours never took effect; above, who knows.
            if record is None or record.registered_by < request.id:
                return False
            return True if record.registered_by == request.id else None

        await self._commit(request.user, change, applied)
        return Outcome(status=OK)

    async def recover(self, request: RecoverRequest) -> Outcome:
        """Commit one attempt with a quorum, then evaluate the guess, then settle the record."""
        attempt_commit = await self._commit(
            request.user,
            lambda old: records.attempted(old, self.member, request.id),
            lambda record: record is not None and request.id in record.recent,
        )
        attempt = records.decode(attempt_commit.value)
        if attempt is None or attempt.sealed is None:
            raise BudgetExhausted("the user's guesses are used up", user=request.user)
        secret = await self._evaluate(request, attempt_commit)
        if secret is not None:
            await self._settle(request.user, lambda old: records.after_success(old, attempt))
            return Outcome(status=OK, secret=secret, remaining=attempt.limit)
        if attempt.failures >= attempt.limit:
            await self._settle(request.user, records.after_failure)
        raise WrongGuess("wrong guess", remaining=attempt.remaining)

    async def _evaluate(self, request: RecoverRequest, attempt: Commit) -> bytes | None:
        """The evaluator's verdict on the guess for the committed ``attempt``.

        When the group's configuration changed between the commit and the evaluation, the
        proof's votes no longer prove anything to the evaluator; a read under the current
        configuration proves the same value again, provided no later change overtook it
        (values are unique, so an equal value is this very attempt). The attempt is spent
        either way, so a failure here says so.
        """
        for renewal in range(PROOF_RENEWALS + 1):
            try:
                return self.evaluator.evaluate(
                    request.user, attempt.value, attempt.proof, request.guess
                )
            except ProofOfAnotherConfiguration as exc:
                outdated = exc
            if renewal == PROOF_RENEWALS:
                break
            try:
                renewed = await self.proposer.read(attempt.key)
            except QuorumError as exc:
                raise VaultUnavailable(
                    f"the attempt could not be proven again: {exc}", attempt_spent=True
                ) from exc
            if renewed.value != attempt.value:
                raise VaultUnavailable(
                    "a later change overtook the attempt before it was evaluated",
                    attempt_spent=True,
                )
            attempt = renewed
        raise VaultUnavailable(
            f"the configuration kept changing under the attempt: {outdated}", attempt_spent=True
        ) from outdated

    async def _commit(
        self,
        user: str,
        change: Callable[[records.UserRecord | None], records.UserRecord],
        applied: Callable[[records.UserRecord | None], bool | None],
    ) -> Commit:
        """Commit ``change`` to the user's record. When the outcome is unknown, a read decides.

        The read commits the record's current value under a ballot above the unknown one, so a
        value that is not the current one can never be chosen afterwards. If the record holds
        exactly the value proposed, it committed (values are unique: each carries a new
        registration or request id). If ``applied`` says the change is not in the current
        value's history, it never took effect and never will: it is made again, at most
        ``UNKNOWN_RETRIES`` times. Otherwise the outcome stays unknown.
        """
        key = records.record_key(user)
        for _ in range(UNKNOWN_RETRIES + 1):
            proposed: list[bytes] = []

            def apply(value: bytes | None, proposed: list[bytes] = proposed) -> bytes:
                new = records.encode(change(records.decode(value)))
                proposed.append(new)
                return new

            try:
                return await self.proposer.change(key, apply)
            except OutcomeUnknown as exc:
                unknown = exc
            except QuorumError as exc:
                raise VaultUnavailable(f"the fleet cannot commit now: {exc}") from exc
            try:
                commit = await self.proposer.read(key)
            except QuorumError as again:
                raise VaultUnavailable(f"the fleet cannot commit now: {again}") from unknown
            if proposed and commit.value == proposed[-1]:
                return commit
            if applied(records.decode(commit.value)) is not False:
                break
        raise VaultUnavailable(
            f"the operation may or may not have committed: {unknown}"
        ) from unknown

    async def _settle(
        self,
        user: str,
        change: Callable[[records.UserRecord | None], records.UserRecord | None],
    ) -> None:
        """Best effort: a record left unsettled errs on the safe side (failures stay counted;
        a record at its limit is destroyed by the next attempt)."""

        def apply(value: bytes | None) -> bytes | None:
            new = change(records.decode(value))
            return None if new is None else records.encode(new)

        try:
            await self.proposer.change(records.record_key(user), apply)
        except QuorumError as exc:
            log.warning("could not settle the record", user=user, error=str(exc))
