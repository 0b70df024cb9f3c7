"""The cosigner's own records beside its audit log, in one SQLite file (``state.db``).

- ``statements(idx, statement, signature)``: the statement signed for each log entry, so a
  requester whose answer was lost gets the very same statement again;
- ``checkpoints(size, note)``: the checkpoints the cosigner signed of its own log;
- ``witnessed(origin, size, root, note, seen_at)``: every checkpoint of another log it cosigned
  as a witness, kept so that the log's misbehaviour can be proven later;
- ``equivocations(origin, size, root, note, seen_at)``: checkpoints signed by a witnessed log
  with the size of one it cosigned but another root: with that one, proof that the log forked.

Witnessed checkpoints are fsynced before the method returns (C2SP tlog-witness: persisted
before the cosignature is answered). The cosigner's own statements and checkpoints are not:
they are a function of the audit log (its entries and the time recorded with each) and the key,
so one lost in a crash is signed again at the next start with the same bytes. The file is held
with an exclusive lock while open.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

from cosigner.log import LogUnavailable, open_database

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS statements"
    " (idx INTEGER PRIMARY KEY, statement BLOB NOT NULL, signature BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS checkpoints (size INTEGER PRIMARY KEY, note TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS witnessed (origin TEXT NOT NULL, size INTEGER NOT NULL,"
    " root BLOB NOT NULL, note TEXT NOT NULL, seen_at INTEGER NOT NULL,"
    " PRIMARY KEY (origin, size)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS equivocations (origin TEXT NOT NULL, size INTEGER NOT NULL,"
    " root BLOB NOT NULL, note TEXT NOT NULL, seen_at INTEGER NOT NULL,"
    " PRIMARY KEY (origin, size, root)) WITHOUT ROWID",
)


@dataclass(frozen=True)
class Seen:
    """A checkpoint of another log, as the witness saw it: origin, size, root and the note."""

    origin: str
    size: int
    root: bytes
    note: str


class Store:
    """Statements, signed checkpoints and witnessed checkpoints. Thread-safe."""

    def __init__(self, path: Path, db: sqlite3.Connection) -> None:
        self.path = path
        self._db = db
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: Path) -> Store:
        """Open or create the store at ``path``; :class:`LogBusy` if it is open elsewhere."""
        return cls(path, open_database(path, "store", _SCHEMA))

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _write(self, *batches: tuple[str, list[tuple]], durable: bool = True) -> None:
        """Run each ``(sql, rows)`` batch in one transaction, all or nothing; fsynced before
        returning if ``durable``, else atomic but possibly lost with the last ones before a
        power failure (SQLite WAL, ``synchronous=NORMAL``)."""
        with self._lock:
            try:
                self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
                self._db.execute("BEGIN IMMEDIATE")
                for sql, rows in batches:
                    self._db.executemany(sql, rows)
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise LogUnavailable(f"store write failed: {exc}", path=str(self.path)) from exc

    def _read(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            try:
                return self._db.execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                raise LogUnavailable(f"store read failed: {exc}", path=str(self.path)) from exc

    # --- statements and own checkpoints ---

    def add_statements(
        self,
        rows: list[tuple[int, bytes, bytes]],
        checkpoint: tuple[int, str] | None = None,
        durable: bool = False,
    ) -> None:
        """Record statements ``(index, statement bytes, signature)`` and, if given, the
        checkpoint ``(size, note)`` that covers them, in one transaction. Not fsynced unless
        ``durable`` (then every earlier write is durable too): each is signed again, byte for
        byte, from the log if a crash loses it, as long as its key is still held; before a key
        rotation destroys a key, what it signed is made durable."""
        batches = [("INSERT OR REPLACE INTO statements VALUES (?, ?, ?)", rows)]
        if checkpoint is not None:
            batches.append(("INSERT OR REPLACE INTO checkpoints VALUES (?, ?)", [checkpoint]))
        self._write(*batches, durable=durable)

    def statement(self, index: int) -> tuple[bytes, bytes] | None:
        """The statement bytes and signature recorded for entry ``index``, if any."""
        rows = self._read("SELECT statement, signature FROM statements WHERE idx = ?", (index,))
        return (rows[0][0], rows[0][1]) if rows else None

    def statement_count(self) -> int:
        """How many entries, from the first, have a recorded statement (all of ``0 .. n-1``)."""
        rows = self._read(
            "SELECT CASE WHEN NOT EXISTS (SELECT 1 FROM statements WHERE idx = 0) THEN 0"
            " ELSE (SELECT min(idx) + 1 FROM statements AS s WHERE NOT EXISTS"
            " (SELECT 1 FROM statements AS t WHERE t.idx = s.idx + 1)) END"
        )
        return rows[0][0]

    def latest_checkpoint(self) -> tuple[int, str] | None:
        """The size and note of the largest checkpoint signed, if any."""
        rows = self._read("SELECT size, note FROM checkpoints ORDER BY size DESC LIMIT 1")
        return (rows[0][0], rows[0][1]) if rows else None

    # --- witnessed checkpoints of other logs ---

    def latest_witnessed(self, origin: str) -> Seen | None:
        rows = self._read(
            "SELECT size, root, note FROM witnessed WHERE origin = ? ORDER BY size DESC LIMIT 1",
            (origin,),
        )
        return Seen(origin, rows[0][0], rows[0][1], rows[0][2]) if rows else None

    def add_witnessed(self, seen: Seen, seen_at: int) -> None:
        row = (seen.origin, seen.size, seen.root, seen.note, seen_at)
        self._write(("INSERT OR IGNORE INTO witnessed VALUES (?, ?, ?, ?, ?)", [row]))

    def witnessed_at(self, origin: str, size: int) -> Seen | None:
        """The checkpoint of ``origin`` of this size the witness cosigned, if any."""
        rows = self._read(
            "SELECT root, note FROM witnessed WHERE origin = ? AND size = ?", (origin, size)
        )
        return Seen(origin, size, rows[0][0], rows[0][1]) if rows else None

    def add_equivocation(self, seen: Seen, seen_at: int) -> None:
        row = (seen.origin, seen.size, seen.root, seen.note, seen_at)
        self._write(("INSERT OR IGNORE INTO equivocations VALUES (?, ?, ?, ?, ?)", [row]))

    def equivocations(self, origin: str) -> list[Seen]:
        """Checkpoints of ``origin`` that contradict one the witness cosigned, smallest first."""
        rows = self._read(
            "SELECT size, root, note FROM equivocations WHERE origin = ? ORDER BY size, root",
            (origin,),
        )
        return [Seen(origin, size, root, note) for size, root, note in rows]

    def witnessed_history(self, origin: str) -> list[Seen]:
        """Every checkpoint of ``origin`` the witness cosigned, smallest first."""
        rows = self._read(
            "SELECT size, root, note FROM witnessed WHERE origin = ? ORDER BY size", (origin,)
        )
        return [Seen(origin, size, root, note) for size, root, note in rows]
