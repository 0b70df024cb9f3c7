"""Counting signed votes: which count, which are ignored, and why.

A vote counts only if it passes the gate (a member's key, a good signature, a fresh id), answers
exactly the request being counted (same fleet, configuration epoch, proposer, records and
ballots; ``causation`` is the request's id), comes from a member of the phase's set, and is that
member's first vote in the round; an acceptance must name the digest of the value sent. Anything
else raises a :class:`messages.quorum.BadVote`
subclass naming the defect.
"""

from __future__ import annotations

from messages.envelope import Envelope
from messages.errors import (
    MessageError,
    ReplayedMessage,
    StaleMessage,
    UnknownSigner,
)
from messages.membership import Membership
from messages.quorum import (
    MEMBER_ROLE,
    NO_VERDICT,
    Accept,
    Accepted,
    BadVote,
    Prepare,
    Promise,
    Refusal,
    VoteBadSignature,
    VoteFromNonMember,
    VoteOldBallot,
    VoteReplayed,
    VoteWrongValue,
    value_digest,
)
from transport.gate import Gate

_ANSWERS = {Prepare: Promise, Accept: Accepted}


def vote_error(exc: MessageError) -> BadVote:
    """The vote defect a gate refusal stands for."""
    if isinstance(exc, UnknownSigner):
        return VoteFromNonMember(str(exc))
    if isinstance(exc, ReplayedMessage | StaleMessage):
        return VoteReplayed(str(exc))
    return VoteBadSignature(f"{exc.kind}: {exc}")


