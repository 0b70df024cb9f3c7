"""Evaluating a guess: only for an attempt a quorum committed, once, by the member it names.

Before it looks at a guess the evaluator checks the commit proof of the attempt (a quorum of
members' signed acceptances of exactly this record value), that the record names this member as
the attempt's evaluator, that the attempt is within the user's limit, and that it never
evaluated this attempt or a later one; then it journals the attempt durably (fsync) and only then
compares the guess. A host that replays a proof, forges a commit or rolls a replica back gets no
extra guess. This is the part of a member that belongs inside its HSM; it runs in the member
process because the HSM interface cannot open sealed registrations (see :mod:`node.vault.keys`).
It blocks for its fsync; callers run it on their event loop (as the acceptor does, see there).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from messages.vault import VaultError
from node.quorum.membership import Membership
from node.quorum.proof import CommitProof, verify_proof
from node.vault import record as records
from node.vault.keys import VaultKeys


class EvaluationRefused(VaultError):
    """The evaluator will not evaluate this attempt (not committed, not its own, or not new)."""

    kind = "evaluation_refused"


@dataclass(frozen=True)
class Evaluation:
    """One journalled evaluation."""

    user: str
    seq: int
    member: str
    at_ms: int


class EvaluationJournal:
    """Every attempt this member evaluated, durable before the guess is looked at."""

    def __init__(self, path: Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS evaluations (user TEXT NOT NULL, seq INTEGER NOT NULL,"
            " member TEXT NOT NULL, at_ms INTEGER NOT NULL, PRIMARY KEY (user, seq))"
        )

    def claim(self, user: str, seq: int, member: str) -> None:
        """Record that attempt ``seq`` of ``user`` is evaluated now; refuse an old one."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            row = self._db.execute(
                "SELECT max(seq) FROM evaluations WHERE user = ?", (user,)
            ).fetchone()
            if row[0] is not None and seq <= row[0]:
                raise EvaluationRefused(
                    "this attempt or a later one was evaluated already", user=user, seq=seq
                )
            self._db.execute(
                "INSERT INTO evaluations VALUES (?, ?, ?, ?)",
                (user, seq, member, time.time_ns() // 1_000_000),
            )

    def evaluations(self) -> list[Evaluation]:
        rows = self._db.execute("SELECT user, seq, member, at_ms FROM evaluations ORDER BY at_ms")
        return [Evaluation(*row) for row in rows]

    def close(self) -> None:
        self._db.close()


class GuessEvaluator:
    """Evaluates guesses for member ``member`` of the fleet ``membership()`` describes."""

    def __init__(
        self,
        member: str,
        keys: VaultKeys,
        membership: Callable[[], Membership],
        journal: EvaluationJournal,
    ) -> None:
        self.member = member
        self.keys = keys
        self.membership = membership
        self.journal = journal

    def evaluate(
        self, user: str, value: bytes | None, proof: CommitProof, guess: bytes
    ) -> bytes | None:
        """The user's secret if ``guess`` is right, None if wrong; raises
        :class:`EvaluationRefused` or :class:`messages.quorum.BadProof` when the attempt may not
        be evaluated. Blocks on one fsync."""
        if proof.key != records.record_key(user):
            raise EvaluationRefused("the proof is for another record", user=user)
        verify_proof(proof, self.membership(), value)
        attempt = records.decode(value)
        if attempt is None or attempt.user != user:
            raise EvaluationRefused("the committed value is not this user's record", user=user)
        if attempt.evaluator != self.member:
            raise EvaluationRefused("the attempt names another evaluator", user=user)
        if attempt.sealed is None or attempt.failures > attempt.limit:
            raise EvaluationRefused("the attempt is beyond the user's limit", user=user)
        self.journal.claim(user, attempt.seq, self.member)
        return records.check_guess(self.keys.storage, attempt, guess)
