"""Stage bundles: the signed, logged evidence of each completed rollout stage.

A stage bundle names its fleet and stage, carries the stage's evidence by digest, its serial in
the fleet's chain and ``prev``, the digest of the fleet's previous bundle (``None`` for the first,
whose serial is 1), and a validity window. The chain of a fleet's bundles is its published
deployment evidence. Format ``hsmfleet/stage-bundle/v1``; see ``messages/SPEC.md``.

:func:`check_successor` is the pure chain rule a cosigner (and an auditor) applies.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from messages.documents import Digested, is_digest, is_name, is_role, require, time_ms
from messages.errors import HsmfleetError
from messages.schema import Body

FORMAT = "hsmfleet/stage-bundle/v1"
KIND = "stage-bundle"

ENROLL = "enroll"
CEREMONY = "ceremony"
QUORUM = "quorum"
PUBLISH = "publish"
ACTIVATE = "activate"
RETIRE = "retire"
ABORT = "abort"
DESTROY = "destroy"
"""A rotation's old key epoch was destroyed on every member after its overlap window."""
DRAIN = "drain"
"""A retiring fleet's members take no new registrations (recoveries go on)."""
STAGES = (ENROLL, CEREMONY, QUORUM, PUBLISH, ACTIVATE, RETIRE, ABORT, DESTROY, DRAIN)
"""Stages this build knows; others are accepted (open world) with no evidence requirement."""

MAX_REFS = 1024


@dataclass(frozen=True)
class NodeRef(Body):
    """A piece of evidence from one node, by digest: an attestation, a ceremony receipt."""

    node: str
    digest: str

    def __post_init__(self) -> None:
        require(is_name(self.node), "node id must be a name", node=self.node)
        require(is_digest(self.digest), "digest must be 64 lowercase hex digits", node=self.node)


@dataclass(frozen=True)
class Evidence(Body):
    """What a stage rests on, by digest; fields a stage does not use are empty or null."""

    attestations: tuple[NodeRef, ...]
    receipts: tuple[NodeRef, ...]
    quorum_proof: str | None
    artifact: str | None

    def __post_init__(self) -> None:
        for what, refs in (("attestations", self.attestations), ("receipts", self.receipts)):
            require(len(refs) <= MAX_REFS, f"too many {what}", count=len(refs))
            require(len({r.node for r in refs}) == len(refs), f"{what} name a node twice")
        for what, value in (("quorum_proof", self.quorum_proof), ("artifact", self.artifact)):
            require(value is None or is_digest(value), f"{what} must be a digest or null")

    @classmethod
    def of(
        cls,
        *,
        attestations: Iterable[NodeRef] = (),
        receipts: Iterable[NodeRef] = (),
        quorum_proof: str | None = None,
        artifact: str | None = None,
    ) -> Evidence:
        """Evidence naming only what is given; the rest empty."""
        return cls(tuple(attestations), tuple(receipts), quorum_proof, artifact)


# What each known stage must carry: enrollment rests on attestations, the ceremony on receipts,
# the quorum on a commit proof, publication on the fleet-key artifact, the destruction of an old
# key epoch, a fleet's draining and its retirement on the members' signed answers.
_REQUIRED_EVIDENCE: dict[str, tuple[str, Callable[[Evidence], bool]]] = {
    DRAIN: ("receipts", lambda e: bool(e.receipts)),
    RETIRE: ("receipts", lambda e: bool(e.receipts)),
    ENROLL: ("attestations", lambda e: bool(e.attestations)),
    CEREMONY: ("receipts", lambda e: bool(e.receipts)),
    DESTROY: ("receipts", lambda e: bool(e.receipts)),
    QUORUM: ("quorum_proof", lambda e: e.quorum_proof is not None),
    PUBLISH: ("artifact", lambda e: e.artifact is not None),
}


