"""The fleet-key artifact: what a client learns about a fleet, once verified.

It names the fleet and its key epoch, lists the fleet's public keys with their roles (a key kept
only for a rotation overlap carries ``legacy_until``), the quorum the fleet replicates with
(members, their failure domains, the commit threshold), the window in which it is valid and,
for a fleet that guards a vault, the vault's policy (guess limit, account authority key,
replacement interval): what every member's HSM enforces, public for clients and auditors. It is
a :class:`~messages.documents.Document`: canonical JSON, format ``hsmfleet/fleet-keys/v1``,
digest SHA-256 of its canonical bytes.

Epochs of one fleet go up by exactly one per artifact, and an epoch is never published twice
(as cloudflare/plexi's auditor enforces); :func:`check_next_epoch` is that rule, pure.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import ClassVar

from messages.documents import Digested, is_name, is_role, require, time_ms
from messages.errors import HsmfleetError
from messages.schema import Body
from messages.vault_policy import VaultPolicy

FORMAT = "hsmfleet/fleet-keys/v1"
KIND = "fleet-keys"
MAX_KEYS = 64
MAX_MEMBERS = 1024


@dataclass(frozen=True)
class FleetKey(Body):
    """One public key of the fleet: its role, algorithm, key bytes and, during a rotation
    overlap, the time until which it is still to be used (``None``: current)."""

    role: str
    alg: str
    public_key: bytes
    legacy_until: str | None

    def __post_init__(self) -> None:
        require(is_role(self.role), "key role must be a lowercase name", role=self.role)
        require(is_role(self.alg), "key algorithm must be a lowercase name", alg=self.alg)
        require(0 < len(self.public_key) <= 4096, "public key must be 1-4096 bytes")
        if self.legacy_until is not None:
            time_ms(self.legacy_until, "legacy_until")

    def usable_at(self, now_ms: int) -> bool:
        """True unless the key is legacy and its overlap window ended at or before ``now_ms``."""
        return self.legacy_until is None or now_ms < time_ms(self.legacy_until, "legacy_until")


@dataclass(frozen=True)
class Member(Body):
    """A quorum member: its node id and its failure domain (data centre)."""

    id: str
    domain: str

    def __post_init__(self) -> None:
        require(is_name(self.id), "member id must be a name", id=self.id)
        require(is_name(self.domain), "failure domain must be a name", domain=self.domain)


@dataclass(frozen=True)
class Quorum(Body):
    """The replication group: members and how many of them a write needs (a majority)."""

    members: tuple[Member, ...]
    threshold: int

    def __post_init__(self) -> None:
        size = len(self.members)
        require(0 < size <= MAX_MEMBERS, "quorum needs 1-1024 members", members=size)
        require(len({m.id for m in self.members}) == size, "quorum members must be distinct")
        require(
            size // 2 < self.threshold <= size,
            "threshold must be a majority of the members",
            threshold=self.threshold,
            members=size,
        )

    @property
    def domains(self) -> Counter[str]:
        """Members per failure domain."""
        return Counter(m.domain for m in self.members)

    def survives_domain_loss(self) -> bool:
        """True when losing every member of any one failure domain still leaves a quorum."""
        return all(len(self.members) - n >= self.threshold for n in self.domains.values())


@dataclass(frozen=True)
class FleetKeyArtifact(Digested):
    """Fleet id, key epoch, keys with roles, quorum parameters and validity window."""

    FORMAT = FORMAT
    KIND = KIND

    fleet: str
    epoch: int
    keys: tuple[FleetKey, ...]
    quorum: Quorum
    not_before: str
    not_after: str
    vault: VaultPolicy | None = None
    format: str = field(default=FORMAT, kw_only=True)

    OPTIONAL: ClassVar[frozenset[str]] = frozenset({"vault"})

    def __post_init__(self) -> None:
        super().__post_init__()
        require(is_name(self.fleet), "fleet id must be a name", fleet=self.fleet)
        require(self.epoch >= 1, "epoch must be at least 1", epoch=self.epoch)
        require(0 < len(self.keys) <= MAX_KEYS, "artifact needs 1-64 keys", keys=len(self.keys))
        require(len({k.public_key for k in self.keys}) == len(self.keys), "keys must be distinct")
        require(any(k.legacy_until is None for k in self.keys), "at least one key must be current")
        require(self.not_before_ms < self.not_after_ms, "not_before must precede not_after")

    @property
    def seq(self) -> int:
        """The artifact's position in its fleet's chain: its epoch."""
        return self.epoch

    @property
    def not_before_ms(self) -> int:
        return time_ms(self.not_before, "not_before")

    @property
    def not_after_ms(self) -> int:
        return time_ms(self.not_after, "not_after")

    def keys_usable_at(self, now_ms: int) -> tuple[FleetKey, ...]:
        """The keys a client may use at ``now_ms``: current ones and legacy ones still in
        their overlap window."""
        return tuple(k for k in self.keys if k.usable_at(now_ms))


class EpochError(HsmfleetError):
    """An artifact's epoch does not follow its fleet's last published epoch."""

    kind = "epoch"


class StaleEpoch(EpochError):
    """The epoch was already published for this fleet, or is lower than the last one."""

    kind = "stale_epoch"


class EpochGap(EpochError):
    """The epoch skips past the next one (last + 1)."""

    kind = "epoch_gap"


def check_next_epoch(last_epoch: int | None, artifact: FleetKeyArtifact) -> None:
    """Refuse ``artifact`` unless its epoch is ``last_epoch + 1``.

    A fleet's first artifact (``last_epoch`` is None) may start at any epoch: a fleet that
    succeeds another continues its predecessor's numbering, so clients never see epochs go down.
    """
    if last_epoch is None:
        return
    if artifact.epoch <= last_epoch:
        raise StaleEpoch(
            "epoch already published", fleet=artifact.fleet, epoch=artifact.epoch, last=last_epoch
        )
    if artifact.epoch != last_epoch + 1:
        raise EpochGap(
            "epoch must be the last plus one",
            fleet=artifact.fleet,
            epoch=artifact.epoch,
            expected=last_epoch + 1,
        )
