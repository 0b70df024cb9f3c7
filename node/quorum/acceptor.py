"""The acceptor on NATS: durable, signed votes, one transaction per batch of requests.

Every member subscribes to ``fleet.q.<fleet>.prepare`` and ``.accept``. Requests pass the gate
(signed by a member), queue up, and a single worker takes everything queued at once: it applies
the CASPaxos rules (:mod:`node.quorum.rules`) in arrival order, saves the changed slots in one
fsynced transaction, and only then signs and sends each answer. While the disk is busy the next
requests gather (in the socket), so fsyncs are shared by all the requests that arrived meanwhile.

The transaction runs on the event loop's thread, blocking it for the fsync: a database thread
would make every socket call wait for the interpreter lock that thread holds (milliseconds),
which costs more than the fsync itself.

An acceptance that grants a vetted record (:func:`messages.quorum.vetted`) is signed by the
member's HSM, which first checks each such value against its justification (see
``node/vault/applet.py``); the records it refuses are refused in the vote (with the HSM's
reason, counted by proposer) and their slots stay as they were. Without an HSM to vote
(``vote``), vetted records are refused.

A proposer announces the vetted records that committed (``.committed``, unanswered); a member
keeps the quorum's votes as the committed value's justification, and takes a value it missed
(see :class:`messages.quorum.Committed`); the proof is checked here against the configuration,
and the slot saved with the next batch.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from messages import subjects
from messages.commit_proof import CommitProof, justify, verify_proof
from messages.envelope import Envelope, Signature
from messages.errors import MessageError
from messages.membership import Membership
from messages.quorum import (
    ACCEPT,
    ADDRESSED,
    COMMITTED,
    MEMBER_ROLE,
    NO_APPLET,
    PREPARE,
    Accept,
    Accepted,
    BadProof,
    Ballot,
    Committed,
    EpochBehind,
    Prepare,
    Promise,
    QuorumError,
    Refusal,
    Snapshot,
    SnapshotRequest,
    Vetting,
    VettingRefusal,
    value_digest,
    vetted,
)
from messages.replay import ReplayGuard
from messages.schema import Body
from node.quorum import metrics, rules
from node.quorum.rules import Slot
from node.quorum.store import SlotStore
from transport.bus import headers_for
from transport.gate import Gate, Received
from transport.outbox import Outbox

log = structlog.get_logger("hsmfleet.quorum.acceptor")

MAX_SNAPSHOT_PAGE = 1000
# Commits between checkpoints of the store's write-ahead log (run in a thread, see store).
CHECKPOINT_EVERY = 200
# Requests are remembered (against replays) and accepted (against staleness) for a minute.
REPLAY_MS = 60_000

# Gets the signed vote as an envelope, as a body and as the wire bytes (encoded once).
Answer = Callable[[Envelope, Body, bytes], Awaitable[None]]
# Has the member's HSM check the vetted records an unsigned acceptance grants and sign it, or
# name the records it refuses.
Vote = Callable[[Envelope, tuple[Vetting, ...]], Signature | tuple[VettingRefusal, ...]]


@dataclass(frozen=True)
class _Request:
    received: Received
    answer: Answer | None  # None: a commit notice, unanswered


class Acceptor:
    """One member's acceptor: answers prepares and accepts once its answer is on disk.

    ``voting`` is False until the member has caught up; meanwhile requests are dropped (and
    counted) and only snapshots are served. Requests of this member's own proposer come in
    through :meth:`submit`, not over NATS: they need no gate, and their answers no network.
    """

    def __init__(
        self,
        member: str,
        store: SlotStore,
        outbox: Outbox,
        membership: Callable[[], Membership],
        *,
        vote: Vote | None = None,
        max_batch: int = 512,
    ) -> None:
        self.member = member
        self.store = store
        self.outbox = outbox
        self.membership = membership
        self.vote = vote
        self.max_batch = max_batch
        self._unsigned = Outbox(member, ids=outbox.ids)
        self.voting = False
        self.rejects: Counter[str] = Counter()
        self._queue: asyncio.Queue[_Request] = asyncio.Queue()
        self._gate: Gate | None = None
        self._trust_epoch = 0
        self._subs: list[Subscription] = []
        self._worker: asyncio.Task[None] | None = None
        self._checkpoint: asyncio.Future[None] | None = None
        self._checkpointed_at = 0
        self._nc: NATS | None = None
        self._batch_size = metrics.BATCH_SIZE.labels(member)

    def gate(self) -> Gate:
        """The gate for requests, rebuilt when the configuration's members change."""
        current = self.membership()
        if self._gate is None or self._trust_epoch != current.epoch:
            replay = self._gate.replay if self._gate is not None else ReplayGuard(REPLAY_MS)
            self._gate = Gate(current.trust(), replay=replay)
            self._trust_epoch = current.epoch
        return self._gate

    async def start(self, nc: NATS) -> None:
        """Subscribe to the prepare and accept subjects and start the worker."""
        self._nc = nc
        fleet = self.membership().fleet
        for phase in (PREPARE, ACCEPT):
            self._subs.append(await nc.subscribe(subjects.quorum(fleet, phase), cb=self._on_msg))
        self._subs.append(
            await nc.subscribe(subjects.quorum(fleet, COMMITTED), cb=self._on_committed)
        )
        self._worker = asyncio.create_task(self._work(), name=f"acceptor-{self.member}")

    async def stop(self) -> None:
        for sub in self._subs:
            await sub.unsubscribe()
        self._subs.clear()
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
            self._worker = None
        if self._checkpoint is not None:  # the thread cannot be cancelled: let it finish
            await asyncio.gather(self._checkpoint, return_exceptions=True)

    def _refuse(self, kind: str) -> None:
        self.rejects[kind] += 1
        metrics.REQUESTS_REJECTED.labels(self.member, kind).inc()

    async def _on_msg(self, msg: Msg) -> None:
        addressed = msg.headers.get(ADDRESSED) if msg.headers else None
        if addressed is not None and self.member not in addressed.split(","):
            return  # the proposer asked others first (see Proposer._phase)
        if not msg.reply:
            self._refuse("no_reply_subject")
            return
        try:
            received = self.gate().admit(msg.data, MEMBER_ROLE)
        except MessageError as exc:
            self._refuse(exc.kind)
            return
        if received.envelope.source == self.member:
            return  # this member's own proposer hands its requests in through submit()
        phase = msg.subject.rsplit(".", 1)[1]
        expected = {PREPARE: Prepare, ACCEPT: Accept}[phase]
        if not isinstance(received.body, expected):
            self._refuse("wrong_request")
            return
        reply = msg.reply

        async def answer(env: Envelope, _vote: Body, data: bytes) -> None:
            await self._nc.publish(reply, data, headers=headers_for(env))

        self.submit(received, answer)

    async def _on_committed(self, msg: Msg) -> None:
        try:
            received = self.gate().admit(msg.data, MEMBER_ROLE)
        except MessageError as exc:
            self._refuse(exc.kind)
            return
        body = received.body
        if not isinstance(body, Committed) or body.proposer != received.envelope.source:
            self._refuse("wrong_request")
        elif body.proposer != self.member:  # the own proposer hands its notices in
            self.submit(received, None)

    def submit(self, received: Received, answer: Answer | None) -> None:
        """Queue a request; ``answer`` gets the signed vote (and its body) once it is on disk
        (a commit notice gets none).

        A request of an older configuration than this member's is refused: its proposer has
        missed a membership change, and its quorums may no longer meet the current ones.
        """
        current = self.membership()
        body = received.body
        members = current.prepare_set if isinstance(body, Prepare) else current.accept_set
        if body.fleet != current.fleet:
            self._refuse("wrong_request")
        elif body.epoch < current.epoch:
            self._refuse("stale_epoch")
        elif self.member not in members:
            self._refuse("not_in_set")
        elif not self.voting:
            self._refuse("not_voting")
        else:
            self._queue.put_nowait(_Request(received, answer))

    async def _work(self) -> None:
        while True:
            batch = [await self._queue.get()]
            records = _records(batch[0])
            while not self._queue.empty() and records < self.max_batch:
                batch.append(self._queue.get_nowait())
                records += _records(batch[-1])
            try:
                answers = self._decide(batch)
            except Exception:
                log.exception("acceptor could not persist a batch; answering nothing")
                continue
            self._batch_size.observe(records)
            for request, answer in zip(batch, answers, strict=True):
                if request.answer is not None and answer is not None:
                    env, vote = answer
                    await request.answer(env, vote, env.encode())
            self._maybe_checkpoint()

    def _maybe_checkpoint(self) -> None:
        if self.store.commits - self._checkpointed_at < CHECKPOINT_EVERY:
            return
        if self._checkpoint is not None and not self._checkpoint.done():
            return
        self._checkpointed_at = self.store.commits
        self._checkpoint = asyncio.ensure_future(asyncio.to_thread(self.store.checkpoint))
        self._checkpoint.add_done_callback(_log_failure)

    def _decide(self, batch: list[_Request]) -> list[tuple[Envelope, Body] | None]:
        """Apply the rules to every request in order, sign the votes and save the result (one
        fsync); the votes go out only after this returns."""
        keys = {k for r in batch for k in r.received.body.keys}
        slots = self.store.load(keys)
        changed: dict[str, Slot] = {}
        answers: list[tuple[Envelope, Body] | None] = []
        for request in batch:
            body = request.received.body
            envelope = request.received.envelope
            if isinstance(body, Committed):
                self._learn(body, slots, changed)
                answers.append(None)
            elif isinstance(body, Prepare):
                vote = _promise(body, envelope.source, slots, changed)
                answers.append((self.outbox.envelope(vote, causation=envelope.id), vote))
            else:
                answers.append(self._acceptance(body, envelope, slots, changed))
        self.store.save(changed)
        return answers

    def _acceptance(
        self, body: Accept, request: Envelope, slots: dict[str, Slot], changed: dict[str, Slot]
    ) -> tuple[Envelope, Accepted]:
        """This member's signed answer to ``body``: the accept rule for every record, then the
        HSM's check of the vetted ones it would grant (those it refuses are refused)."""
        proposer = request.source
        granted: dict[int, Slot] = {}
        refusals: dict[int, Refusal] = {}
        columns = zip(
            body.keys, body.ballots, body.next_ballots, body.values, body.justifications,
            strict=True,
        )  # fmt: skip
        for i, (key, n, following, value, justification) in enumerate(columns):
            slot = slots[key]
            then = Ballot(following, proposer) if following > n else None
            new = rules.accept_then_promise(slot, Ballot(n, proposer), value, then, justification)
            if new is None:
                refusals[i] = _refusal(i, slot)
            else:
                granted[i] = new
        while True:
            vote = _accepted_vote(body, proposer, granted, refusals)
            vettings = tuple(
                _vetting(i, body, slots[body.keys[i]]) for i in granted if vetted(body.keys[i])
            )
            verdict: Signature | tuple[VettingRefusal, ...]
            if self.vote is None:
                if not vettings:
                    env = self.outbox.envelope(vote, causation=request.id)
                    break
                verdict = tuple(
                    VettingRefusal(index=v.index, kind=NO_APPLET, reason="no HSM applet here")
                    for v in vettings
                )
            else:
                env = self._unsigned.envelope(vote, causation=request.id)
                verdict = self.vote(env, vettings)
                if isinstance(verdict, Signature):
                    env = env.with_signature(verdict)
                    break
            if not any(refused.index in granted for refused in verdict):
                raise QuorumError("the HSM's refusals name no record it was asked to grant")
            for refused in verdict:
                if granted.pop(refused.index, None) is not None:
                    key = body.keys[refused.index]
                    refusals[refused.index] = _refusal(refused.index, slots[key], refused.kind)
                    metrics.VALUES_REFUSED.labels(self.member, proposer, refused.kind).inc()
                    log.warning(
                        "a proposed value refused",
                        proposer=proposer,
                        key=key,
                        kind=refused.kind,
                        reason=refused.reason,
                    )
        for i, slot in granted.items():
            slots[body.keys[i]] = changed[body.keys[i]] = slot
        return env, vote

    def _learn(self, body: Committed, slots: dict[str, Slot], changed: dict[str, Slot]) -> None:
        """Keep the proof of each committed value as its justification; a value this member
        missed is taken as a late accept would be (:func:`rules.adopt`)."""
        membership = self.membership()
        for key, n, value in zip(body.keys, body.ballots, body.values, strict=True):
            slot = slots[key]
            ballot = Ballot(n, body.proposer)
            if not vetted(key) or slot.accepted > ballot:
                continue  # overtaken already
            proof = CommitProof(body.fleet, key, ballot, value_digest(value), body.votes)
            try:
                verify_proof(proof, membership, value)
            except BadProof as exc:
                self._refuse(exc.kind)
                log.warning(
                    "a commit notice refused", proposer=body.proposer, kind=exc.kind, key=key
                )
                return
            proven = justify(value, proof)
            if slot.accepted == ballot:
                if slot.value != value:
                    self._refuse("conflicting_commit")  # two values under one ballot
                    continue
                new: Slot | None = replace(slot, justification=proven.encode())
            else:
                new = rules.adopt(slot, ballot, value, proven.encode())
            if new is not None:
                slots[key] = changed[key] = new

    async def snapshot(self, received: Received) -> Snapshot:
        """A page of this member's accepted records, for a member catching up."""
        request = received.body
        if not isinstance(request, SnapshotRequest):
            raise MessageError("not a snapshot request", type=received.envelope.type)
        epoch = self.membership().epoch
        if request.epoch > epoch:
            raise EpochBehind("this member runs an older configuration", epoch=epoch)
        limit = max(1, min(request.limit, MAX_SNAPSHOT_PAGE))
        page = self.store.page(request.after, limit)
        return Snapshot(
            fleet=request.fleet,
            keys=tuple(k for k, _ in page),
            accepteds=tuple(s.accepted.n for _, s in page),
            accepted_bys=tuple(s.accepted.by for _, s in page),
            values=tuple(s.value for _, s in page),
            justifications=tuple(s.justification for _, s in page),
            more=len(page) == limit,
        )

    def adopt(self, copies: dict[str, tuple[Ballot, bytes | None, bytes | None]]) -> int:
        """Take copied values (with their justifications) under the accept rule
        (:func:`rules.adopt`), not vetted; returns how many."""
        slots = self.store.load(copies)
        changed = {}
        for key, (ballot, value, justification) in copies.items():
            new = rules.adopt(slots[key], ballot, value, justification)
            if new is not None:
                changed[key] = new
        self.store.save(changed)
        return len(changed)