@dataclass(frozen=True)
class StageBundle(Digested):
    """One completed stage of one fleet, chained to the fleet's previous bundle."""

    FORMAT = FORMAT
    KIND = KIND

    fleet: str
    stage: str
    serial: int
    prev: str | None
    evidence: Evidence
    not_before: str
    not_after: str
    format: str = field(default=FORMAT, kw_only=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        require(is_name(self.fleet), "fleet id must be a name", fleet=self.fleet)
        require(is_role(self.stage), "stage must be a lowercase name", stage=self.stage)
        require(self.serial >= 1, "serial must be at least 1", serial=self.serial)
        require(
            (self.prev is None) == (self.serial == 1),
            "prev is null exactly for serial 1",
            serial=self.serial,
        )
        require(self.prev is None or is_digest(self.prev), "prev must be a digest or null")
        required = _REQUIRED_EVIDENCE.get(self.stage)
        if required is not None:
            name, present = required
            require(present(self.evidence), f"a {self.stage} bundle needs evidence {name}")
        require(
            time_ms(self.not_before, "not_before") < time_ms(self.not_after, "not_after"),
            "not_before must precede not_after",
        )

    @property
    def seq(self) -> int:
        """The bundle's position in its fleet's chain: its serial."""
        return self.serial

    @property
    def not_after_ms(self) -> int:
        return time_ms(self.not_after, "not_after")


@dataclass(frozen=True)
class ChainHead:
    """The last bundle of a fleet's chain: what its successor must follow."""

    fleet: str
    serial: int
    digest: str

    @classmethod
    def of(cls, bundle: StageBundle) -> ChainHead:
        return cls(bundle.fleet, bundle.serial, bundle.digest)


class ChainError(HsmfleetError):
    """A stage bundle does not follow its fleet's chain."""

    kind = "chain"


class WrongFleet(ChainError):
    """The bundle belongs to another fleet than the chain it was checked against."""

    kind = "wrong_fleet"


class StaleSerial(ChainError):
    """The serial was already used in this chain, or is lower than the last one."""

    kind = "stale_serial"


class SerialGap(ChainError):
    """The serial skips past the next one (last + 1; 1 for a new chain)."""

    kind = "serial_gap"


class WrongPrev(ChainError):
    """``prev`` is not the digest of the chain's last bundle."""

    kind = "wrong_prev"


def check_successor(head: ChainHead | None, bundle: StageBundle) -> ChainHead:
    """Check that ``bundle`` extends the chain ending at ``head`` (None: a new chain) and
    return the new head.

    The serial must be the last plus one (1 for a new chain) and ``prev`` the last bundle's
    digest (null for a new chain). Raises :class:`WrongFleet`, :class:`StaleSerial`,
    :class:`SerialGap` or :class:`WrongPrev`, in that order of precedence.
    """
    if head is None:
        if bundle.serial != 1:
            raise SerialGap(
                "a new chain starts at serial 1", fleet=bundle.fleet, serial=bundle.serial
            )
        return ChainHead.of(bundle)
    if bundle.fleet != head.fleet:
        raise WrongFleet("bundle is for another fleet", fleet=bundle.fleet, chain=head.fleet)
    if bundle.serial <= head.serial:
        raise StaleSerial(
            "serial already used", fleet=bundle.fleet, serial=bundle.serial, last=head.serial
        )
    if bundle.serial != head.serial + 1:
        raise SerialGap(
            "serial must be the last plus one",
            fleet=bundle.fleet,
            serial=bundle.serial,
            expected=head.serial + 1,
        )
    if bundle.prev != head.digest:
        raise WrongPrev(
            "prev is not the last bundle's digest",
            fleet=bundle.fleet,
            serial=bundle.serial,
            expected=head.digest,
        )
    return ChainHead.of(bundle)


def check_chain(bundles: Iterable[StageBundle]) -> ChainHead | None:
    """Check a fleet's whole chain from its first bundle; return its head (None if empty)."""
    head: ChainHead | None = None
    for bundle in bundles:
        head = check_successor(head, bundle)
    return head
