"""Auditing a cosigner's whole log from its entries (pure; ``hsmfleet audit`` fetches them).

:func:`audit_entries` checks that the entries hash to the signed checkpoint's root (so every
entry is included, at its index, in the tree the log signed), that each entry is a document a
cosigner logs, that no digest appears twice, that each fleet's stage bundles form one chain
(serial + 1, ``prev`` = digest of the previous) and its artifacts' epochs go up by one, that
nothing of a fleet follows its retirement (which names its last epoch), and that every
``publish`` bundle names an artifact of its fleet that the log holds. It then describes, per
fleet, how keys and quorum members changed from epoch to epoch, and lists the key rotations.

:func:`own_keys` walks the log's own key rotations from the key a verifier pinned, so the audit
knows which key signs which statements and checkpoints.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from messages.artifact import EpochError, FleetKeyArtifact, check_next_epoch
from messages.bundle import PUBLISH, ChainError, ChainHead, StageBundle, check_successor
from messages.checkpoint import Checkpoint
from messages.documents import DocumentError
from messages.errors import HsmfleetError
from messages.merkle import Tree
from messages.retirement import FleetRetirement
from messages.rotation import KeyRotation, RotationRefused, SignerKey, check_rotation
from messages.signing import key_id
from messages.statement import LoggedDocument, parse_logged_bytes
from messages.verifier_state import KeyInForce


class AuditError(HsmfleetError):
    """The log failed an audit check."""

    kind = "audit"


class RootMismatch(AuditError):
    """The entries served do not hash to the root the log signed for that size."""

    kind = "root_mismatch"


class BadLogEntry(AuditError):
    """An entry is not a document a cosigner logs."""

    kind = "bad_log_entry"


class DuplicateEntry(AuditError):
    """The same document appears twice in the log."""

    kind = "duplicate_entry"


class BrokenChain(AuditError):
    """A fleet's stage bundles or artifacts do not follow one another."""

    kind = "broken_chain"


class MissingArtifact(AuditError):
    """A ``publish`` bundle names an artifact the log does not hold for its fleet."""

    kind = "missing_artifact"


@dataclass
class FleetRecord:
    """What one fleet logged: its stage bundles and artifacts, with their leaf indexes."""

    fleet: str
    bundles: list[tuple[int, StageBundle]] = field(default_factory=list)
    artifacts: list[tuple[int, FleetKeyArtifact]] = field(default_factory=list)
    retirement: tuple[int, FleetRetirement] | None = None

    def changes(self) -> list[str]:
        """How keys and members changed from each artifact to the next."""
        out: list[str] = []
        previous: FleetKeyArtifact | None = None
        for _, artifact in self.artifacts:
            out += [
                f"epoch {artifact.epoch}: {line}" for line in describe_change(previous, artifact)
            ]
            previous = artifact
        return out


def _keys(artifact: FleetKeyArtifact | None) -> dict[str, tuple[str, str | None]]:
    if artifact is None:
        return {}
    return {
        f"{k.role}/{k.alg}/{key_id(k.alg, k.public_key)}": (k.role, k.legacy_until)
        for k in artifact.keys
    }


def describe_change(before: FleetKeyArtifact | None, after: FleetKeyArtifact) -> list[str]:
    """Keys added, removed or made legacy, members added or removed, threshold changes."""
    lines: list[str] = []
    old, new = _keys(before), _keys(after)
    for name in sorted(new.keys() - old.keys()):
        lines.append(
            f"key added {name}" + (f" (legacy until {new[name][1]})" if new[name][1] else "")
        )
    for name in sorted(old.keys() - new.keys()):
        lines.append(f"key removed {name}")
    for name in sorted(old.keys() & new.keys()):
        if old[name][1] != new[name][1]:
            lines.append(f"key {name} legacy until {new[name][1]}")
    old_members = {(m.id, m.domain) for m in before.quorum.members} if before else set()
    new_members = {(m.id, m.domain) for m in after.quorum.members}
    for member, domain in sorted(new_members - old_members):
        lines.append(f"member added {member} in {domain}")
    for member, domain in sorted(old_members - new_members):
        lines.append(f"member removed {member} from {domain}")
    if before is None or before.quorum.threshold != after.quorum.threshold:
        lines.append(
            f"threshold {after.quorum.threshold} of {len(after.quorum.members)}"
            f" across {len(after.quorum.domains)} failure domains"
        )
    return lines