def _log_failure(done: asyncio.Future[None]) -> None:
    if not done.cancelled() and done.exception() is not None:
        log.error("checkpoint failed", error=repr(done.exception()))


def _records(request: _Request) -> int:
    return len(request.received.body.keys)


def _refusal(index: int, slot: Slot, kind: str = "") -> Refusal:
    return Refusal(
        index=index,
        seen=slot.seen.n,
        seen_by=slot.seen.by,
        accepted=slot.accepted.n,
        accepted_by=slot.accepted.by,
        kind=kind,
    )


def _promise(body: Prepare, proposer: str, slots: dict[str, Slot], changed: dict) -> Promise:
    accepteds, accepted_bys, values, justifications, refusals = [], [], [], [], []
    for i, (key, n) in enumerate(zip(body.keys, body.ballots, strict=True)):
        slot = slots[key]
        new = rules.prepare(slot, Ballot(n, proposer))
        if new is None:
            refusals.append(_refusal(i, slot))
            accepteds.append(0)
            accepted_bys.append("")
            values.append(None)
            justifications.append(None)
            continue
        slots[key] = changed[key] = new
        accepteds.append(slot.accepted.n)
        accepted_bys.append(slot.accepted.by)
        values.append(slot.value)
        justifications.append(slot.justification)
    return Promise(
        fleet=body.fleet,
        epoch=body.epoch,
        proposer=proposer,
        keys=body.keys,
        ballots=body.ballots,
        accepteds=tuple(accepteds),
        accepted_bys=tuple(accepted_bys),
        values=tuple(values),
        justifications=tuple(justifications),
        refusals=tuple(refusals),
    )


def _vetting(index: int, body: Accept, held: Slot) -> Vetting:
    return Vetting(
        index=index,
        value=body.values[index],
        justification=body.justifications[index],
        accepted=held.accepted.n,
        accepted_by=held.accepted.by,
        held=held.value,
        vetted=held.vetted,
    )


def _accepted_vote(
    body: Accept, proposer: str, granted: dict[int, Slot], refusals: dict[int, Refusal]
) -> Accepted:
    return Accepted(
        fleet=body.fleet,
        epoch=body.epoch,
        proposer=proposer,
        keys=body.keys,
        ballots=body.ballots,
        digests=tuple(
            value_digest(value) if i in granted else b"" for i, value in enumerate(body.values)
        ),
        refusals=tuple(refusals[i] for i in sorted(refusals)),
    )
