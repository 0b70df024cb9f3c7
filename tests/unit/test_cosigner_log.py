"""The cosigner's durable audit log: same tree as the RFC, survives restarts and kill -9,
detects corruption at open, refuses bad input without changing anything."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cosigner.log import (
    MAX_BATCH,
    MAX_ENTRY_SIZE,
    AuditLog,
    BadEntry,
    LogBusy,
    LogCorrupted,
    LogUnavailable,
)
from messages.merkle import (
    EMPTY_ROOT,
    IndexOutOfRange,
    Tree,
    TreeShrank,
    TreeSizeOutOfRange,
    leaf_hash,
    verify_consistency,
    verify_inclusion,
)

ENTRIES = [f"bundle digest {i}".encode() for i in range(300)]
AT = 1_767_225_600_000  # 2026-01-01T00:00:00Z in ms


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "audit.db"


@pytest.fixture
def filled(path: Path) -> Path:
    with AuditLog.open(path) as log:
        log.append(ENTRIES[:1], AT)
        log.append(ENTRIES[1:100], AT + 1)
        log.append(ENTRIES[100:], AT + 2)
    return path


def test_a_new_log_is_empty(path: Path) -> None:
    with AuditLog.open(path) as log:
        assert log.size == 0
        assert log.root() == EMPTY_ROOT
        assert log.entries(0, 0) == []
        assert log.index_of(b"x") is None


def test_heads_and_proofs_equal_the_in_memory_tree(filled: Path) -> None:
    tree = Tree(ENTRIES)
    with AuditLog.open(filled) as log:
        assert log.size == len(ENTRIES)
        for n in range(0, len(ENTRIES) + 1, 7):
            assert log.root(n) == tree.root(n)
        for n in (1, 2, 3, 64, 65, 255, 256, 257, 300):
            root = log.root(n)
            for i in {0, n // 2, n - 1}:
                proof = log.inclusion_proof(i, n)
                assert proof == tree.inclusion_proof(i, n)
                verify_inclusion(i, n, leaf_hash(ENTRIES[i]), proof, root)
            for m in {1, n // 3 or 1, n - 1 or 1}:
                proof = log.consistency_proof(m, n)
                assert proof == tree.consistency_proof(m, n)
                verify_consistency(m, n, log.root(m), root, proof)


def test_entries_and_lookup(filled: Path) -> None:
    with AuditLog.open(filled) as log:
        assert log.entry(0) == ENTRIES[0]
        assert log.entry(299) == ENTRIES[299]
        assert log.entries(98, 102) == ENTRIES[98:102]
        assert log.index_of(ENTRIES[150]) == 150
        assert log.append([ENTRIES[150]], AT) == 300
        assert log.index_of(ENTRIES[150]) == 150
        assert log.index_of(b"never logged") is None


def test_each_entry_keeps_the_time_its_batch_was_logged(filled: Path) -> None:
    with AuditLog.open(filled) as log:
        assert log.logged_at(0, 300) == [AT] + [AT + 1] * 99 + [AT + 2] * 200
        assert log.logged_at(150, 150) == []
        for bad in (-1, True, 1 << 48, "2026-01-01T00:00:00.000Z", None):
            with pytest.raises(BadEntry):
                log.append([b"fine"], bad)
        assert log.size == 300
        with pytest.raises(IndexOutOfRange):
            log.logged_at(299, 301)


def test_ranges_are_checked(filled: Path) -> None:
    with AuditLog.open(filled) as log:
        for bad in (300, -1, True):
            with pytest.raises(IndexOutOfRange):
                log.entry(bad)
        for start, end in ((5, 4), (0, 301), (-1, 2)):
            with pytest.raises(IndexOutOfRange):
                log.entries(start, end)
        with pytest.raises(TreeSizeOutOfRange):
            log.root(301)
        with pytest.raises(IndexOutOfRange):
            log.inclusion_proof(300)
        with pytest.raises(TreeSizeOutOfRange):
            log.consistency_proof(3, 301)
        with pytest.raises(TreeShrank):
            log.consistency_proof(200, 100)


def test_bad_batches_change_nothing(filled: Path) -> None:
    with AuditLog.open(filled) as log:
        root = log.root()
        for batch in (
            [b"fine", "not bytes"],
            [b"fine", bytearray(b"mutable")],
            [b"fine", b"x" * (MAX_ENTRY_SIZE + 1)],
            [b"x"] * (MAX_BATCH + 1),
            b"a bytes object is not a batch",
        ):
            with pytest.raises(BadEntry):
                log.append(batch, AT)
            assert (log.size, log.root()) == (300, root)
        assert log.append([], AT) == 300
    with AuditLog.open(filled) as log:
        assert (log.size, log.root()) == (300, root)


def test_survives_reopening(filled: Path) -> None:
    tree = Tree(ENTRIES)
    with AuditLog.open(filled) as log:
        assert log.root() == tree.root()
        assert log.append([b"after restart"], AT) == 300
    tree.append(b"after restart")
    with AuditLog.open(filled) as log:
        assert (log.size, log.root()) == (301, tree.root())
        assert log.inclusion_proof(300) == tree.inclusion_proof(300)


def test_a_second_opener_is_refused(path: Path) -> None:
    with AuditLog.open(path), pytest.raises(LogBusy):
        AuditLog.open(path)
    AuditLog.open(path).close()


def test_a_missing_directory_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(LogUnavailable):
        AuditLog.open(tmp_path / "no such dir" / "audit.db")


def tamper(path: Path, *statements: str) -> None:
    db = sqlite3.connect(path, isolation_level=None)
    for statement in statements:
        db.execute(statement)
    db.close()


@pytest.mark.parametrize(
    "statements",
    [
        ["UPDATE leaves SET entry = x'00' WHERE idx = 17"],
        # Leaf 7 completes the level-3 node over leaves 0..7: change only that stored node.
        [
            "UPDATE leaves SET hashes = CAST(substr(hashes, 1, 96) || zeroblob(32) AS BLOB) "
            "WHERE idx = 7"
        ],
        ["UPDATE leaves SET hashes = substr(hashes, 1, 32) WHERE idx = 255"],
        ["DELETE FROM leaves WHERE idx = 299"],
        ["DELETE FROM leaves WHERE idx = 150"],
        ["UPDATE leaves SET idx = 1000 WHERE idx = 299"],
        ["INSERT INTO leaves VALUES (300, x'01', x'02', 0)"],
        ["UPDATE meta SET value = zeroblob(32) WHERE key = 'root'"],
        ["UPDATE meta SET value = 299 WHERE key = 'size'"],
        ["UPDATE meta SET value = 1 WHERE key = 'format'"],
        ["UPDATE leaves SET logged_at = 'noon' WHERE idx = 5"],
        ["UPDATE leaves SET logged_at = -1 WHERE idx = 5"],
        ["DROP TABLE meta"],
        ["UPDATE leaves SET entry = 'text' WHERE idx = 3"],
        ["UPDATE leaves SET hashes = CAST(hashes AS TEXT) WHERE idx = 4"],
    ],
)
def test_corruption_is_detected_at_open(filled: Path, statements: list[str]) -> None:
    tamper(filled, *statements)
    with pytest.raises(LogCorrupted):
        AuditLog.open(filled)


def test_a_foreign_file_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database file" * 100)
    with pytest.raises(LogCorrupted):
        AuditLog.open(junk)
    other = tmp_path / "other.db"
    tamper(other, "CREATE TABLE notes (x)")
    with pytest.raises(LogCorrupted):
        AuditLog.open(other)


WRITER = textwrap.dedent(
    """
    import sys
    from cosigner.log import AuditLog
    log = AuditLog.open(sys.argv[1])
    for i in range(log.size, log.size + 100_000):
        log.append([b"entry %d" % i], i)
        print(i + 1, flush=True)
    """
)


def test_acknowledged_appends_survive_kill_9(path: Path) -> None:
    """A writer acknowledges each append after it returns; SIGKILL it mid-stream, twice: every
    acknowledged entry is in the reopened log and the log checks out."""
    acknowledged = 0
    for _ in range(2):
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True
        )
        deadline = time.monotonic() + 30
        assert writer.stdout is not None
        while time.monotonic() < deadline:
            line = writer.stdout.readline()
            assert line, "writer stopped early"
            acknowledged = int(line)
            if acknowledged % 40 == 0:
                break
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=10)
        writer.stdout.close()
        with AuditLog.open(path) as log:
            assert log.size >= acknowledged
            assert log.entries(0, acknowledged) == [b"entry %d" % i for i in range(acknowledged)]
            assert log.root() == Tree(log.entries(0, log.size)).root()
    assert acknowledged >= 80


def test_concurrent_appends_are_serialised(path: Path) -> None:
    with AuditLog.open(path) as log:

        def writer(name: int) -> None:
            for i in range(20):
                log.append([f"{name}-{i}".encode()], AT)

        threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        entries = log.entries(0, log.size)
        assert sorted(entries) == sorted(f"{n}-{i}".encode() for n in range(4) for i in range(20))
        assert log.root() == Tree(entries).root()
    with AuditLog.open(path) as log:
        assert log.size == 80


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.lists(st.binary(max_size=40), max_size=20), min_size=1, max_size=6))
def test_batches_build_the_same_tree(tmp_path: Path, batches: list[list[bytes]]) -> None:
    path = tmp_path / f"prop-{time.monotonic_ns()}.db"
    tree = Tree()
    with AuditLog.open(path) as log:
        for batch in batches:
            assert log.append(batch, AT) == tree.size
            for entry in batch:
                tree.append(entry)
            assert (log.size, log.root()) == (tree.size, tree.root())
    with AuditLog.open(path) as log:
        for n in range(tree.size + 1):
            assert log.root(n) == tree.root(n)
        if tree.size:
            i = tree.size // 2
            assert log.inclusion_proof(i) == tree.inclusion_proof(i)
            assert log.consistency_proof(1) == tree.consistency_proof(1)
