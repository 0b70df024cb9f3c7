"""The evaluations an HSM applet made: each committed login attempt is answered at most once.

Before the applet answers a login (the server's OPAQUE response, from which the client checks
its guess), it records the attempt here durably (fsync). An attempt that was answered, even if
the answer was lost, is never answered again, so a host that replays an attempt's commit proof,
or rolls its replica back, gets no second guess out of its HSM. The journal belongs to the HSM
device (its state directory), not to the node host.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from messages.vault import ReplayedRequest


class EvaluationJournal:
    """Every attempt this applet answered, by fleet, user and attempt number."""

    def __init__(self, path: Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS evaluations (fleet TEXT NOT NULL, user TEXT NOT NULL,"
            " number INTEGER NOT NULL, PRIMARY KEY (fleet, user, number)) WITHOUT ROWID"
        )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS totals (fleet TEXT NOT NULL, user TEXT NOT NULL,"
            " answered INTEGER NOT NULL, PRIMARY KEY (fleet, user)) WITHOUT ROWID"
        )
        self._lock = threading.Lock()

    def claim(self, fleet: str, user: str, number: int, cleared: int) -> None:
        """Record that attempt ``number`` of ``user`` is answered now (durably, before the
        answer is made); raises :class:`ReplayedRequest` if it was answered before. Attempts up
        to ``cleared`` (the record's) can never be answered again, so their rows go."""
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            seen = self._db.execute(
                "SELECT 1 FROM evaluations WHERE fleet = ? AND user = ? AND number = ?",
                (fleet, user, number),
            ).fetchone()
            if seen is not None:
                raise ReplayedRequest(
                    "this attempt was answered already", user=user, attempt=number
                )
            self._db.execute(
                "DELETE FROM evaluations WHERE fleet = ? AND user = ? AND number <= ?",
                (fleet, user, cleared),
            )
            self._db.execute("INSERT INTO evaluations VALUES (?, ?, ?)", (fleet, user, number))
            self._db.execute(
                "INSERT INTO totals VALUES (?, ?, 1) ON CONFLICT (fleet, user)"
                " DO UPDATE SET answered = answered + 1",
                (fleet, user),
            )

    def total(self, fleet: str, user: str) -> int:
        """How many attempts of ``user`` this applet ever answered (guesses it evaluated)."""
        row = self._db.execute(
            "SELECT answered FROM totals WHERE fleet = ? AND user = ?", (fleet, user)
        ).fetchone()
        return 0 if row is None else row[0]

    def answered(self, fleet: str, user: str) -> list[int]:
        """The attempts of ``user`` answered and not yet cleared, in order."""
        rows = self._db.execute(
            "SELECT number FROM evaluations WHERE fleet = ? AND user = ? ORDER BY number",
            (fleet, user),
        )
        return [row[0] for row in rows]

    def close(self) -> None:
        self._db.close()
