"""Quorum replication messages (DESIGN 5.5, subjects ``fleet.q.<fleet_id>.<phase>``).

The protocol is CASPaxos (D. Rystsov, "CASPaxos: Replicated State Machines without logs",
2018, arXiv:1802.07000): one single-decree register per record, changed by a prepare round and an
accept round, each needing a quorum of the fleet's members. Every vote (promise, accepted) is an
envelope signed by the member that casts it, so nobody can assemble a majority they did not get.

Bodies are batched (group commit): one message carries many records, in parallel columns of
equal length: ``keys[i]`` goes with ``ballots[i]``, ``values[i]`` and so on. A ballot is the pair
``(n, by)``: a counter and the member id of the proposer, compared counter first. ``n == 0``
means "none".

Every request names the configuration ``epoch`` its proposer runs under, and every vote repeats
it under the voter's signature: a vote counts, and a commit proof holds, only under the
configuration it was cast in (a quorum of an older configuration is not one of a newer).
Acceptors refuse requests of an epoch older than their own, so a proposer that missed a
membership change cannot commit under the old quorums.
"""

import hashlib
from dataclasses import dataclass
from typing import ClassVar

from messages.errors import HsmfleetError, SchemaViolation
from messages.schema import Body, message

PREPARE = "prepare"
ACCEPT = "accept"
SNAPSHOT = "snapshot"
CONFIG = "config"
PHASES = (PREPARE, ACCEPT, SNAPSHOT, CONFIG)

MEMBER_ROLE = "member"
OPERATOR_ROLE = "operator"


def value_digest(value: bytes | None) -> bytes:
    """SHA-256 naming a record value in signed votes; the empty value has its own digest."""
    if value is None:
        return hashlib.sha256(b"hsmfleet/v1/quorum/empty").digest()
    return hashlib.sha256(b"hsmfleet/v1/quorum/value\n" + value).digest()


class _Columns(Body):
    """A batch body whose ``COLUMNS`` are parallel tuples, one entry per record."""

    COLUMNS: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        lengths = {len(getattr(self, name)) for name in self.COLUMNS}
        if len(lengths) > 1:
            raise SchemaViolation(f"{self.TYPE} columns differ in length", lengths=sorted(lengths))


@dataclass(frozen=True)
class Refusal(Body):
    """A record an acceptor refused, and why: the highest ballot it saw for the record (so the
    proposer can pass it) and the highest it accepted (which never goes down)."""

    index: int
    seen: int
    seen_by: str
    accepted: int
    accepted_by: str


class _Request(_Columns):
    """A batch request: each record at most once (a second entry would be a second ballot)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(set(self.keys)) != len(self.keys):
            raise SchemaViolation(f"{self.TYPE} names a record twice")


class _Vote(_Columns):
    """A signed answer to a batch: every record is granted except those in ``refusals``."""

    def __post_init__(self) -> None:
        super().__post_init__()
        indexes = [r.index for r in self.refusals]
        if len(set(indexes)) != len(indexes) or not all(0 <= i < len(self.keys) for i in indexes):
            raise SchemaViolation(f"{self.TYPE} refusals name records twice or out of range")

    def refused(self) -> dict[int, Refusal]:
        """The refusals by record index."""
        return {r.index: r for r in self.refusals}


@message
@dataclass(frozen=True)
class Prepare(_Request):
    """Phase 1a: asks acceptors to promise ballot ``(ballots[i], source)`` for ``keys[i]``."""

    TYPE = "quorum.prepare"
    COLUMNS = ("keys", "ballots")
    fleet: str
    epoch: int
    keys: tuple[str, ...]
    ballots: tuple[int, ...]


@message
@dataclass(frozen=True)
class Promise(_Vote):
    """Phase 1b, one acceptor's signed answer to a :class:`Prepare`.

    For each granted record, ``accepteds``/``accepted_bys``/``values`` are the ballot and value
    the acceptor accepted last (``accepteds[i] == 0``: none); refused records carry
    placeholders and a :class:`Refusal`.
    """

    TYPE = "quorum.promise"
    COLUMNS = ("keys", "ballots", "accepteds", "accepted_bys", "values")
    fleet: str
    epoch: int
    proposer: str
    keys: tuple[str, ...]
    ballots: tuple[int, ...]
    accepteds: tuple[int, ...]
    accepted_bys: tuple[str, ...]
    values: tuple[bytes | None, ...]
    refusals: tuple[Refusal, ...] = ()


@message
@dataclass(frozen=True)
class Accept(_Request):
    """Phase 2a: asks acceptors to accept ``values[i]`` under ballot ``(ballots[i], source)``.

    When ``next_ballots[i]`` is above ``ballots[i]``, an acceptor that accepts also promises
    ``(next_ballots[i], source)``: the next prepare rides on this accept, so the proposer's next
    change of the record needs one round trip (CASPaxos 2.2.1). 0 asks for no promise.
    """

    TYPE = "quorum.accept"
    COLUMNS = ("keys", "ballots", "next_ballots", "values")
    fleet: str
    epoch: int
    keys: tuple[str, ...]
    ballots: tuple[int, ...]
    next_ballots: tuple[int, ...]
    values: tuple[bytes | None, ...]


@message
@dataclass(frozen=True)
class Accepted(_Vote):
    """Phase 2b, one acceptor's signed answer to an :class:`Accept`.

    A granted record says: this member durably accepted the value whose :func:`value_digest`
    is ``digests[i]`` for ``keys[i]`` under ballot ``(ballots[i], proposer)`` in a round of
    configuration ``epoch``, and promised the
    request's next ballot if it asked for one. A quorum of such signed entries is the proof that
    a write committed. Refused records have an empty digest and a :class:`Refusal`; refusals
    from acceptors that accepted a higher ballot show that the value can never be chosen.
    """

    TYPE = "quorum.accepted"
    COLUMNS = ("keys", "ballots", "digests")
    fleet: str
    proposer: str
    keys: tuple[str, ...]
    ballots: tuple[int, ...]
    digests: tuple[bytes, ...]
    refusals: tuple[Refusal, ...] = ()
    # After the columns so that votes built by others keep their keywords; 1 is a fleet's first
    # configuration. Always written and signed.
    epoch: int = 1


@message
@dataclass(frozen=True)
class SnapshotRequest(Body):
    """Catch-up: asks ``member`` for its accepted records with keys after ``after``, in order.

    ``member`` answers only once it runs under configuration ``epoch`` or a later one: what it
    accepts from then on comes from proposers that send to the member catching up as well.
    """

    TYPE = "quorum.snapshot"
    fleet: str
    epoch: int
    member: str
    after: str
    limit: int


@message
@dataclass(frozen=True)
class Snapshot(_Columns):
    """One page of a member's accepted records; ``more`` when records after the last remain."""

    TYPE = "quorum.snapshot.page"
    COLUMNS = ("keys", "accepteds", "accepted_bys", "values")
    fleet: str
    keys: tuple[str, ...]
    accepteds: tuple[int, ...]
    accepted_bys: tuple[str, ...]
    values: tuple[bytes | None, ...]
    more: bool


