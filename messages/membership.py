"""Replication configurations, and the steps of a safe membership change.

A configuration names the fleet's members and their vote keys, the prepare and accept sets and
the quorum each phase needs. Every prepare quorum must meet every accept quorum (flexible
quorums, CASPaxos 2.3). Membership changes follow CASPaxos 2.3 ("Cluster membership change"):

- 2F+1 -> 2F+2: widen the accept set and quorum to F+2; copy the latest values of a majority
  into the new member (the paper's optimisation of the identity rescan); then widen the prepare
  set and quorum to F+2;
- 2F+2 -> 2F+3: add the member to both sets, quorums stay F+2 (as if it had been down);
- shrinking runs the same steps in reverse.

A member joining with an empty store takes no part in votes until it has copied the latest
values from a majority, so every committed value is then held by a quorum of the new set.

Every step is applied by every member (each member proposes) before the next one starts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from messages.quorum import MEMBER_ROLE, BadConfig, Config, MemberKey
from messages.signing import Signer, TrustedKey, TrustStore


@dataclass(frozen=True)
class Membership:
    """One replication configuration of a fleet, checked on construction."""

    fleet: str
    epoch: int
    keys: Mapping[str, MemberKey]
    prepare_set: frozenset[str]
    accept_set: frozenset[str]
    prepare_quorum: int
    accept_quorum: int

    def __post_init__(self) -> None:
        members = set(self.keys)
        for name, chosen, quorum in (
            ("prepare", self.prepare_set, self.prepare_quorum),
            ("accept", self.accept_set, self.accept_quorum),
        ):
            if not chosen <= members:
                raise BadConfig(f"{name} set names non-members", extra=sorted(chosen - members))
            if not 1 <= quorum <= len(chosen):
                raise BadConfig(f"{name} quorum does not fit its set", quorum=quorum)
        if not quorums_intersect(
            self.prepare_set, self.prepare_quorum, self.accept_set, self.accept_quorum
        ):
            raise BadConfig("a prepare quorum could miss an accept quorum", epoch=self.epoch)
        if self.epoch < 1:
            raise BadConfig("epoch must be at least 1", epoch=self.epoch)

    @classmethod
    def majority(
        cls, fleet: str, members: Mapping[str, Signer | MemberKey], epoch: int = 1
    ) -> Membership:
        """All ``members`` in both sets with majority quorums."""
        keys = {m: _member_key(m, k) for m, k in members.items()}
        quorum = len(keys) // 2 + 1
        everyone = frozenset(keys)
        return cls(fleet, epoch, keys, everyone, everyone, quorum, quorum)

    @classmethod
    def from_config(cls, config: Config) -> Membership:
        keys = {k.member: k for k in config.members}
        if len(keys) != len(config.members):
            raise BadConfig("a member is listed twice", epoch=config.epoch)
        return cls(
            config.fleet,
            config.epoch,
            keys,
            frozenset(config.prepare_set),
            frozenset(config.accept_set),
            config.prepare_quorum,
            config.accept_quorum,
        )

    def to_config(self) -> Config:
        return Config(
            fleet=self.fleet,
            epoch=self.epoch,
            members=tuple(self.keys[m] for m in sorted(self.keys)),
            prepare_set=tuple(sorted(self.prepare_set)),
            accept_set=tuple(sorted(self.accept_set)),
            prepare_quorum=self.prepare_quorum,
            accept_quorum=self.accept_quorum,
        )

    @property
    def voters(self) -> frozenset[str]:
        return self.prepare_set | self.accept_set

    @property
    def majority_size(self) -> int:
        """How many members a catch-up copies from: a majority of the prepare set."""
        return len(self.prepare_set) // 2 + 1

    def trust(self) -> TrustStore:
        """A trust store holding each member's vote key for the member role."""
        return TrustStore(
            [
                TrustedKey(m, k.alg, k.public_key, frozenset({MEMBER_ROLE}))
                for m, k in self.keys.items()
            ]
        )

    def next(self, **changes: object) -> Membership:
        """The configuration one epoch later with ``changes`` applied."""
        values = {
            "fleet": self.fleet,
            "epoch": self.epoch + 1,
            "keys": self.keys,
            "prepare_set": self.prepare_set,
            "accept_set": self.accept_set,
            "prepare_quorum": self.prepare_quorum,
            "accept_quorum": self.accept_quorum,
        }
        values.update(changes)
        return Membership(**values)  # type: ignore[arg-type]


def _member_key(member: str, key: Signer | MemberKey) -> MemberKey:
    if isinstance(key, MemberKey):
        return key
    return MemberKey(member=member, alg=key.alg, public_key=key.public_key)


def quorums_intersect(
    prepare_set: frozenset[str], prepare_quorum: int, accept_set: frozenset[str], accept_quorum: int
) -> bool:
    """True when every ``prepare_quorum`` members of ``prepare_set`` include at least one of
    every ``accept_quorum`` members of ``accept_set``."""
    shared = len(prepare_set & accept_set)
    prepare_inside = prepare_quorum - min(prepare_quorum, len(prepare_set - accept_set))
    accept_inside = accept_quorum - min(accept_quorum, len(accept_set - prepare_set))
    return prepare_inside + accept_inside > shared


@dataclass(frozen=True)
class Step:
    """One step of a membership change: apply ``membership`` everywhere, then, when
    ``catch_up`` names a member, have it copy the latest values of a majority."""

    membership: Membership
    catch_up: str | None = None


def plan_join(current: Membership, member: str, key: Signer | MemberKey) -> list[Step]:
    """The CASPaxos 2.3 steps that add ``member`` to a fleet whose sets are equal."""
    _require_symmetric(current)
    if member in current.keys:
        raise BadConfig("already a member", member=member)
    keys = {**current.keys, member: _member_key(member, key)}
    grown = current.voters | {member}
    if len(current.voters) % 2 == 1:
        quorum = current.prepare_quorum + 1
        wide_accept = current.next(keys=keys, accept_set=grown, accept_quorum=quorum)
        both = wide_accept.next(prepare_set=grown, prepare_quorum=quorum)
        return [Step(wide_accept, catch_up=member), Step(both)]
    added = current.next(keys=keys, prepare_set=grown, accept_set=grown)
    return [Step(added, catch_up=member)]


def plan_leave(current: Membership, member: str) -> list[Step]:
    """The CASPaxos 2.3 steps that remove ``member``: the join steps in reverse.

    From an odd size the member is treated as down for good (quorums stay); from an even size
    the prepare quorum shrinks first, then the accept quorum. Every value committed before is
    then held by a quorum of the remaining members, so no copy is needed; only growing the fleet
    with an empty member needs one.
    """
    _require_symmetric(current)
    if member not in current.voters:
        raise BadConfig("not a member", member=member)
    if len(current.voters) < 2:
        raise BadConfig("the last member cannot leave", member=member)
    rest = current.voters - {member}
    keys = {m: k for m, k in current.keys.items() if m != member}
    if len(current.voters) % 2 == 1:
        return [Step(current.next(keys=keys, prepare_set=rest, accept_set=rest))]
    quorum = current.prepare_quorum - 1
    narrow_prepare = current.next(prepare_set=rest, prepare_quorum=quorum)
    both = narrow_prepare.next(keys=keys, accept_set=rest, accept_quorum=quorum)
    return [Step(narrow_prepare), Step(both)]


def _require_symmetric(current: Membership) -> None:
    if current.prepare_set != current.accept_set or current.prepare_quorum != (
        current.accept_quorum
    ):
        raise BadConfig("finish the running membership change first", epoch=current.epoch)