class Tally:
    """The votes of one phase of one round: per record, who granted and who refused.

    ``request`` is the envelope the proposer sent (a :class:`Prepare` or :class:`Accept`) to
    the members of its phase in ``membership``. A prepared record is settled as soon as a quorum
    of promises is out of reach. An accepted record is settled by a quorum of acceptances, by
    every voter's answer, or once a quorum is out of reach although some voter accepted: then
    the outcome is unknown whatever the others say, since a later proposer may read the value
    from one that accepted it. Only a record that every member the request went to refused is
    known to hold nothing of the change (:meth:`refused_by_all`).
    """

    def __init__(
        self, gate: Gate, request: Envelope, body: Prepare | Accept, membership: Membership
    ) -> None:
        self.accepting = isinstance(body, Accept)
        self.membership = membership
        self.gate = gate
        self.request = request
        self.body = body
        self.digests: tuple[bytes, ...] = ()
        if self.accepting:
            self.voters, self.quorum = membership.accept_set, membership.accept_quorum
            self.digests = tuple(value_digest(v) for v in body.values)
        else:
            self.voters, self.quorum = membership.prepare_set, membership.prepare_quorum
        self.asked: frozenset[str] = self.voters
        self.votes: dict[str, tuple[Promise | Accepted, bytes]] = {}
        self._refused: dict[str, dict[int, Refusal]] = {}
        self._unanimous: list[tuple[Promise | Accepted, bytes]] | None = None
        size = len(body.keys)
        self.grants = [0] * size
        self.refusals = [0] * size
        self._open = size

    @property
    def decided(self) -> bool:
        """True once every record has a quorum of grants or can no longer get one."""
        return self._open == 0

    def ask(self, members: frozenset[str]) -> None:
        """Note that the request also went to ``members`` (a thrifty proposer asks a few first);
        records that every member asked so far refused are open again."""
        self.asked = self.asked | members
        self._open = sum(1 for i in range(len(self.grants)) if self._is_open(i))

    def _is_open(self, i: int) -> bool:
        if self.grants[i] >= self.quorum:
            return False
        out_of_reach = self.refusals[i] > len(self.voters) - self.quorum
        if self.accepting:
            answered = self.grants[i] + self.refusals[i] == len(self.voters)
            dead = self.refused_by_all(i)
            return not (answered or dead or (out_of_reach and self.grants[i] > 0))
        return not out_of_reach

    def add(self, data: bytes) -> str:
        """Count the vote in ``data`` and return its voter, or raise the :class:`BadVote` that
        says why not."""
        try:
            received = self.gate.admit(data, MEMBER_ROLE)
        except MessageError as exc:
            raise vote_error(exc) from exc
        return self._count(received.envelope, received.body, data)

    def add_own(self, env: Envelope, vote: Promise | Accepted, data: bytes) -> str:
        """Count the vote of the proposer's own acceptor, signed in this process (no gate);
        ``data`` is its wire form."""
        return self._count(env, vote, data)

    def _count(self, env: Envelope, vote: object, data: bytes) -> str:
        voter = env.source
        if voter not in self.voters:
            raise VoteFromNonMember("the signer is not asked in this phase", member=voter)
        if not self.answers(vote, env.causation):
            raise VoteOldBallot("the vote answers another round", member=voter)
        if voter in self.votes:
            raise VoteReplayed("the member already voted in this round", member=voter)
        size = len(vote.keys)
        refused = vote.refused()
        if self.accepting and any(
            vote.digests[i] != self.digests[i] for i in range(size) if i not in refused
        ):
            raise VoteWrongValue("the vote accepts another value", member=voter)
        was_open = [self._is_open(i) for i in range(size)]
        self.votes[voter] = (vote, data)
        self._refused[voter] = refused
        self._unanimous = None
        for i in range(size):
            if i in refused:
                self.refusals[i] += 1
            else:
                self.grants[i] += 1
        self._open -= sum(1 for i, before in enumerate(was_open) if before and not self._is_open(i))
        return voter

    def answers(self, vote: object, causation: str | None) -> bool:
        """True when ``vote`` is the answer to this tally's request."""
        expected = _ANSWERS[type(self.body)]
        return (
            isinstance(vote, expected)
            and causation == self.request.id
            and vote.fleet == self.body.fleet
            and vote.epoch == self.body.epoch
            and vote.proposer == self.request.source
            and vote.keys == self.body.keys
            and vote.ballots == self.body.ballots
        )

    def granted(self, i: int) -> bool:
        return self.grants[i] >= self.quorum

    def refused_any(self) -> bool:
        """True when some voter refused some record."""
        return any(self._refused.values())

    def granting(self, i: int) -> list[tuple[Promise | Accepted, bytes]]:
        """The votes that granted record ``i``."""
        if not self.refused_any():  # the common case: the same for every record
            if self._unanimous is None:
                self._unanimous = list(self.votes.values())
            return self._unanimous
        return [v for m, v in self.votes.items() if i not in self._refused[m]]

    def granted_by(self, i: int) -> frozenset[str]:
        """The members that granted record ``i``."""
        return frozenset(m for m in self.votes if i not in self._refused[m])

    def refusals_of(self, i: int) -> dict[str, Refusal]:
        """The refusals of record ``i``, by member."""
        return {m: refused[i] for m, refused in self._refused.items() if i in refused}

    def refused_by_all(self, i: int) -> bool:
        """True when every member the request went to refused record ``i`` and nobody granted
        it: nobody holds the value (the others never received it)."""
        if self.grants[i] or self.refusals[i] < len(self.asked):
            return False
        return all(m in self._refused and i in self._refused[m] for m in self.asked)

    def refused_as_invalid(self, i: int) -> str:
        """Why the members' HSMs refused record ``i``'s value (the first such refusal's kind)
        when nobody accepted it, else the empty string. A refusal that is no verdict on the
        value (:data:`messages.quorum.NO_VERDICT`) counts like a ballot conflict; a value some
        member accepted is never known refused (a later proposer may find and commit it)."""
        if self.grants[i]:
            return ""
        return next((r.kind for r in self.refusals_of(i).values() if r.kind not in NO_VERDICT), "")

    def highest_seen(self, i: int) -> int:
        """The highest ballot counter any voter reported for record ``i``."""
        if not self.refusals[i]:
            return 0
        return max((r.seen for r in self.refusals_of(i).values()), default=0)

    @property
    def answered(self) -> int:
        return len(self.votes)
