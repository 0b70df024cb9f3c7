"""The cosigner's audit log: a durable, append-only RFC 9162 Merkle log in one SQLite file.

Layout (format 2)::

    meta(key TEXT PRIMARY KEY, value)        format = 2, size = n, root = MTH of the n entries
    leaves(idx INTEGER PRIMARY KEY,          0 .. n-1, no gaps
           entry BLOB,                       the logged bytes
           hashes BLOB,                      leaf hash || hashes of the perfect subtrees that
                                             this leaf completes, lowest level first
           logged_at INTEGER)                when it was appended (ms since the epoch, given by
                                             the caller), so what is said about the entry
                                             later can be said again with the same bytes

Perfect subtree ``(level L, index j)`` (leaves ``[j * 2**L, (j + 1) * 2**L)``) is completed by
leaf ``(j + 1) * 2**L - 1`` and stored at offset ``32 * L`` of that leaf's ``hashes``: one row
read per node, so tree heads at any size and proofs between any sizes cost ``O(log n)`` reads.

Durability: WAL journal, ``synchronous=FULL``, one transaction per batch; :meth:`AuditLog.append`
returns only after SQLite has fsynced the commit. The new file's directory is fsynced when the
log is created. The file is held with an exclusive lock while open, so a second process (or a
second :class:`AuditLog` on the same path) gets :class:`LogBusy`.

Integrity: opening the log re-hashes every entry, recomputes every stored node and the root, and
compares them with what is stored (:class:`LogCorrupted` on any difference). That costs one pass
over the log, ``O(n)``.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

from messages.errors import HsmfleetError
from messages.merkle import (
    HASH_SIZE,
    Frontier,
    IndexOutOfRange,
    TreeView,
    leaf_hash,
)
from transport.files import fsync_directory

FORMAT = 2
MAX_ENTRY_SIZE = 1 << 20
MAX_BATCH = 10_000
MAX_TIME_MS = 1 << 48
"""Times are below 2**48 ms (the year 10889), as ids and documents write them."""

_SCHEMA = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value NOT NULL) WITHOUT ROWID",
    "CREATE TABLE leaves (idx INTEGER PRIMARY KEY, entry BLOB NOT NULL, hashes BLOB NOT NULL,"
    " logged_at INTEGER NOT NULL)",
    "CREATE INDEX leaves_by_hash ON leaves (substr(hashes, 1, 32))",
)


class LogError(HsmfleetError):
    """The audit log refused an operation."""

    kind = "log"


class LogCorrupted(LogError):
    """The stored log is not what its entries hash to: a missing, changed or extra row."""

    kind = "log_corrupted"


class LogBusy(LogError):
    """Another process or handle holds the log open."""

    kind = "log_busy"


class LogUnavailable(LogError):
    """The log file cannot be opened or written (missing directory, disk full, I/O error)."""

    kind = "log_unavailable"


class BadEntry(LogError):
    """An entry is not bytes, is larger than :data:`MAX_ENTRY_SIZE`, or a batch is too large."""

    kind = "bad_entry"


def open_database(path: Path, what: str, schema: Sequence[str] = ()) -> sqlite3.Connection:
    """Open the SQLite file ``path`` (the cosigner's ``what``: log or store) for this handle
    alone: exclusive lock held until close, WAL journal, fsynced commits; then run the
    ``schema`` statements in one transaction. :class:`LogBusy` if another handle holds it,
    :class:`LogCorrupted` if it is no database, :class:`LogUnavailable` otherwise."""
    try:
        db = sqlite3.connect(path, isolation_level=None, timeout=0, check_same_thread=False)
    except sqlite3.Error as exc:
        raise LogUnavailable(f"cannot open the {what}: {exc}", path=str(path)) from exc
    try:
        # Exclusive before WAL: the lock is held from the first access until close, and the
        # WAL index lives in process memory instead of a shared-memory file.
        db.execute("PRAGMA locking_mode=EXCLUSIVE")
        if db.execute("PRAGMA journal_mode=WAL").fetchone()[0] != "wal":
            raise LogUnavailable(f"the {what}'s file system does not support a WAL", path=str(path))
        db.execute("PRAGMA synchronous=FULL")
        db.execute("BEGIN IMMEDIATE")
        for statement in schema:
            db.execute(statement)
        db.execute("COMMIT")
    except sqlite3.OperationalError as exc:
        db.close()
        if "locked" in str(exc):
            raise LogBusy(f"the {what} is open elsewhere", path=str(path)) from exc
        raise LogUnavailable(f"cannot open the {what}: {exc}", path=str(path)) from exc
    except sqlite3.DatabaseError as exc:
        db.close()
        raise LogCorrupted(f"not a cosigner {what}: {exc}", path=str(path)) from exc
    except LogError:
        db.close()
        raise
    return db


class AuditLog(TreeView):
    """A durable append-only Merkle log. Thread-safe; one instance per file."""

    def __init__(self, path: Path, db: sqlite3.Connection, frontier: Frontier, size: int) -> None:
        self.path = path
        self._db = db
        self._lock = threading.RLock()
        self._frontier = frontier
        self._size = size
        self._root = frontier.root()

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> AuditLog:
        """Open the log at ``path``, creating it if absent, and check it end to end.

        Raises :class:`LogBusy` if it is open elsewhere, :class:`LogCorrupted` if any stored
        hash, row or the stored head differs from what the entries hash to, and
        :class:`LogUnavailable` if the file cannot be opened.
        """
        path = Path(path)
        db = open_database(path, "log")
        try:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
            if not tables:
                _create(db)
                fsync_directory(path.parent)
            elif not {"meta", "leaves"} <= tables:
                raise LogCorrupted("not an audit log", path=str(path))
            frontier, size = _check(db)
        except sqlite3.OperationalError as exc:
            db.close()
            raise LogUnavailable(f"cannot read the log: {exc}", path=str(path)) from exc
        except sqlite3.DatabaseError as exc:
            db.close()
            raise LogCorrupted(f"cannot read the log: {exc}", path=str(path)) from exc
        except LogError:
            db.close()
            raise
        return cls(path, db, frontier, size)

    def close(self) -> None:
        """Release the file. The log is unusable afterwards."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @property
    def size(self) -> int:
        return self._size

    def root(self, size: int | None = None) -> bytes:
        if size is None or size == self._size:
            return self._root
        return super().root(size)

    def append(self, entries: Sequence[bytes], logged_at_ms: int) -> int:
        """Append ``entries`` in order, recorded as logged at ``logged_at_ms``, durably and all
        or nothing; return the first's index.

        Returns only after the batch is fsynced. On any error nothing is appended.
        """
        if isinstance(entries, bytes | str) or len(entries) > MAX_BATCH:
            raise BadEntry("entries must be a sequence of at most 10000 byte strings")
        if not _is_count(logged_at_ms) or logged_at_ms >= MAX_TIME_MS:
            raise BadEntry("logged_at_ms must be a time in ms since the epoch", at=logged_at_ms)
        for position, entry in enumerate(entries):
            if not isinstance(entry, bytes) or len(entry) > MAX_ENTRY_SIZE:
                raise BadEntry("entry must be bytes of at most 1 MiB", position=position)
        if not entries:
            return self._size
        with self._lock:
            first = self._size
            frontier = self._frontier.copy()
            rows = [
                (first + i, entry, b"".join(frontier.append(leaf_hash(entry))), logged_at_ms)
                for i, entry in enumerate(entries)
            ]
            root = frontier.root()
            size = first + len(rows)
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.executemany("INSERT INTO leaves VALUES (?, ?, ?, ?)", rows)
                self._db.executemany(
                    "UPDATE meta SET value = ? WHERE key = ?", [(size, "size"), (root, "root")]
                )
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise LogUnavailable(f"append failed: {exc}", path=str(self.path)) from exc
            self._frontier, self._size, self._root = frontier, size, root
            return first

    def entry(self, index: int) -> bytes:
        """The entry at ``index``."""
        if not _is_count(index) or index >= self._size:
            raise IndexOutOfRange("no entry at this index", index=index, size=self._size)
        return self.entries(index, index + 1)[0]

    def entries(self, start: int, end: int) -> list[bytes]:
        """The entries ``start`` to ``end - 1``, in order (``0 <= start <= end <= size``)."""
        return self._column("entry", start, end)

    def logged_at(self, start: int, end: int) -> list[int]:
        """When entries ``start`` to ``end - 1`` were appended (ms since the epoch), in order."""
        return self._column("logged_at", start, end)

    def _column(self, column: str, start: int, end: int) -> list:
        if not (_is_count(start) and _is_count(end) and start <= end <= self._size):
            raise IndexOutOfRange("entry range outside the log", start=start, end=end)
        with self._lock:
            rows = self._db.execute(
                f"SELECT {column} FROM leaves WHERE idx >= ? AND idx < ? ORDER BY idx",
                (start, end),
            ).fetchall()
        if len(rows) != end - start:
            raise LogCorrupted("rows missing from the log", start=start, end=end)
        return [row[0] for row in rows]

    def index_of(self, entry: bytes) -> int | None:
        """The index of the first entry equal to ``entry``, or None if it was never logged."""
        with self._lock:
            row = self._db.execute(
                "SELECT idx FROM leaves WHERE substr(hashes, 1, 32) = ? ORDER BY idx LIMIT 1",
                (leaf_hash(entry),),
            ).fetchone()
        return None if row is None else row[0]

    def node(self, level: int, index: int) -> bytes:
        last = ((index + 1) << level) - 1
        with self._lock:
            row = self._db.execute(
                "SELECT substr(hashes, ?, 32) FROM leaves WHERE idx = ?",
                (level * HASH_SIZE + 1, last),
            ).fetchone()
        if row is None or len(row[0]) != HASH_SIZE:
            raise LogCorrupted("a tree node is missing", level=level, index=index)
        return row[0]


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _create(db: sqlite3.Connection) -> None:
    db.execute("BEGIN IMMEDIATE")
    for statement in _SCHEMA:
        db.execute(statement)
    db.executemany(
        "INSERT INTO meta VALUES (?, ?)",
        [("format", FORMAT), ("size", 0), ("root", Frontier().root())],
    )
    db.execute("COMMIT")


def _check(db: sqlite3.Connection) -> tuple[Frontier, int]:
    """Recompute every stored hash and the root from the entries; return the frontier."""
    meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
    if meta.get("format") != FORMAT:
        raise LogCorrupted("not an audit log of a known format", format=meta.get("format"))
    frontier, size = Frontier(), 0
    rows = db.execute(
        "SELECT idx, typeof(entry) = 'blob' AND typeof(hashes) = 'blob'"
        " AND typeof(logged_at) = 'integer' AND logged_at >= 0,"
        " CAST(entry AS BLOB), CAST(hashes AS BLOB) FROM leaves ORDER BY idx"
    )
    for idx, blobs, entry, hashes in rows:
        if idx != size:
            raise LogCorrupted("the log has a gap", expected=size, found=idx)
        if not blobs or b"".join(frontier.append(leaf_hash(entry))) != hashes:
            raise LogCorrupted("stored hashes differ from the entry's", index=idx)
        size += 1
    if meta.get("size") != size or meta.get("root") != frontier.root():
        raise LogCorrupted("stored tree head differs from the entries", size=size)
    return frontier, size
