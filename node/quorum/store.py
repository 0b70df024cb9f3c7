"""The acceptor's durable state: one SQLite database in WAL mode with ``synchronous=FULL``.

Every :meth:`SlotStore.save` is one transaction whose commit fsyncs the write-ahead log, so a
slot that was saved survives a crash of the process or the host; acceptors answer only after
saving. The store is used from one thread at a time (the acceptor's), except
:meth:`SlotStore.checkpoint`: SQLite would otherwise copy the log into the database inside
whichever commit crosses its threshold, a pause of milliseconds in the middle of a vote, so the
acceptor runs checkpoints on their own connection in a thread instead.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping
from pathlib import Path

from messages.quorum import Ballot
from node.quorum.rules import EMPTY, Slot

_SCHEMA = """
CREATE TABLE IF NOT EXISTS slots (
    key TEXT PRIMARY KEY,
    promised_n INTEGER NOT NULL,
    promised_by TEXT NOT NULL,
    accepted_n INTEGER NOT NULL,
    accepted_by TEXT NOT NULL,
    value BLOB,
    justification BLOB,
    vetted INTEGER NOT NULL DEFAULT 1
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
"""


_ADDED_COLUMNS = (("justification", "BLOB"), ("vetted", "INTEGER NOT NULL DEFAULT 1"))


class SlotStore:
    """Slots by record key, with the slots read or written lately kept in memory (up to
    ``cache_limit``; the cache is dropped when it grows past it, as every slot is on disk)."""

    def __init__(self, path: Path, cache_limit: int = 200_000) -> None:
        self.cache_limit = cache_limit
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA wal_autocheckpoint=0")
        self._db.executescript(_SCHEMA)
        self._add_columns()
        self._cache: dict[str, Slot] = {}
        self._checkpointer: sqlite3.Connection | None = None
        self.commits = 0

    def _add_columns(self) -> None:
        """Bring a store written before slots kept justifications up to the current schema."""
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(slots)")}
        for name, declaration in _ADDED_COLUMNS:
            if name not in columns:
                self._db.execute(f"ALTER TABLE slots ADD COLUMN {name} {declaration}")

    def load(self, keys: Iterable[str]) -> dict[str, Slot]:
        """The slots of ``keys``; a record never seen has the empty slot."""
        if len(self._cache) > self.cache_limit:
            self._cache.clear()
        out: dict[str, Slot] = {}
        missing = []
        for key in keys:
            slot = self._cache.get(key)
            if slot is None:
                missing.append(key)
            else:
                out[key] = slot
        for start in range(0, len(missing), 500):
            chunk = missing[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(f"SELECT * FROM slots WHERE key IN ({marks})", chunk)
            for row in rows:
                self._cache[row[0]] = _slot(row)
            for key in chunk:
                out[key] = self._cache.setdefault(key, EMPTY)
        return out

    def save(self, slots: Mapping[str, Slot]) -> None:
        """Write ``slots`` in one transaction; returns once the commit is on disk."""
        if not slots:
            return
        rows = [
            (
                k,
                s.promised.n,
                s.promised.by,
                s.accepted.n,
                s.accepted.by,
                s.value,
                s.justification,
                int(s.vetted),
            )
            for k, s in slots.items()
        ]
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(
                "INSERT OR REPLACE INTO slots VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows
            )
        self.commits += 1
        self._cache.update(slots)

    def checkpoint(self) -> None:
        """Copy the write-ahead log into the database (fsynced) without holding up writers;
        safe to call from another thread than the writer's, one call at a time."""
        if self._checkpointer is None:
            self._checkpointer = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False
            )
            self._checkpointer.execute("PRAGMA synchronous=FULL")
        self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def page(self, after: str, limit: int) -> list[tuple[str, Slot]]:
        """Up to ``limit`` slots with an accepted value and a key above ``after``, in key order."""
        rows = self._db.execute(
            "SELECT * FROM slots WHERE key > ? AND accepted_n > 0 ORDER BY key LIMIT ?",
            (after, limit),
        )
        return [(row[0], _slot(row)) for row in rows]

    def get_meta(self, name: str) -> bytes | None:
        row = self._db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return None if row is None else bytes(row[0])

    def set_meta(self, name: str, value: bytes) -> None:
        """Store ``value`` under ``name`` durably (one fsynced transaction)."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (name, value))

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.close()
        self._db.close()


def _slot(row: tuple) -> Slot:
    _, pn, pby, an, aby, value, justification, vetted = row
    return Slot(
        Ballot(pn, pby),
        Ballot(an, aby),
        None if value is None else bytes(value),
        None if justification is None else bytes(justification),
        bool(vetted),
    )
