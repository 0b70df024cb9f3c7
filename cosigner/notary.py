"""The cosigner's log keeper: check documents, log them, sign statements and checkpoints.

A :class:`Notary` owns the cosigner's :class:`~cosigner.log.AuditLog` (entries are the canonical
bytes of stage bundles and fleet-key artifacts) and its :class:`~cosigner.store.Store`. For each
document it is asked to log it checks, in order:

1. it is a well-formed stage bundle or fleet-key artifact (:mod:`messages.documents`);
2. its digest was never logged (:class:`DigestSeen`);
3. a stage bundle extends its fleet's chain in this log: serial is the last plus one, ``prev``
   the last bundle's digest (:func:`messages.bundle.check_successor`); an artifact's epoch is
   its fleet's last plus one (:func:`messages.artifact.check_next_epoch`);
4. it has not expired (:class:`DocumentExpired`).

Accepted documents of one call are appended in one fsynced batch, recorded with the batch's
time; the notary then signs one checkpoint of the new tree and a
:class:`~messages.statement.Statement` per document, dated with that recorded time. Ed25519 is
deterministic, so what the notary signs is a function of the log and its key: the one fsync per
batch is the log's, and a statement or checkpoint a crash kept from the store is signed again,
the same bytes, when the notary opens. A refused document changes nothing and is counted in
:attr:`Notary.rejects` by its error's kind.

The per-fleet chain heads and the set of logged digests are not stored separately: they are
rebuilt from the log's entries when the notary opens, so they can never disagree with the log.
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
from messages.cosigning import Signed
from messages.documents import DocumentError
from messages.errors import HsmfleetError
from messages.ids import format_time
from messages.merkle import IndexOutOfRange
from messages.note import Ed25519NoteSigner
from messages.signing import Signer
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


class _Heads:
    """Per-fleet chain heads and epochs, and the logged digests, with pending changes kept
    apart until the batch that made them is durable."""

    def __init__(self) -> None:
        self.chains: dict[str, ChainHead] = {}
        self.epochs: dict[str, int] = {}
        self.digests: dict[str, int] = {}
        self._pending: list[tuple[LoggedDocument, int]] = []
        self._pending_digests: set[str] = set()

    def check(self, document: LoggedDocument) -> None:
        digest = document.digest
        if digest in self.digests or digest in self._pending_digests:
            raise DigestSeen("document already logged", digest=digest)
        if isinstance(document, StageBundle):
            check_successor(self._chain(document.fleet), document)
        else:
            check_next_epoch(self._epoch(document.fleet), document)

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
        else:
            self.epochs[document.fleet] = document.epoch


class Notary:
    """One cosigner's log and the signatures it makes over it."""

    def __init__(self, name: str, signer: Signer, log: AuditLog, store: Store) -> None:
        self.name = name
        self._signer = signer
        self._note_signer = Ed25519NoteSigner(name, signer)
        self._log = log
        self._store = store
        self._heads = _Heads()
        self.rejects: Counter[str] = Counter()
        self.accepted = 0
        self._head = (0, "")  # size and note of the latest checkpoint, replaced as one value
        self._signed = 0  # entries 0 .. _signed - 1 have recorded statements

    @classmethod
    def open(cls, directory: Path, name: str, signer: Signer) -> Notary:
        """Open (or create) the log and store in ``directory``, rebuild the chain heads from
        the log, and sign again whatever a crash left unrecorded."""
        directory = Path(directory)
        log = AuditLog.open(directory / "audit.db")
        try:
            store = Store.open(directory / "state.db")
        except HsmfleetError:
            log.close()
            raise
        notary = cls(name, signer, log, store)
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

    def _recover(self) -> None:
        size = self._log.size
        for start in range(0, size, SCAN_CHUNK):
            for offset, entry in enumerate(self._log.entries(start, min(start + SCAN_CHUNK, size))):
                try:
                    document = parse_logged_bytes(entry)
                except DocumentError as exc:
                    raise LogCorrupted(
                        "a log entry is not a logged document", index=start + offset
                    ) from exc
                self._heads.record(document, start + offset)
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
        dated with the time the log recorded for its entry."""
        times = self._log.logged_at(first, first + len(documents))
        statements = [
            Statement.for_entry(self.name, first + i, document, format_time(at))
            for i, (document, at) in enumerate(zip(documents, times, strict=True))
        ]
        return [(s, s.sign(self._signer)) for s in statements]

    def _sign(self, batch: Sequence[LoggedDocument]) -> list[Signed]:
        """Sign statements for ``batch``, the documents just appended at the end of the log,
        and for any entry before them still without one (a crash or a failed write left it
        unsigned; read back from the log a chunk at a time); then the checkpoint of the whole
        log. Record them and return the batch's answers.

        Everything signed here is a function of the log and the key, so signing again after a
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
        note = checkpoint.sign(self._note_signer).encode().decode()
        self._store.add_statements(_rows(signed), (size, note))
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
            if document.not_after_ms <= now_ms:
                raise DocumentExpired("document expired", not_after=document.not_after)
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
        try:
            signed = iter(self._sign(accepted))
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
        """The latest signed checkpoint note (of the whole log)."""
        return self._head[1]

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
