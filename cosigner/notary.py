"""The cosigner's log keeper: check documents, log them, sign statements and checkpoints.

A :class:`Notary` owns the cosigner's :class:`~cosigner.log.AuditLog` (entries are the canonical
bytes of stage bundles and fleet-key artifacts) and its :class:`~cosigner.store.Store`. For each
document it is asked to log it checks, in order:

1. it is a well-formed stage bundle, fleet-key artifact, key rotation or fleet retirement
   (:mod:`messages.documents`);
2. its digest was never logged (:class:`DigestSeen`);
3. a stage bundle extends its fleet's chain in this log: serial is the last plus one, ``prev``
   the last bundle's digest (:func:`messages.bundle.check_successor`); an artifact's epoch is
   its fleet's last plus one (:func:`messages.artifact.check_next_epoch`); neither belongs to a
   retired fleet, and a retirement names the fleet's last logged epoch
   (:func:`messages.retirement.check_retirement`); a key rotation has the signer's key in force
   as old key, the next version, and both signatures (:func:`messages.rotation.check_rotation`;
   the key in force is this log's own, a witnessed log's pin, or the last rotation logged for
   that signer; a signer it knows nothing of starts its chain with its first rotation);
4. a bundle or artifact has not expired (:class:`DocumentExpired`).

Accepted documents of one call are appended in one fsynced batch, recorded with the batch's
time; the notary then signs one checkpoint of the new tree and a
:class:`~messages.statement.Statement` per document, dated with that recorded time. Ed25519 is
deterministic, so what the notary signs is a function of the log and its key: the one fsync per
batch is the log's, and a statement or checkpoint a crash kept from the store is signed again,
the same bytes, when the notary opens. A refused document changes nothing and is counted in
:attr:`Notary.rejects` by its error's kind.

The per-fleet chain heads, retired fleets, signers' keys and the set of logged digests are not
stored separately: they are rebuilt from the log's entries when the notary opens, so they can
never disagree with the log.

The log's own key rotates by a rotation of its own origin (``Cosigner.rotate_key``): statements
from that entry on and checkpoints that include it are signed with the new key, which the notary
must hold (:class:`OwnKeyUnavailable`); what the old key signed is made durable first, because
the old key is destroyed afterwards. :meth:`Notary.refresh` re-signs the latest checkpoint with
a timestamp, the log's own C2SP tlog-cosignature (type 0x04) beside its note signature, so
clients can tell a fresh view from a frozen one even when nothing was logged.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cosigner.log import AuditLog, LogCorrupted
from cosigner.store import Store
from messages.artifact import FleetKeyArtifact, check_next_epoch
from messages.bundle import ChainHead, StageBundle, check_successor
from messages.checkpoint import Checkpoint
from messages.cosignature import CosignatureSigner
from messages.cosigning import Signed
from messages.documents import DocumentError
from messages.errors import HsmfleetError
from messages.ids import format_time
from messages.merkle import IndexOutOfRange
from messages.note import Ed25519NoteSigner, Note
from messages.retirement import FleetRetired, FleetRetirement, check_retirement
from messages.rotation import KeyRotation, SignerKey, check_rotation
from messages.signing import ED25519, Signer
from messages.statement import (
    LoggedDocument,
    Statement,
    parse_logged,
    parse_logged_bytes,
)

SCAN_CHUNK = 1000


class DigestSeen(HsmfleetError):
    """A document with this digest is already in the log: nothing is logged twice."""

    kind = "digest_seen"


class DocumentExpired(HsmfleetError):
    """The document's ``not_after`` has passed: signing it would vouch for nothing."""

    kind = "document_expired"


class UnknownDigest(HsmfleetError):
    """No logged document has this digest."""

    kind = "unknown_digest"


class OwnKeyUnavailable(HsmfleetError):
    """A rotation of this log's own key to a key the cosigner does not hold, or a signature
    needed from a key it no longer holds."""

    kind = "own_key_unavailable"


Known = tuple[SignerKey, int | None]
"""A signer's key in force and its version (None: not known)."""


