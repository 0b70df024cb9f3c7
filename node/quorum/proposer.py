"""The proposer: changes records through CASPaxos rounds, many records per round.

``change(key, fn)`` queues a change; a pump takes every queued change whose record is not
already in a round (up to ``max_batch``) and runs them as one round: one signed prepare for all
of them, then one signed accept for those that got a quorum of promises (group commit). Up to
``max_rounds`` rounds run at once: two keep the members busy while the changes that arrive
during a round gather into the next one, and every round costs each member a signature, a
verification and an fsync whatever its size. For each record the proposer takes the value with
the highest accepted ballot among the promises, applies ``fn`` and has the result accepted
(CASPaxos 2.2).

Accepts are thrifty: each is addressed (:data:`messages.quorum.ADDRESSED`) to just enough
members for a quorum besides the proposer's own acceptor, those that answered fastest lately;
if they have not settled it within a few of their usual round trips (the hedge), it goes to the
rest too, and members that kept it waiting are tried last from then on. The others do no work
for the round, which on shared machines is most of what a round costs. Prepares go to all.

After a change commits, the accept carried a promise of the record's next ballot; for
``hold_for`` seconds the proposer's next change of that record skips the prepare round
(CASPaxos 2.2.1, one round trip). A refused accept drops the held promise and the next change
prepares again. Such a change sends its value for acceptance at once, so if the quorum was lost
meanwhile it ends as :class:`OutcomeUnknown`, never as "nothing written".

Failures are typed: refused ballots are retried with a higher ballot after a random pause until
``attempts`` or the deadline run out (:class:`Contention`); too few answers before anything was
sent for acceptance is :class:`QuorumUnavailable` (nothing was written); too few confirmations
after the value was sent is :class:`OutcomeUnknown`; a vetted value every asked member's HSM
refused is :class:`ValueRefused`. A change is retried only while nothing of it can have been
accepted, so ``fn`` is never applied twice to the register.

Vetted records (:func:`messages.quorum.vetted`) change by :meth:`Proposer.transit`: the step gets
the current value with the proof that it committed and returns the new value and the witness it
is made from, and the accept carries both as a :class:`messages.quorum.Justification`. A current
value known only from promises (no proof at hand: another proposer wrote it last, or its commit
was never confirmed) is first written back with the justification it was accepted with, which
proves it committed; the change then follows on the held promise, one round trip later. Once a
vetted value commits, the proposer tells every member (:class:`messages.quorum.Committed`); a
member then reports the value with the quorum's votes, and the next proposer to find it takes
those as its proof, with no write-back.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from messages import subjects
from messages.commit_proof import CommitProof, justify, pred_proof, verify_proof
from messages.envelope import Envelope
from messages.errors import HsmfleetError
from messages.membership import Membership
from messages.quorum import (
    ACCEPT,
    ADDRESSED,
    COMMITTED,
    NO_BALLOT,
    PREPARE,
    Accept,
    BadProof,
    BadVote,
    Ballot,
    Committed,
    Contention,
    Justification,
    OutcomeUnknown,
    Prepare,
    QuorumUnavailable,
    ValueRefused,
    vetted,
)
from messages.replay import ReplayGuard
from messages.schema import Body
from node.quorum import metrics
from node.quorum.acceptor import Answer
from node.quorum.votes import Tally
from transport.bus import headers_for
from transport.gate import Gate, Received
from transport.outbox import Outbox
from transport.tasks import cancel_all

log = structlog.get_logger("hsmfleet.quorum.proposer")

# The members asked first get HEDGE_FACTOR times their usual round trip, at least MIN_HEDGE
# seconds, before the rest are asked too.
HEDGE_FACTOR = 4
MIN_HEDGE = 0.005
# Vetted records per round: each one's justification carries the quorum's votes of its
# predecessor's round, and each vote lists every record of that round, so a round of K vetted
# records sends and stores K * K digests per vote. The cap bounds that.
MAX_VETTED = 16

Change = Callable[[bytes | None], bytes | None]
Step = Callable[[bytes | None, "CommitProof | None"], tuple[bytes | None, bytes | None]]
"""A change of a vetted record: from the current value and the proof it committed (None for a
record never written) to the new value and its witness (None: the value is unchanged)."""
Judge = Callable[[str, bytes | None, bytes | None], bool]
"""Whether a vetted record's reported value (with its justification) is one an honest member
can have accepted: reports that are not are a faulty member's, and are passed over."""