@dataclass(frozen=True)
class MemberKey(Body):
    """A fleet member and the public key its votes are signed with."""

    member: str
    alg: str
    public_key: bytes


@message
@dataclass(frozen=True)
class Config(Body):
    """The replication configuration of a fleet at ``epoch``, signed by the operator.

    Prepare messages go to ``prepare_set`` and need ``prepare_quorum`` promises; accept messages
    go to ``accept_set`` and need ``accept_quorum`` acceptances. Every prepare quorum meets every
    accept quorum (flexible quorums, CASPaxos 2.3); membership changes move through such
    configurations one step at a time.
    """

    TYPE = "quorum.config"
    fleet: str
    epoch: int
    members: tuple[MemberKey, ...]
    prepare_set: tuple[str, ...]
    accept_set: tuple[str, ...]
    prepare_quorum: int
    accept_quorum: int


@message
@dataclass(frozen=True)
class ConfigAck(Body):
    """A member's signed statement that it stored and now uses configuration ``epoch``."""

    TYPE = "quorum.config.ack"
    fleet: str
    epoch: int
    member: str
    ready: bool


class QuorumError(HsmfleetError):
    """Root of the errors of quorum replication."""

    kind = "quorum"


class QuorumUnavailable(QuorumError):
    """Fewer members than a quorum answered before any value was sent: nothing was written."""

    kind = "quorum_unavailable"


class OutcomeUnknown(QuorumError):
    """The value was sent for acceptance but no quorum confirmed it in time: it may or may not
    have committed; a later read decides."""

    kind = "outcome_unknown"


class Contention(QuorumError):
    """Other proposers kept winning the record's ballots until the attempts ran out."""

    kind = "contention"


class BadConfig(QuorumError):
    """A replication configuration is inconsistent, older than the current one, or unsigned."""

    kind = "bad_config"


class EpochBehind(QuorumError):
    """A member asked for a snapshot under a configuration it does not run yet."""

    kind = "epoch_behind"


class CatchUpFailed(QuorumError):
    """A member could not copy the latest values from a majority of the fleet."""

    kind = "catch_up_failed"


class BadProof(QuorumError):
    """A commit proof does not show a quorum of valid, signed acceptances for the value."""

    kind = "bad_proof"


class BadVote(QuorumError):
    """A vote that must not count; the proposer ignores it and counts it by ``kind``."""

    kind = "bad_vote"


class VoteBadSignature(BadVote):
    """The vote's signature does not verify, or the vote cannot be decoded."""

    kind = "vote_bad_signature"


class VoteFromNonMember(BadVote):
    """The vote is signed by a key that is not a current member's, or for another member."""

    kind = "vote_non_member"


class VoteOldBallot(BadVote):
    """The vote answers another round or ballot than the one being counted."""

    kind = "vote_old_ballot"


class VoteWrongValue(BadVote):
    """The vote grants a record with the digest of a value other than the one sent."""

    kind = "vote_wrong_value"


class VoteReplayed(BadVote):
    """The vote was already delivered, or the member already voted in this round."""

    kind = "vote_replayed"
