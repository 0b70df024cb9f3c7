"""Quorum replication messages (subjects ``fleet.q.<fleet_id>.<phase>``).

The protocol is CASPaxos (D. Rystsov, "CASPaxos: Replicated State Machines without logs",
2018, arXiv:1802.07000): one single-decree register per record, changed by a prepare round and an
accept round, each needing a quorum of the fleet's members. Every vote (promise, accepted) is an
envelope signed by the member that casts it, so nobody can assemble a majority they did not get.

Bodies are batched (group commit): one message carries many records, in parallel columns of
equal length: ``keys[i]`` goes with ``ballots[i]``, ``values[i]`` and so on. A ballot is the pair
``(n, by)``: a counter and the member id of the proposer, compared counter first. ``n == 0``
means "none".

On the wire each column is one base64 string of packed entries, not a JSON array: every JSON
element costs each party an encoding, a canonical-form check and a schema check, three times per
message, so arrays of hundreds of entries dominated the cost of a round. Integers are 8 bytes
big-endian (unsigned); strings (UTF-8) and byte strings are each a 4-byte big-endian length and
the bytes, with length ``0xFFFFFFFF`` standing for none where a column allows it. Packing is a
function of the entries and unpacking must consume the string exactly, so each batch has one
encoding and the signature covers it.

Every request names the configuration ``epoch`` its proposer runs under, and every vote repeats
it under the voter's signature: a vote counts, and a commit proof holds, only under the
configuration it was cast in (a quorum of an older configuration is not one of a newer).
Acceptors refuse requests of an epoch older than their own, so a proposer that missed a
membership change cannot commit under the old quorums.

Some records are *vetted* (the vault's, keys starting with :data:`VETTED_PREFIX`): a value is
accepted for one only with a :class:`Justification` (its predecessor, the quorum's signed proof
that the predecessor committed, and the witness the change is made from) that the acceptor's HSM
checks before it signs the acceptance. Accept requests carry a justification per record,
promises and snapshots report the one each accepted value came with.
"""

import dataclasses
import functools
import hashlib
import struct
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

from messages.canonical import b64, canonical, loads_strict, unb64
from messages.errors import HsmfleetError, SchemaViolation
from messages.schema import Body, message

PREPARE = "prepare"
ACCEPT = "accept"
SNAPSHOT = "snapshot"
CONFIG = "config"
COMMITTED = "committed"
PHASES = (PREPARE, ACCEPT, COMMITTED, SNAPSHOT, CONFIG)


class Ballot(NamedTuple):
    """``(n, by)``: a counter and the proposing member's id, compared counter first."""

    n: int
    by: str


NO_BALLOT = Ballot(0, "")

MEMBER_ROLE = "member"
OPERATOR_ROLE = "operator"
VETTED_PREFIX = "vault-"
"""Records whose key starts with this are vetted: see the module docstring."""


def vetted(key: str) -> bool:
    """Whether record ``key`` is vetted (its acceptances checked by each acceptor's HSM)."""
    return key.startswith(VETTED_PREFIX)


# NATS header on a request naming, comma-separated, the members asked to answer it; the others
# drop it before any work. It is not signed: a member that drops a request, or answers one it
# was not asked, is no more than a message lost or delivered, which Paxos tolerates.
ADDRESSED = "Hsmfleet-To"


def value_digest(value: bytes | None) -> bytes:
    """SHA-256 naming a record value in signed votes; the empty value has its own digest."""
    if value is None:
        return hashlib.sha256(b"hsmfleet/v1/quorum/empty").digest()
    return hashlib.sha256(b"hsmfleet/v1/quorum/value\n" + value).digest()


_NONE = 0xFFFFFFFF
_LENGTH = struct.Struct(">I")


def _pack_ints(entries: tuple[int, ...]) -> bytes:
    try:
        return struct.pack(f">{len(entries)}Q", *entries)
    except struct.error as exc:
        raise SchemaViolation(f"a column entry is not an unsigned 64-bit integer: {exc}") from None