@dataclass(frozen=True)
class Commit:
    """A committed change: the record's new value, its ballot and the quorum's signed proof."""

    key: str
    value: bytes | None
    ballot: Ballot
    proof: CommitProof


@dataclass
class _Pending:
    key: str
    step: Step
    future: asyncio.Future[Commit]
    deadline: float
    attempts: int = 0
    not_before: float = 0.0
    reading: bool = False
    """A read: proving the current value committed is all it asks."""


@dataclass(frozen=True)
class _Proposal:
    """What one record's accept carries: the value, its justification (vetted records), and
    whether it writes back an unproven current value before the change itself."""

    index: int
    value: bytes | None
    justification: bytes | None
    refusal: Exception | None = None
    proving: bool = False


class Proposer:
    """One member's proposer on NATS."""

    def __init__(
        self,
        member: str,
        outbox: Outbox,
        membership: Callable[[], Membership],
        *,
        max_batch: int = 256,
        max_rounds: int = 2,
        phase_timeout: float = 0.5,
        deadline: float = 3.0,
        attempts: int = 50,
        max_held: int = 100_000,
        hold_for: float = 2.0,
        rng: random.Random | None = None,
        thrifty: bool = True,
        judge: Judge | None = None,
    ) -> None:
        self.member = member
        self.outbox = outbox
        self.membership = membership
        self.max_batch = max_batch
        self.max_rounds = max_rounds
        self.phase_timeout = phase_timeout
        self.deadline = deadline
        self.attempts = attempts
        self.rng = rng or random.Random()
        self.judge = judge
        self.rejected_votes: Counter[str] = Counter()
        self.phases = 0
        self.thrifty = thrifty
        self.hedged = 0
        self.written_back = 0  # vetted values proven by writing them back
        self._rtt: dict[str, float] = {}  # smoothed seconds from a request to a member's vote
        self._started: dict[str, float] = {}
        self.max_held = max_held
        self.hold_for = hold_for
        self._seen: OrderedDict[str, int] = OrderedDict()
        self._held: OrderedDict[str, tuple[int, bytes | None, CommitProof, int, float]] = (
            OrderedDict()
        )
        self._pending: deque[_Pending] = deque()
        self._busy: set[str] = set()
        self._rounds: set[asyncio.Task[None]] = set()
        self._tallies: dict[str, Tally] = {}
        self._decided: dict[str, asyncio.Event] = {}
        self._round_ids = itertools.count()
        self._wake = asyncio.Event()
        self._replay = ReplayGuard(window_ms=60_000)
        self._gate: Gate | None = None
        self._gate_epoch = 0
        self._nc: NATS | None = None
        self._inbox = ""
        self._sub: Subscription | None = None
        self._pump_task: asyncio.Task[None] | None = None
        self.local: Callable[[Received, Answer | None], None] | None = None
        self._commits = metrics.COMMITS.labels(member)
        self._write_backs = metrics.WRITE_BACKS.labels(member)

    async def start(self, nc: NATS) -> None:
        """Subscribe to this proposer's reply inbox and start taking changes."""
        self._nc = nc
        self._inbox = nc.new_inbox()
        self._sub = await nc.subscribe(f"{self._inbox}.*", cb=self._on_vote)
        self._pump_task = asyncio.create_task(self._pump(), name=f"proposer-{self.member}")

    async def stop(self) -> None:
        """Stop taking changes; queued ones fail with :class:`QuorumUnavailable`."""
        if self._pump_task is not None:
            await cancel_all([self._pump_task])
        await cancel_all(list(self._rounds))
        while self._pending:
            item = self._pending.popleft()
            if not item.future.done():
                item.future.set_exception(QuorumUnavailable("proposer stopped", key=item.key))
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None

    async def change(self, key: str, fn: Change, *, deadline: float | None = None) -> Commit:
        """Apply ``fn`` to record ``key`` through a quorum and return the committed result.

        ``fn`` gets the current value (None for an empty record) and returns the new one; it
        must not have side effects. If it raises, the value it saw is committed unchanged (as
        CASPaxos does for a failed compare-and-set, so that what the refusal was based on is
        itself linearizable) and then its exception reaches the caller.
        """
        return await self._queue(key, lambda value, _proof: (fn(value), None), deadline)

    async def transit(self, key: str, step: Step, *, deadline: float | None = None) -> Commit:
        """Apply ``step`` to vetted record ``key`` through a quorum (see the module docstring);
        as :meth:`change` otherwise: if ``step`` raises, the current value is committed
        unchanged and the exception reaches the caller."""
        return await self._queue(key, step, deadline)

    async def read(self, key: str) -> Commit:
        """The record's latest committed value (CASPaxos reads write the value back).

        A read never ends as :class:`OutcomeUnknown`: see :meth:`_accept`.
        """
        return await self._queue(key, _identity, None, reading=True)

    async def _queue(
        self, key: str, step: Step, deadline: float | None, *, reading: bool = False
    ) -> Commit:
        subjects.token(key, "record key")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Commit] = loop.create_future()
        limit = loop.time() + (self.deadline if deadline is None else deadline)
        self._pending.append(_Pending(key, step, future, limit, reading=reading))
        self._wake.set()
        return await future

    def _gate_now(self, membership: Membership) -> Gate:
        if self._gate is None or self._gate_epoch != membership.epoch:
            self._gate = Gate(membership.trust(), replay=self._replay)
            self._gate_epoch = membership.epoch
        return self._gate

    async def _on_vote(self, msg: Msg) -> None:
        round_id = msg.subject.rsplit(".", 1)[1]
        self._count(round_id, lambda tally: tally.add(msg.data))

    def _count(self, round_id: str, add: Callable[[Tally], str]) -> None:
        tally = self._tallies.get(round_id)
        if tally is None or tally.decided:
            return  # a late vote for a phase already counted: not needed, not checked
        try:
            voter = add(tally)
        except BadVote as exc:
            self.rejected_votes[exc.kind] += 1
            metrics.VOTES_REJECTED.labels(self.member, exc.kind).inc()
            log.warning("vote ignored", kind=exc.kind, reason=str(exc))
            return
        if voter != self.member:
            took = asyncio.get_running_loop().time() - self._started[round_id]
            before = self._rtt.get(voter)
            self._rtt[voter] = took if before is None else before + (took - before) / 8
        if tally.decided:
            self._decided[round_id].set()

    async def _pump(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending and len(self._rounds) < self.max_rounds:
                batch = self._take(loop.time())
                if not batch:
                    break
                task = asyncio.create_task(self._round(batch))
                self._rounds.add(task)
                task.add_done_callback(self._round_done)

    def _round_done(self, task: asyncio.Task[None]) -> None:
        self._rounds.discard(task)
        self._wake.set()

    def _take(self, now: float) -> list[_Pending]:
        """Up to ``max_batch`` queued changes (of them at most :data:`MAX_VETTED` vetted), each
        to a different idle record."""
        batch: list[_Pending] = []
        keys: set[str] = set()
        checked = 0
        kept: deque[_Pending] = deque()
        soonest = None
        while self._pending:
            item = self._pending.popleft()
            if item.future.done():
                continue
            free = item.key not in self._busy and item.key not in keys
            room = len(batch) < self.max_batch and (checked < MAX_VETTED or not vetted(item.key))
            if room and free and item.not_before <= now:
                batch.append(item)
                keys.add(item.key)
                checked += vetted(item.key)
            else:
                kept.append(item)
                if item.not_before > now:
                    soonest = min(soonest or item.not_before, item.not_before)
        self._pending = kept
        self._busy |= keys
        if soonest is not None:
            asyncio.get_running_loop().call_at(soonest, self._wake.set)
        return batch

    def _ballot(self, key: str) -> int:
        n = self._seen.get(key, 0) + 1
        self._remember(key, n)
        return n

    def _saw(self, key: str, n: int) -> None:
        if n > self._seen.get(key, 0):
            self._remember(key, n)

    def _remember(self, key: str, n: int) -> None:
        """Keep the highest ballot seen per record, for the ``max_held`` records used last; a
        forgotten one costs a refused prepare, which tells the ballot again."""
        self._seen[key] = n
        self._seen.move_to_end(key)
        if len(self._seen) > self.max_held:
            self._seen.popitem(last=False)

    async def _phase(self, body: Prepare | Accept, membership: Membership, gate: Gate) -> Tally:
        """Send ``body`` to the phase's members and count their votes until decided or timeout."""
        env = self.outbox.envelope(body)
        self.phases += 1
        round_id = str(next(self._round_ids))
        tally = Tally(gate, env, body, membership)
        decided = asyncio.Event()
        self._tallies[round_id] = tally
        self._decided[round_id] = decided
        own = self.local is not None and self.member in tally.voters
        others = sorted(tally.voters - {self.member}, key=lambda m: (self._rtt.get(m, 0.0), m))
        # Prepares go to everyone: an acceptor that missed a newer prepare would take this
        # proposer's next accept on a promise the others have moved past (outcome unknown).
        thrifty = self.thrifty and isinstance(body, Accept)
        first = others[: max(0, tally.quorum - own)] if thrifty else others
        rest = others[len(first) :]
        tally.asked = frozenset(first) | ({self.member} if own else frozenset())
        loop = asyncio.get_running_loop()
        self._started[round_id] = loop.time()
        data = env.encode()

        async def send(to: list[str]) -> None:
            headers = headers_for(env)
            if rest:
                headers[ADDRESSED] = ",".join(to)
            await self._nc.publish(
                subjects.quorum(body.fleet, phase),
                data,
                reply=f"{self._inbox}.{round_id}",
                headers=headers,
            )

        phase = PREPARE if isinstance(body, Prepare) else ACCEPT
        try:
            # Out to the other members first: the own acceptor's fsync must not hold them up.
            await send(first)
            if own:

                async def own_vote(env: Envelope, vote: Body, data: bytes) -> None:
                    self._count(round_id, lambda t: t.add_own(env, vote, data))

                self.local(Received(env, body, None), own_vote)
            waited = 0.0
            if rest:
                waited = self._hedge(first)
                if not await _settled(decided, waited):
                    self.hedged += 1
                    for member in first:
                        if member not in tally.votes:  # kept the round waiting: ask it last
                            self._rtt[member] = max(self._rtt.get(member, 0.0), 2 * waited)
                    tally.ask(frozenset(rest))
                    await send(rest)
            await _settled(decided, self.phase_timeout - waited)
        finally:
            del self._tallies[round_id]
            del self._decided[round_id]
            del self._started[round_id]
        return tally

    def _hedge(self, first: list[str]) -> float:
        """How long the members asked first get before the rest are asked as well."""
        usual = max((self._rtt.get(m, 0.0) for m in first), default=0.0)
        return min(self.phase_timeout / 2, max(MIN_HEDGE, HEDGE_FACTOR * usual))

    async def _round(self, batch: list[_Pending]) -> None:
        try:
            await self._run(batch)
        except asyncio.CancelledError:
            for item in batch:
                self._fail(item, OutcomeUnknown("the proposer stopped", key=item.key))
            raise
        except Exception as exc:
            log.exception("round failed")
            for item in batch:
                self._fail(item, OutcomeUnknown(f"the round failed: {exc!r}", key=item.key))
        finally:
            self._busy.difference_update(item.key for item in batch)

    def _fail(self, item: _Pending, error: Exception) -> None:
        kind = error.kind if isinstance(error, HsmfleetError) else "error"
        metrics.FAILURES.labels(self.member, kind).inc()
        if not item.future.done():
            item.future.set_exception(error)

    async def _run(self, batch: list[_Pending]) -> None:
        membership = self.membership()
        gate = self._gate_now(membership)
        fresh: list[int] = []
        ballots: dict[int, int] = {}
        currents: dict[int, _Current] = {}
        for i, item in enumerate(batch):
            held = self._held_value(item.key, membership)
            if held is None:
                fresh.append(i)
            else:
                ballots[i], value, proof = held
                currents[i] = _Current(value, proof, None)
        if fresh:
            for i in fresh:
                ballots[i] = self._ballot(batch[i].key)
            prepare = Prepare(
                fleet=membership.fleet,
                epoch=membership.epoch,
                keys=tuple(batch[i].key for i in fresh),
                ballots=tuple(ballots[i] for i in fresh),
            )
            promises = await self._phase(prepare, membership, gate)
            for j, i in enumerate(fresh):
                key = batch[i].key
                self._saw(key, promises.highest_seen(j))
                if promises.granted(j):
                    currents[i] = _latest(promises, j, key, self.judge, membership)
                else:
                    self._retry(batch[i], promises, j, membership.prepare_quorum)
        ready = [_propose(i, batch[i], currents[i]) for i in sorted(currents)]
        if written_back := sum(p.proving for p in ready):
            self.written_back += written_back
            self._write_backs.inc(written_back)
        if ready:
            await self._accept(batch, ballots, currents, ready, membership, gate)

    async def _accept(
        self,
        batch: list[_Pending],
        ballots: dict[int, int],
        currents: dict[int, _Current],
        ready: list[_Proposal],
        membership: Membership,
        gate: Gate,
    ) -> None:
        """Have the new values accepted, with the next prepare riding along.

        A value that is the record's current one (a read, a change whose function refused, or
        an unproven current value written back first) is tried again when its outcome is
        unknown: writing it back changes nothing, however often it is chosen. Any other value
        with an unknown outcome fails as :class:`OutcomeUnknown`. Once a written-back value
        committed, the change it was written back for is queued again, to run on the promise
        held from that commit."""
        accept = Accept(
            fleet=membership.fleet,
            epoch=membership.epoch,
            keys=tuple(batch[p.index].key for p in ready),
            ballots=tuple(ballots[p.index] for p in ready),
            next_ballots=tuple(self._ballot(batch[p.index].key) for p in ready),
            values=tuple(p.value for p in ready),
            justifications=tuple(p.justification for p in ready),
        )
        accepted = await self._phase(accept, membership, gate)
        now = asyncio.get_running_loop().time()
        proofs: dict[frozenset[str], tuple[bool, tuple[bytes, ...]]] = {}  # by granting members
        learned: dict[frozenset[str], list[tuple[str, int, bytes]]] = {}  # vetted, likewise
        unanimous = not accepted.refused_any()  # the common case: no per-record differences
        everyone = frozenset(accepted.votes)
        for j, proposal in enumerate(ready):
            i, value = proposal.index, proposal.value
            item = batch[i]
            self._saw(item.key, accepted.highest_seen(j))
            self._held.pop(item.key, None)
            if accepted.granted(j):
                granters = everyone if unanimous else accepted.granted_by(j)
                if granters not in proofs:
                    promised = len(granters & membership.prepare_set)
                    votes = tuple(data for _, data in accepted.granting(j))
                    proofs[granters] = (promised >= membership.prepare_quorum, votes)
                holds, votes = proofs[granters]
                ballot = Ballot(ballots[i], self.member)
                proof = CommitProof(
                    fleet=membership.fleet,
                    key=item.key,
                    ballot=ballot,
                    digest=accepted.digests[j],
                    votes=votes,
                )
                if holds:
                    self._hold(
                        item.key, accept.next_ballots[j], value, proof, membership.epoch, now
                    )
                if vetted(item.key) and value is not None:
                    learned.setdefault(granters, []).append((item.key, ballots[i], value))
                if proposal.proving and not item.reading:
                    # the change itself, on the promise just held
                    self._again(
                        item, Contention("the record's value kept needing proof", key=item.key)
                    )
                elif proposal.refusal is not None:
                    self._fail(item, proposal.refusal)
                elif not item.future.done():
                    self._commits.inc()
                    item.future.set_result(Commit(item.key, value, ballot, proof))
            elif kind := accepted.refused_as_invalid(j):
                self._fail(
                    item, ValueRefused("the members refused the value", key=item.key, kind=kind)
                )
            elif accepted.refused_by_all(j) or value == currents[i].value:
                # No acceptor took the value, and none ever will, or it changes nothing:
                # trying again cannot apply the change twice. Any other refusal leaves the
                # outcome unknown: an acceptor that refused may hold a later value computed
                # from ours.
                self._retry(item, accepted, j, membership.accept_quorum)
            else:
                self._fail(
                    item,
                    OutcomeUnknown(
                        "too few members confirmed the value; it may or may not have committed",
                        key=item.key,
                        confirmed=accepted.grants[j],
                        quorum=membership.accept_quorum,
                    ),
                )
        for granters, committed in learned.items():
            await self._announce(membership, committed, proofs[granters][1])

    async def _announce(
        self,
        membership: Membership,
        committed: list[tuple[str, int, bytes]],
        votes: tuple[bytes, ...],
    ) -> None:
        """Tell every member that the vetted records ``committed`` (key, ballot, value)
        committed, with the votes that prove it."""
        keys, ballots, values = zip(*committed, strict=True)
        notice = Committed(
            fleet=membership.fleet,
            epoch=membership.epoch,
            proposer=self.member,
            keys=keys,
            ballots=ballots,
            values=values,
            votes=votes,
        )
        env = self.outbox.envelope(notice)
        await self._nc.publish(
            subjects.quorum(membership.fleet, COMMITTED), env.encode(), headers=headers_for(env)
        )
        if self.local is not None:  # the own acceptor hears nothing this member publishes
            self.local(Received(env, notice, None), None)

    def _held_value(
        self, key: str, membership: Membership
    ) -> tuple[int, bytes | None, CommitProof] | None:
        """The ballot a quorum promised this proposer for ``key``, the record's value and the
        proof that it committed."""
        held = self._held.get(key)
        if held is None:
            return None
        n, value, proof, epoch, since = held
        if epoch != membership.epoch or asyncio.get_running_loop().time() - since > self.hold_for:
            del self._held[key]
            return None
        self._held.move_to_end(key)
        return n, value, proof

    def _hold(
        self, key: str, n: int, value: bytes | None, proof: CommitProof, epoch: int, now: float
    ) -> None:
        self._held[key] = (n, value, proof, epoch, now)
        if len(self._held) > self.max_held:
            self._held.popitem(last=False)

    def _retry(self, item: _Pending, tally: Tally, i: int, quorum: int) -> None:
        """Queue ``item`` again after a random pause, or fail it when out of time or attempts."""
        if tally.refusals[i] > 0:
            error: HsmfleetError = Contention(
                "a higher ballot holds the record", key=item.key, attempts=item.attempts + 1
            )
        else:
            error = QuorumUnavailable(
                "too few members answered; nothing was written",
                key=item.key,
                answered=tally.answered,
                quorum=quorum,
            )
        pause = self.rng.uniform(0, min(0.05, 0.002 * 2 ** (item.attempts + 1)))
        self._again(item, error, pause)

    def _again(self, item: _Pending, error: HsmfleetError, pause: float = 0.0) -> None:
        """Queue ``item`` for another round after ``pause`` seconds, one attempt more; fail it
        with ``error`` once out of attempts or time."""
        item.attempts += 1
        loop = asyncio.get_running_loop()
        if item.attempts >= self.attempts or loop.time() + pause >= item.deadline:
            self._fail(item, error)
            return
        item.not_before = loop.time() + pause
        self._pending.append(item)
        self._wake.set()


def _identity(value: bytes | None, _proof: CommitProof | None) -> tuple[bytes | None, None]:
    return value, None


@dataclass(frozen=True)
class _Current:
    """A record's current value as a round found it: with the proof that it committed (held
    from this proposer's own commit), or with the justification an acceptor took it with (from
    a promise)."""

    value: bytes | None
    proof: CommitProof | None
    justification: bytes | None
    accepted: Ballot = NO_BALLOT


def _propose(index: int, item: _Pending, current: _Current) -> _Proposal:
    """What to have accepted for ``item`` given its record's ``current`` value."""
    proven = current.proof is not None or current.accepted == NO_BALLOT
    if vetted(item.key) and not proven:
        return _Proposal(index, current.value, current.justification, proving=True)
    try:
        value, witness = item.step(current.value, current.proof)
        refusal = None
    except Exception as exc:  # the step refused: the value seen is written back
        value, witness, refusal = current.value, None, exc
    if not vetted(item.key):
        return _Proposal(index, value, None, refusal)
    justification = justify(current.value, current.proof, witness)
    return _Proposal(index, value, justification.encode(), refusal)


def _announced(
    fleet: str, key: str, ballot: Ballot, value: bytes | None, justification: bytes | None
) -> CommitProof | None:
    """The proof of ``value``'s commit under ``ballot`` when the member that reported it kept
    it from a commit notice (its justification: the value itself, with the quorum's votes, under
    the ballot it was accepted with); None otherwise. Not verified here."""
    if justification is None or ballot == NO_BALLOT:
        return None
    just = Justification.decode(justification)
    if just.witness is not None or Ballot(just.ballot, just.by) != ballot or just.pred != value:
        return None
    return pred_proof(fleet, key, just)


async def _settled(decided: asyncio.Event, timeout: float) -> bool:
    """True once ``decided`` is set, False if ``timeout`` seconds pass first."""
    try:
        await asyncio.wait_for(decided.wait(), max(timeout, 0.0))
    except TimeoutError:
        return False
    return True


def _latest(
    tally: Tally, i: int, key: str, judge: Judge | None, membership: Membership
) -> _Current:
    """The value with the highest accepted ballot among the promises granted for record ``i``,
    with the justification it was accepted with. Of a vetted record: the highest one proven
    committed by a commit notice's votes (preferred among reports of one ballot; no check by
    ``judge`` needed) or that ``judge`` finds an honest member can have accepted."""
    reports = []
    for vote, _ in tally.granting(i):
        ballot = Ballot(vote.accepteds[i], vote.accepted_bys[i])
        value, justification = vote.values[i], vote.justifications[i]
        proof = None
        if vetted(key):
            proof = _announced(membership.fleet, key, ballot, value, justification)
        reports.append((ballot, proof is not None, value, justification, proof))
    reports.sort(key=lambda report: report[:2], reverse=True)
    for ballot, _, value, justification, proof in reports:
        if ballot == NO_BALLOT:
            break
        if proof is not None:
            try:
                verify_proof(proof, membership, value)
                return _Current(value, proof, justification, ballot)
            except BadProof:
                pass  # of another configuration, or not a proof: judged like any report
        if judge is None or not vetted(key) or judge(key, value, justification):
            return _Current(value, None, justification, ballot)
    return _Current(None, None, None, NO_BALLOT)