class _Heads:
    """Per-fleet chain heads and epochs, retired fleets, signers' keys in force, and the logged
    digests, with pending changes kept apart until the batch that made them is durable."""

    def __init__(self, signers: dict[str, Known]) -> None:
        self.chains: dict[str, ChainHead] = {}
        self.epochs: dict[str, int] = {}
        self.retired: set[str] = set()
        self.signers = dict(signers)
        self.digests: dict[str, int] = {}
        self._pending: list[tuple[LoggedDocument, int]] = []
        self._pending_digests: set[str] = set()

    def check(self, document: LoggedDocument) -> None:
        digest = document.digest
        if digest in self.digests or digest in self._pending_digests:
            raise DigestSeen("document already logged", digest=digest)
        if isinstance(document, KeyRotation):
            known = self.signer(document.signer)
            check_rotation(known[0] if known else document.old, known and known[1], document)
            return
        if self._retired(document.fleet):
            raise FleetRetired("the fleet is retired", fleet=document.fleet)
        if isinstance(document, StageBundle):
            check_successor(self._chain(document.fleet), document)
        elif isinstance(document, FleetKeyArtifact):
            check_next_epoch(self._epoch(document.fleet), document)
        else:
            check_retirement(self._epoch(document.fleet), False, document)

    def signer(self, name: str) -> Known | None:
        """The key in force of signer ``name`` and its version, pending rotations included."""
        for document, _ in reversed(self._pending):
            if isinstance(document, KeyRotation) and document.signer == name:
                return document.new, document.version
        return self.signers.get(name)

    def _retired(self, fleet: str) -> bool:
        return fleet in self.retired or any(
            isinstance(d, FleetRetirement) and d.fleet == fleet for d, _ in self._pending
        )

    def _chain(self, fleet: str) -> ChainHead | None:
        for document, _ in reversed(self._pending):
            if isinstance(document, StageBundle) and document.fleet == fleet:
                return ChainHead.of(document)
        return self.chains.get(fleet)

    def _epoch(self, fleet: str) -> int | None:
        for document, _ in reversed(self._pending):
            if isinstance(document, FleetKeyArtifact) and document.fleet == fleet:
                return document.epoch
        return self.epochs.get(fleet)

    def stage(self, document: LoggedDocument, index: int) -> None:
        self._pending.append((document, index))
        self._pending_digests.add(document.digest)

    def commit(self) -> None:
        for document, index in self._pending:
            self.record(document, index)
        self.discard()

    def discard(self) -> None:
        self._pending.clear()
        self._pending_digests.clear()

    def record(self, document: LoggedDocument, index: int) -> None:
        self.digests[document.digest] = index
        if isinstance(document, StageBundle):
            self.chains[document.fleet] = ChainHead.of(document)
        elif isinstance(document, FleetKeyArtifact):
            self.epochs[document.fleet] = document.epoch
        elif isinstance(document, FleetRetirement):
            self.retired.add(document.fleet)
        else:
            self.signers[document.signer] = (document.new, document.version)