def _unpack_ints(data: bytes) -> tuple[int, ...]:
    if len(data) % 8:
        raise SchemaViolation("an integer column is not a whole number of entries")
    return struct.unpack(f">{len(data) // 8}Q", data)


def _pack_blobs(entries: tuple[bytes | str | None, ...]) -> bytes:
    parts = []
    for entry in entries:
        if entry is None:
            parts.append(_LENGTH.pack(_NONE))
            continue
        raw = entry.encode() if type(entry) is str else entry
        if type(raw) is not bytes or len(raw) >= _NONE:
            raise SchemaViolation("a column entry is not a string or bytes")
        parts += (_LENGTH.pack(len(raw)), raw)
    return b"".join(parts)


def _unpack_blobs(data: bytes, text: bool, nullable: bool) -> tuple[Any, ...]:
    out: list[Any] = []
    at, end = 0, len(data)
    while at < end:
        if end - at < 4:
            raise SchemaViolation("a column ends inside an entry's length")
        (size,) = _LENGTH.unpack_from(data, at)
        at += 4
        if size == _NONE:
            if not nullable:
                raise SchemaViolation("a column without empty entries has one")
            out.append(None)
            continue
        if end - at < size:
            raise SchemaViolation("a column ends inside an entry")
        raw = data[at : at + size]
        at += size
        if text:
            try:
                out.append(raw.decode())
            except UnicodeDecodeError:
                raise SchemaViolation("a string column entry is not UTF-8") from None
        else:
            out.append(raw)
    return tuple(out)


Codec = tuple[Callable[[tuple[Any, ...]], bytes], Callable[[bytes], tuple[Any, ...]]]
_CODECS: dict[Any, Codec] = {
    tuple[int, ...]: (_pack_ints, _unpack_ints),
    tuple[str, ...]: (_pack_blobs, lambda data: _unpack_blobs(data, True, False)),
    tuple[bytes, ...]: (_pack_blobs, lambda data: _unpack_blobs(data, False, False)),
    tuple[bytes | None, ...]: (_pack_blobs, lambda data: _unpack_blobs(data, False, True)),
}


Layout = tuple[dict[str, Codec], tuple[tuple[str, Any, bool], ...]]


def _read_layout(cls: type["_Columns"]) -> Layout:
    """The codec of each column of ``cls``, and its other fields (name, type, required)."""
    hints = typing.get_type_hints(cls)
    columns = {name: _CODECS[hints[name]] for name in cls.COLUMNS}
    others = tuple(
        (f.name, hints[f.name], f.default is dataclasses.MISSING)
        for f in dataclasses.fields(cls)
        if f.name != "extra" and f.name not in columns
    )
    return columns, others


# Cached per class (a class object is hashable, which the cache's typing does not see).
_layout = typing.cast(Callable[[type["_Columns"]], Layout], functools.cache(_read_layout))


def _field(kind: Any, raw: Any, where: str) -> Any:
    """A non-column field: a string, integer or boolean, or a list of bodies."""
    if kind in (str, int, bool):
        if type(raw) is not kind:
            raise SchemaViolation(f"{where} must be {kind.__name__}")
        return raw
    (item,) = typing.get_args(kind)[:1]
    if type(raw) is not list:
        raise SchemaViolation(f"{where} must be a list")
    return tuple(item.from_json(v, f"{where}[{i}]") for i, v in enumerate(raw))