@dataclass
class LogAudit:
    """A log that passed the audit: its signed head and what each fleet logged."""

    origin: str
    size: int
    fleets: dict[str, FleetRecord]
    rotations: list[tuple[int, KeyRotation]] = field(default_factory=list)


def audit_entries(checkpoint: Checkpoint, entries: Sequence[bytes]) -> LogAudit:
    """Audit the ``entries`` a log served for its signed ``checkpoint`` (see module doc)."""
    if len(entries) != checkpoint.size:
        raise RootMismatch("entry count differs from the checkpoint size", size=len(entries))
    if Tree(entries).root() != checkpoint.root:
        raise RootMismatch("entries do not hash to the signed root", size=checkpoint.size)
    fleets: dict[str, FleetRecord] = {}
    heads: dict[str, ChainHead] = {}
    digests: dict[str, int] = {}
    rotations: list[tuple[int, KeyRotation]] = []
    for index, entry in enumerate(entries):
        try:
            document = parse_logged_bytes(entry)
        except DocumentError as exc:
            raise BadLogEntry(
                f"entry {index} is not a logged document: {exc}", index=index
            ) from exc
        if document.digest in digests:
            raise DuplicateEntry(
                "document logged twice", index=index, first=digests[document.digest]
            )
        digests[document.digest] = index
        if isinstance(document, KeyRotation):
            rotations.append((index, document))
            continue
        record = fleets.setdefault(document.fleet, FleetRecord(document.fleet))
        try:
            _add(record, heads, index, document)
        except (ChainError, EpochError) as exc:
            raise BrokenChain(f"entry {index}: {exc}", index=index, rule=exc.kind) from exc
    for record in fleets.values():
        published = {a.digest for _, a in record.artifacts}
        for index, bundle in record.bundles:
            if bundle.stage == PUBLISH and bundle.evidence.artifact not in published:
                raise MissingArtifact(
                    "publish bundle names an artifact the log lacks",
                    index=index,
                    fleet=record.fleet,
                    artifact=bundle.evidence.artifact,
                )
    return LogAudit(checkpoint.origin, checkpoint.size, fleets, rotations)


def _add(record: FleetRecord, heads: dict[str, ChainHead], index: int, document: object) -> None:
    """Add a fleet's document to its record, by the rules the cosigner applied."""
    if record.retirement is not None:
        raise BrokenChain("a document of a retired fleet", index=index, rule="fleet_retired")
    if isinstance(document, StageBundle):
        heads[document.fleet] = check_successor(heads.get(document.fleet), document)
        record.bundles.append((index, document))
    elif isinstance(document, FleetKeyArtifact):
        last = record.artifacts[-1][1].epoch if record.artifacts else None
        check_next_epoch(last, document)
        record.artifacts.append((index, document))
    else:
        assert isinstance(document, FleetRetirement)
        last = record.artifacts[-1][1].epoch if record.artifacts else None
        if last != document.last_epoch:
            raise BrokenChain(
                "a retirement names another last epoch", index=index, rule="retirement_epoch"
            )
        record.retirement = (index, document)


def own_keys(
    origin: str, pinned: KeyInForce, documents: Sequence[LoggedDocument]
) -> tuple[KeyInForce, ...]:
    """The keys of log ``origin`` from its ``pinned`` one, walked through the rotations of its
    own key among its entries ``documents`` (each from the key in force, the next version, both
    signatures): :class:`BrokenChain` on one that does not follow."""
    keys = [pinned]
    for index, document in enumerate(documents):
        if not isinstance(document, KeyRotation) or document.signer != origin:
            continue
        current = keys[-1]
        if document.version <= current.version:
            continue  # a rotation before the pinned key
        try:
            check_rotation(SignerKey(current.alg, current.public_key), current.version, document)
        except RotationRefused as exc:
            raise BrokenChain(f"entry {index}: {exc}", index=index, rule=exc.kind) from exc
        new = document.new
        keys.append(KeyInForce(new.alg, new.public_key, document.version, index, document.at))
    return tuple(keys)