class Notary:
    """One cosigner's log and the signatures it makes over it."""

    def __init__(
        self,
        name: str,
        signer: Signer,
        log: AuditLog,
        store: Store,
        spare: Sequence[Signer] = (),
        known: dict[str, Known] | None = None,
    ) -> None:
        self.name = name
        self._keyring = {k.public_key: k for k in (signer, *spare)}
        self._own: list[tuple[int, bytes]] = [(0, signer.public_key)]
        """(first entry, public key) of each of the log's own keys, oldest first."""
        self._log = log
        self._store = store
        self._heads = _Heads(known or {})
        self.rejects: Counter[str] = Counter()
        self.accepted = 0
        self._head = (0, "")  # size and note of the latest checkpoint, replaced as one value
        self._fresh = (0, "")  # the latest checkpoint with a timestamp (refresh), if any
        self._signed = 0  # entries 0 .. _signed - 1 have recorded statements

    @classmethod
    def open(
        cls,
        directory: Path,
        name: str,
        signer: Signer,
        spare: Sequence[Signer] = (),
        known: dict[str, Known] | None = None,
    ) -> Notary:
        """Open (or create) the log and store in ``directory``, rebuild the chain heads and the
        keys in force from the log, and sign again whatever a crash left unrecorded.

        ``signer`` is the log's key as first made (or in force, once rotated), ``spare`` other
        private keys held (a rotation's next key); ``known`` the keys in force of other signers
        (witnessed logs' pins) before any rotation of theirs in this log."""
        directory = Path(directory)
        log = AuditLog.open(directory / "audit.db")
        try:
            store = Store.open(directory / "state.db")
        except HsmfleetError:
            log.close()
            raise
        notary = cls(name, signer, log, store, spare, known)
        try:
            notary._recover()
        except BaseException:
            notary.close()
            raise
        return notary

    def close(self) -> None:
        self._log.close()
        self._store.close()

    @property
    def size(self) -> int:
        return self._log.size

    @property
    def store(self) -> Store:
        """The store this notary records statements and checkpoints in."""
        return self._store

    @property
    def signer(self) -> Signer:
        """The log's key in force."""
        return self._key_at(self.size)

    @property
    def own_version(self) -> int:
        """The version of the log's key in force (1 until its first rotation)."""
        known = self._heads.signers.get(self.name)
        return (known[1] or 1) if known else 1

    def signer_keys(self) -> dict[str, SignerKey]:
        """Every signer's key in force as this log knows it (its own, witnessed logs', the
        operator's once it rotated)."""
        return {name: key for name, (key, _) in self._heads.signers.items()}

    def hold(self, key: Signer) -> None:
        """Hold ``key`` as well (a rotation's next key), so a rotation to it can be logged."""
        self._keyring[key.public_key] = key

    def _key_at(self, position: int) -> Signer:
        """The own key that signs entry ``position``'s statement and the checkpoint of
        ``position + 1`` entries."""
        public = next(key for first, key in reversed(self._own) if first <= position)
        signer = self._keyring.get(public)
        if signer is None:
            raise OwnKeyUnavailable(
                "the key that signs this position is not held (destroyed by a rotation?)",
                position=position,
            )
        return signer

    def _adopt(self, document: LoggedDocument, index: int) -> None:
        """Follow a rotation of the log's own key logged at ``index``."""
        if isinstance(document, KeyRotation) and document.signer == self.name:
            self._own.append((index, document.new.public_key))

    def _recover(self) -> None:
        size = self._log.size
        self._heads.signers.setdefault(self.name, (SignerKey(ED25519, self._own[0][1]), 1))
        own_rotations = []
        for start in range(0, size, SCAN_CHUNK):
            for offset, entry in enumerate(self._log.entries(start, min(start + SCAN_CHUNK, size))):
                try:
                    document = parse_logged_bytes(entry)
                except DocumentError as exc:
                    raise LogCorrupted(
                        "a log entry is not a logged document", index=start + offset
                    ) from exc
                self._heads.record(document, start + offset)
                if isinstance(document, KeyRotation) and document.signer == self.name:
                    own_rotations.append((start + offset, document))
        if own_rotations:
            first = own_rotations[0][1].old.public_key
            self._own = [(0, first), *((i, r.new.public_key) for i, r in own_rotations)]
        self._signed = self._store.statement_count()
        latest = self._store.latest_checkpoint()
        if self._signed > size or (latest is not None and latest[0] > size):
            # The log lost entries it had signed for: signing again would fork it.
            raise LogCorrupted("statements or a checkpoint signed past the end of the log")
        if self._signed < size or latest is None or latest[0] != size:
            self._sign([])
        else:
            self._head = latest

    def _statements(
        self, first: int, documents: Sequence[LoggedDocument]
    ) -> list[tuple[Statement, bytes]]:
        """Signed statements for ``documents``, the log's entries from index ``first``, each
        dated with the time the log recorded for its entry and signed by the own key in force
        at its index."""
        times = self._log.logged_at(first, first + len(documents))
        statements = [
            Statement.for_entry(self.name, first + i, document, format_time(at))
            for i, (document, at) in enumerate(zip(documents, times, strict=True))
        ]
        return [(s, s.sign(self._key_at(s.index))) for s in statements]

    def _sign(self, batch: Sequence[LoggedDocument], durable: bool = False) -> list[Signed]:
        """Sign statements for ``batch``, the documents just appended at the end of the log,
        and for any entry before them still without one (a crash or a failed write left it
        unsigned; read back from the log a chunk at a time); then the checkpoint of the whole
        log. Record them (fsynced if ``durable``) and return the batch's answers.

        Everything signed here is a function of the log and the keys, so signing again after a
        crash gives the same bytes; the store need not be durable before answering."""
        size = self._log.size
        first = size - len(batch)
        while self._signed < first:
            end = min(self._signed + SCAN_CHUNK, first)
            earlier = [parse_logged_bytes(e) for e in self._log.entries(self._signed, end)]
            self._store.add_statements(_rows(self._statements(self._signed, earlier)))
            self._signed = end
        signed = self._statements(first, batch)
        checkpoint = Checkpoint(self.name, size, self._log.root())
        note_signer = Ed25519NoteSigner(self.name, self._key_at(max(size - 1, 0)))
        note = checkpoint.sign(note_signer).encode().decode()
        self._store.add_statements(_rows(signed), (size, note), durable)
        self._signed = size
        self._head = (size, note)
        return [
            Signed(
                statement=statement,
                signature=signature,
                inclusion=tuple(self._log.inclusion_proof(statement.index, size)),
                checkpoint=note,
            )
            for statement, signature in signed
        ]

    def _check(self, raw: Any, now_ms: int, index: int) -> LoggedDocument | HsmfleetError:
        try:
            document = parse_logged(raw)
            self._heads.check(document)
            if isinstance(document, StageBundle | FleetKeyArtifact):
                if document.not_after_ms <= now_ms:
                    raise DocumentExpired("document expired", not_after=document.not_after)
            elif (
                isinstance(document, KeyRotation)
                and document.signer == self.name
                and document.new.public_key not in self._keyring
            ):
                raise OwnKeyUnavailable("a rotation of this log to a key it does not hold")
        except HsmfleetError as exc:
            self.rejects[exc.kind] += 1
            return exc
        self._heads.stage(document, index)
        return document

    def log(self, documents: Sequence[Any], now_ms: int) -> list[Signed | HsmfleetError]:
        """Check and log each raw JSON document; one answer per document, in order: its
        :class:`Signed` or the error that refused it. Accepted ones share one fsynced append."""
        first = self._log.size
        checked: list[LoggedDocument | HsmfleetError] = []
        accepted: list[LoggedDocument] = []
        for raw in documents:
            checked.append(self._check(raw, now_ms, first + len(accepted)))
            if not isinstance(checked[-1], HsmfleetError):
                accepted.append(checked[-1])
        if not accepted:
            return checked  # type: ignore[return-value]
        try:
            self._log.append([document.to_bytes() for document in accepted], now_ms)
        except HsmfleetError as exc:
            self._heads.discard()
            self.rejects[exc.kind] += len(accepted)
            return [c if isinstance(c, HsmfleetError) else exc for c in checked]
        for offset, document in enumerate(accepted):
            self._adopt(document, first + offset)
        # A rotation of the log's own key: what the old key signed must outlive that key.
        own = any(isinstance(d, KeyRotation) and d.signer == self.name for d in accepted)
        try:
            signed = iter(self._sign(accepted, durable=own))
        finally:
            # The entries are in the log whatever becomes of their statements: the heads must
            # know them, or a resubmission would be logged twice. Committed after signing so
            # that a receipt is never asked for before its statement is recorded.
            self._heads.commit()
            self.accepted += len(accepted)
        return [c if isinstance(c, HsmfleetError) else next(signed) for c in checked]

    def receipt(self, digest: str) -> Signed:
        """The answer for an already logged document, its proof against the latest checkpoint."""
        index = self._heads.digests.get(digest)
        if index is None:
            raise UnknownDigest("no logged document has this digest", digest=digest)
        return self.signed_at(index)

    def signed_at(self, index: int) -> Signed:
        """Entry ``index``'s recorded statement, with its proof against the latest checkpoint."""
        record = self._store.statement(index)
        if record is None:
            raise IndexOutOfRange("no statement for this entry", index=index, size=self.size)
        statement = Statement.parse(record[0])
        size, note = self._head
        return Signed(
            statement=statement,
            signature=record[1],
            inclusion=tuple(self._log.inclusion_proof(index, size)),
            checkpoint=note,
        )

    def index_of(self, digest: str) -> int | None:
        """The leaf index of the logged document with ``digest``."""
        return self._heads.digests.get(digest)

    def checkpoint(self) -> str:
        """The latest signed checkpoint note (of the whole log), with the log's timestamped
        cosignature when :meth:`refresh` made one for its size."""
        head, fresh = self._head, self._fresh
        return fresh[1] if fresh[0] == head[0] and fresh[1] else head[1]

    def refresh(self, now_s: int) -> str:
        """Re-sign the latest checkpoint at POSIX time ``now_s``: its note signature and the
        log's own cosignature (C2SP tlog-cosignature v1, type 0x04: at ``now_s`` this is the
        largest tree of the log its key has seen). Nothing changes in the log. Returns the
        note, which :meth:`checkpoint` serves from then on, until the log grows."""
        size, note = self._head
        text = Note.parse(note).text
        key = self._key_at(max(size - 1, 0))
        line = CosignatureSigner(self.name, key).cosign(Checkpoint.from_text(text), now_s)
        fresh = Note.parse(note).with_signature(line).encode().decode()
        self._fresh = (size, fresh)
        return fresh

    def head(self) -> tuple[int, str]:
        """The size of the latest signed checkpoint and its note, read together."""
        return self._head

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        return self._log.inclusion_proof(index, size)

    def consistency_proof(self, old_size: int, size: int) -> list[bytes]:
        return self._log.consistency_proof(old_size, size)

    def entries(self, start: int, end: int) -> list[bytes]:
        return self._log.entries(start, end)


def _rows(signed: Sequence[tuple[Statement, bytes]]) -> list[tuple[int, bytes, bytes]]:
    return [(statement.index, statement.to_bytes(), signature) for statement, signature in signed]