class _Columns(Body):
    """A batch body whose ``COLUMNS`` are parallel tuples, one entry per record, each packed
    into one base64 string on the wire (see the module docstring)."""

    COLUMNS: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        lengths = {len(getattr(self, name)) for name in self.COLUMNS}
        if len(lengths) > 1:
            raise SchemaViolation(f"{self.TYPE} columns differ in length", lengths=sorted(lengths))

    def to_json(self) -> dict[str, Any]:
        columns, others = _layout(type(self))
        out = dict(self.extra)
        for name, _, _ in others:
            value = getattr(self, name)
            out[name] = [v.to_json() for v in value] if type(value) is tuple else value
        for name, (pack, _) in columns.items():
            out[name] = b64(pack(getattr(self, name)))
        return out

    @classmethod
    def from_json(cls, raw: Any, path: str = "body") -> Any:
        if type(raw) is not dict:
            raise SchemaViolation(f"{path} must be an object")
        columns, others = _layout(cls)
        values: dict[str, Any] = {}
        for name, (_, unpack) in columns.items():
            text = raw.get(name)
            if type(text) is not str:
                raise SchemaViolation(f"{path}.{name} must be a base64 string")
            try:
                values[name] = unpack(unb64(text))
            except ValueError:
                raise SchemaViolation(f"{path}.{name} is not valid base64") from None
        for name, kind, required in others:
            if name in raw:
                values[name] = _field(kind, raw[name], f"{path}.{name}")
            elif required:
                raise SchemaViolation(f"{path}.{name} is missing")
        extra = {k: v for k, v in raw.items() if k not in values}
        return cls(**values, extra=extra)


@dataclass(frozen=True)
class Refusal(Body):
    """A record an acceptor refused, and why: the highest ballot it saw for the record (so the
    proposer can pass it) and the highest it accepted (which never goes down)."""

    index: int
    seen: int
    seen_by: str
    accepted: int
    accepted_by: str
    kind: str = ""
    """Empty for a ballot conflict; else why the acceptor's HSM refused the value (a vetted
    record whose change does not check out): no higher ballot will make it accept."""


class _Request(_Columns):
    """A batch request: each record at most once (a second entry would be a second ballot)."""

    if typing.TYPE_CHECKING:
        keys: tuple[str, ...]

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(set(self.keys)) != len(self.keys):
            raise SchemaViolation(f"{self.TYPE} names a record twice")


class _Vote(_Columns):
    """A signed answer to a batch: every record is granted except those in ``refusals``."""

    if typing.TYPE_CHECKING:
        keys: tuple[str, ...]
        refusals: tuple[Refusal, ...]

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
    the acceptor accepted last (``accepteds[i] == 0``: none), and ``justifications`` the
    justification that value was accepted with (vetted records; else none); refused records
    carry placeholders and a :class:`Refusal`.
    """

    TYPE = "quorum.promise"
    COLUMNS = ("keys", "ballots", "accepteds", "accepted_bys", "values", "justifications")
    fleet: str
    epoch: int
    proposer: str
    keys: tuple[str, ...]
    ballots: tuple[int, ...]
    accepteds: tuple[int, ...]
    accepted_bys: tuple[str, ...]
    values: tuple[bytes | None, ...]
    justifications: tuple[bytes | None, ...]
    refusals: tuple[Refusal, ...] = ()


@message
@dataclass(frozen=True)
class Accept(_Request):
    """Phase 2a: asks acceptors to accept ``values[i]`` under ballot ``(ballots[i], source)``.

    When ``next_ballots[i]`` is above ``ballots[i]``, an acceptor that accepts also promises
    ``(next_ballots[i], source)``: the next prepare rides on this accept, so the proposer's next
    change of the record needs one round trip (CASPaxos 2.2.1). 0 asks for no promise.
    ``justifications[i]`` is the encoded :class:`Justification` of a vetted record's value
    (none for other records).
    """

    TYPE = "quorum.accept"
    COLUMNS = ("keys", "ballots", "next_ballots", "values", "justifications")
    fleet: str
    epoch: int
    keys: tuple[str, ...]
    ballots: tuple[int, ...]
    next_ballots: tuple[int, ...]
    values: tuple[bytes | None, ...]
    justifications: tuple[bytes | None, ...]


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
class Committed(Body):
    """Phase 3, a proposer's notice to every member that vetted records committed: record
    ``keys[i]`` took ``values[i]`` under ballot ``(ballots[i], proposer)``, and ``votes`` (the
    quorum's signed :class:`Accepted` votes of that round) prove it. A member keeps the proof
    as the value's justification (a :class:`Justification` whose ``pred`` is the value itself,
    with no witness): the value then stays provable once the key epoch its change was checked
    with is destroyed. A member the accept did not reach takes the value too, as a late accept
    (under the accept rule), so it no longer accepts a successor of an older value. Unanswered;
    a lost notice only means the value is proven again by writing it back."""

    TYPE = "quorum.committed"
    fleet: str
    epoch: int
    proposer: str
    keys: tuple[str, ...]
    ballots: tuple[int, ...]
    values: tuple[bytes, ...]
    votes: tuple[bytes, ...]

    def __post_init__(self) -> None:
        if len({len(self.keys), len(self.ballots), len(self.values)}) != 1:
            raise SchemaViolation("a commit notice gives each record a ballot and a value")
        if len(set(self.keys)) != len(self.keys):
            raise SchemaViolation("a commit notice names each record once")


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
    COLUMNS = ("keys", "accepteds", "accepted_bys", "values", "justifications")
    fleet: str
    keys: tuple[str, ...]
    accepteds: tuple[int, ...]
    accepted_bys: tuple[str, ...]
    values: tuple[bytes | None, ...]
    justifications: tuple[bytes | None, ...]
    more: bool


@dataclass(frozen=True)
class Justification(Body):
    """Why a vetted record may take a value: its predecessor ``pred`` (None: the empty record),
    the ballot it committed under with the quorum's signed ``quorum.accepted`` votes that prove
    it (none for the empty record), and the ``witness`` the change is recomputed from (None:
    the value is the predecessor itself, written back)."""

    pred: bytes | None
    ballot: int
    by: str
    votes: tuple[bytes, ...]
    witness: bytes | None = None

    def encode(self) -> bytes:
        return canonical(self.to_json())

    @classmethod
    def decode(cls, data: bytes | None) -> "Justification":
        """Parse an encoded justification; any defect is :class:`SchemaViolation`."""
        if data is None:
            raise SchemaViolation("a vetted record's value needs a justification")
        try:
            return cls.from_json(loads_strict(data))
        except ValueError as exc:
            raise SchemaViolation(f"a justification is not JSON: {exc}") from None


@dataclass(frozen=True)
class Vetting(Body):
    """A vetted record an acceptance is about to grant, as the acceptor shows it to its HSM:
    its index in the vote, the value and justification the proposer sent, and what the
    acceptor holds for it (accepted ballot and value, and whether its own HSM checked that
    value: one copied in a catch-up was not)."""

    index: int
    value: bytes | None
    justification: bytes | None
    accepted: int
    accepted_by: str
    held: bytes | None
    vetted: bool


@dataclass(frozen=True)
class VettingRefusal(Body):
    """A vetted record the acceptor's HSM will not let it accept, and why."""

    index: int
    kind: str
    reason: str


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


class ValueRefused(QuorumError):
    """The members' HSMs refused a vetted record's value (``kind`` says why): it is not a
    valid successor of a committed predecessor, and no higher ballot makes it one."""

    kind = "value_refused"


class PredecessorSuperseded(QuorumError):
    """An acceptor refused a vetted record's value because it accepted a later value than the
    predecessor the value was computed from: the proposer's view is stale (another change
    overtook it), and preparing again finds the later value."""

    kind = "predecessor_superseded"


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


class ProofOfAnotherConfiguration(BadProof):
    """A commit proof's votes were cast under another configuration than the verifier's: they
    prove nothing under this one. A proof of a value still current is renewed by reading the
    record under the current configuration."""

    kind = "proof_of_another_configuration"


NO_APPLET = "no_applet"
"""The refusal of a member with no HSM applet to check vetted records."""
NO_VERDICT = frozenset(
    {
        PredecessorSuperseded.kind,
        ProofOfAnotherConfiguration.kind,
        NO_APPLET,
        "unknown_vault_key",
        "record_key_destroyed",
    }
)
"""HSM refusals that say nothing of the value, only of the refusing member: it accepted a
later value than the value's predecessor, it does not know the configuration a proof was made
in (a newcomer), it has no applet, or it does not hold the key epoch the change was made
through. Other members may accept the value; a proposer counts these like ballot conflicts,
and judges a reported value refused this way as possibly genuine."""


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
