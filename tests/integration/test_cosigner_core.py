"""The cosigner's notary and witness on their real SQLite files: batches, recovery after a crash
between the log and the store, corruption and double opening refused."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from cosigner.engine import Cosigner, CosignerClosed
from cosigner.log import AuditLog, LogBusy, LogCorrupted, LogUnavailable
from cosigner.notary import DigestSeen, Notary
from cosigner.store import Seen, Store
from cosigner.testbed import Testbed, sample_artifact, sample_chain
from cosigner.witness import MalformedWitnessRequest, Witness, WitnessConflict
from messages.bundle import SerialGap
from messages.checkpoint import Checkpoint, open_checkpoint
from messages.cosigning import Signed
from messages.ids import format_time, parse_time
from messages.merkle import Tree, leaf_hash, verify_inclusion
from messages.note import Ed25519NoteSigner, Ed25519NoteVerifier
from messages.pins import CosignerPin
from messages.signing import Ed25519Signer
from transport.cosign_client import CosigningClient, Peer

NAME = "notary.example/log"
NOW = parse_time("2026-01-02T00:00:00.000Z")
KEY = Ed25519Signer.from_seed(bytes(range(7, 39)))
LOG = Ed25519NoteVerifier(NAME, KEY.public_key)


def _open(directory: Path) -> Notary:
    return Notary.open(directory, NAME, KEY)


def _check(answer: Signed, document: object) -> None:
    assert isinstance(answer, Signed), answer
    checkpoint = open_checkpoint(answer.checkpoint, NAME, LOG).checkpoint
    assert answer.statement.describes(document)
    assert answer.statement.verify(KEY.public_key, answer.signature)
    verify_inclusion(
        answer.statement.index,
        checkpoint.size,
        leaf_hash(document.to_bytes()),
        answer.inclusion,
        checkpoint.root,
    )


def test_a_batch_is_one_append_with_refusals_in_place(tmp_path: Path) -> None:
    one, two, three, four = sample_chain()
    notary = _open(tmp_path)
    try:
        answers = notary.log([one.to_json(), two.to_json(), two.to_json(), four.to_json()], NOW)
        _check(answers[0], one)
        _check(answers[1], two)
        assert isinstance(answers[2], DigestSeen)
        assert isinstance(answers[3], SerialGap)
        assert answers[0].checkpoint == answers[1].checkpoint
        assert notary.size == 2
        assert notary.rejects == {"digest_seen": 1, "serial_gap": 1}
        (answer,) = notary.log([three.to_json()], NOW)
        _check(answer, three)
        assert notary.log([], NOW) == []
    finally:
        notary.close()


def test_state_is_rebuilt_from_the_log_after_a_crash_before_signing(tmp_path: Path) -> None:
    one, two, three, _ = sample_chain()
    notary = _open(tmp_path)
    notary.log([one.to_json()], NOW)
    notary.close()
    # A crash after the log's fsync but before the statements were recorded.
    with AuditLog.open(tmp_path / "audit.db") as log:
        log.append([two.to_bytes()], NOW + 1000)
    notary = _open(tmp_path)
    try:
        assert notary.size == 2
        size, note = notary.head()
        assert size == 2
        assert open_checkpoint(note, NAME, LOG).checkpoint.size == 2
        _check(notary.receipt(two.digest), two)
        # Dated when the log recorded it, not when the notary came back.
        assert notary.receipt(two.digest).statement.logged_at == format_time(NOW + 1000)
        assert isinstance(notary.log([two.to_json()], NOW)[0], DigestSeen)
        _check(notary.log([three.to_json()], NOW)[0], three)
    finally:
        notary.close()


def _forget(directory: Path, *statements: str) -> None:
    """What a crash can do to the store, whose own statements and checkpoints are not fsynced."""
    db = sqlite3.connect(directory / "state.db", isolation_level=None)
    for statement in statements:
        db.execute(statement)
    db.close()


@pytest.mark.parametrize(
    "lost",
    [
        ["DELETE FROM statements", "DELETE FROM checkpoints"],
        ["DELETE FROM statements WHERE idx >= 2", "DELETE FROM checkpoints WHERE size > 2"],
        ["DELETE FROM statements WHERE idx = 1"],
        ["DELETE FROM checkpoints"],
    ],
)
def test_whatever_the_store_loses_is_signed_again_with_the_same_bytes(
    tmp_path: Path, lost: list[str]
) -> None:
    chain = sample_chain()
    notary = _open(tmp_path)
    try:
        for offset, bundle in enumerate(chain):
            notary.log([bundle.to_json()], NOW + offset)
        before = [notary.receipt(b.digest) for b in chain]
    finally:
        notary.close()
    _forget(tmp_path, *lost)
    notary = _open(tmp_path)
    try:
        assert [notary.receipt(b.digest) for b in chain] == before
        assert notary.store.statement_count() == len(chain)
    finally:
        notary.close()


def test_a_failed_store_write_is_made_good_by_the_next_batch(tmp_path: Path) -> None:
    one, two, three, four = sample_chain()
    notary = _open(tmp_path)
    try:
        notary.log([one.to_json()], NOW)
        db = notary.store._db  # the store refuses writes, as SQLite does on a failing disk
        db.execute("PRAGMA query_only = 1")
        with pytest.raises(LogUnavailable):
            notary.log([two.to_json(), three.to_json()], NOW + 1)
        assert notary.size == 3  # the entries are logged; only their statements are missing
        assert notary.store.statement_count() == 1
        assert isinstance(notary.log([three.to_json()], NOW + 2)[0], DigestSeen)
        db.execute("PRAGMA query_only = 0")
        (answer,) = notary.log([four.to_json()], NOW + 2)
        _check(answer, four)
        for bundle in (two, three):
            _check(notary.receipt(bundle.digest), bundle)
            assert notary.receipt(bundle.digest).statement.logged_at == format_time(NOW + 1)
    finally:
        notary.close()


def test_a_log_that_lost_signed_entries_is_refused(tmp_path: Path) -> None:
    """A log restored from an old copy: signing its head again would fork it."""
    notary = _open(tmp_path)
    try:
        notary.log([sample_chain()[0].to_json()], NOW)
    finally:
        notary.close()
    (tmp_path / "audit.db").unlink()
    with pytest.raises(LogCorrupted):
        _open(tmp_path)


def test_a_document_too_large_to_read_back_is_never_logged(tmp_path: Path) -> None:
    """Logged, it would make every audit and the notary's own restart refuse the log."""
    one = sample_chain()[0]
    notary = _open(tmp_path)
    try:
        (refused,) = notary.log([one.to_json() | {"padding": "x" * 300_000}], NOW)
        assert refused.kind == "malformed_document"
        assert notary.size == 0
        _check(notary.log([one.to_json()], NOW)[0], one)
    finally:
        notary.close()
    _open(tmp_path).close()


def test_a_log_entry_that_is_no_document_is_corruption(tmp_path: Path) -> None:
    with AuditLog.open(tmp_path / "audit.db") as log:
        log.append([b"not a document"], NOW)
    with pytest.raises(LogCorrupted):
        _open(tmp_path)


def test_a_second_opening_is_refused(tmp_path: Path) -> None:
    notary = _open(tmp_path)
    try:
        with pytest.raises(LogBusy):
            _open(tmp_path)
    finally:
        notary.close()
    _open(tmp_path).close()


def test_artifacts_and_bundles_of_many_fleets_share_one_log(tmp_path: Path) -> None:
    notary = _open(tmp_path)
    try:
        documents = [
            *sample_chain("fleet-1"),
            sample_artifact("fleet-1"),
            *sample_chain("fleet-2"),
            sample_artifact("fleet-2", epoch=5),
            sample_artifact("fleet-1", epoch=2),
        ]
        for document, answer in zip(
            documents, notary.log([d.to_json() for d in documents], NOW), strict=True
        ):
            _check(answer, document)
    finally:
        notary.close()
    notary = _open(tmp_path)
    try:
        assert notary.size == len(documents)
        refused = notary.log([sample_artifact("fleet-2", epoch=5, days=9).to_json()], NOW)
        assert refused[0].kind == "stale_epoch"
    finally:
        notary.close()


def test_witness_refuses_a_same_size_checkpoint_with_another_root(tmp_path: Path) -> None:
    log_key = Ed25519NoteSigner(NAME, KEY)
    store = Store.open(tmp_path / "state.db")
    try:
        witness = Witness("w.example/witness", Ed25519Signer.generate(), [LOG], store)
        good = Checkpoint(NAME, 1, leaf_hash(b"a")).sign(log_key).encode().decode()
        evil = Checkpoint(NAME, 1, leaf_hash(b"b")).sign(log_key).encode().decode()
        assert witness.cosign(0, [], good, 100).size == 1
        with pytest.raises(WitnessConflict) as caught:
            witness.cosign(1, [], evil, 101)
        assert caught.value.size == 1
        assert witness.latest(NAME) == Seen(NAME, 1, leaf_hash(b"a"), good)
        assert witness.rejects == {"witness_conflict": 1}
        # The contradicting checkpoint is kept: with the cosigned one it proves the fork.
        assert witness.equivocations(NAME) == [Seen(NAME, 1, leaf_hash(b"b"), evil)]
        # So is one below the latest size, though the request itself is merely out of date.
        tree = Tree([b"a", b"c"])
        grown = Checkpoint(NAME, 2, tree.root()).sign(log_key).encode().decode()
        assert witness.cosign(1, tree.consistency_proof(1), grown, 102).size == 2
        other = Checkpoint(NAME, 1, leaf_hash(b"d")).sign(log_key).encode().decode()
        with pytest.raises(MalformedWitnessRequest):
            witness.cosign(2, [], other, 103)
        assert {s.note for s in witness.equivocations(NAME)} == {evil, other}
        assert [s.size for s in witness.history(NAME)] == [1, 2]
    finally:
        store.close()


async def test_the_client_refuses_cosigners_that_are_one_party(tmp_path: Path) -> None:
    """Two peers with one key (or one name, or one id) would count twice towards k of n."""
    bed = Testbed.create(tmp_path)
    try:
        a, b = bed.peers
        for twin in (
            Peer("cosigner-c", CosignerPin("cosigner-c.example/log", a.pin.public_key)),
            Peer("cosigner-c", b.pin),
            Peer(a.id, CosignerPin("cosigner-c.example/log", KEY.public_key)),
        ):
            with pytest.raises(ValueError, match="must be distinct"):
                CosigningClient(bed.client.transport, [a, b, twin], bed.operator, 2)
    finally:
        await bed.close()


async def test_closing_finishes_the_batch_in_progress_and_fails_the_rest(tmp_path: Path) -> None:
    """No requester is left waiting, and the log is not closed under a write."""
    bed = Testbed.create(tmp_path)
    one, two, *_ = sample_chain()
    cosigner = bed.cosigners[0]
    first = asyncio.create_task(cosigner.sign(one.to_json()))
    for _ in range(1000):  # until the worker has taken the request into its batch
        await asyncio.sleep(0)
        if cosigner._queue.empty():
            break
    second = asyncio.create_task(cosigner.sign(two.to_json()))
    await asyncio.sleep(0)
    await asyncio.wait_for(bed.close(), timeout=30)
    answer = await asyncio.wait_for(first, timeout=30)
    with pytest.raises(CosignerClosed):
        await asyncio.wait_for(second, timeout=30)
    with pytest.raises(CosignerClosed):
        await cosigner.sign(two.to_json())
    with pytest.raises(CosignerClosed):
        await cosigner.cosign(0, [], answer.checkpoint)
    reopened = Cosigner.open(tmp_path / cosigner.id, bed.clock)
    try:
        assert reopened.notary.size == 1
        assert await reopened.receipt(one.digest) == answer
    finally:
        await reopened.close()


async def test_the_worker_outlives_a_witness_that_cannot_take_the_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    one, two, _, _ = sample_chain()
    bed = Testbed.create(tmp_path)
    cosigner = bed.cosigners[0]

    def broken(keys: object) -> None:
        raise RuntimeError("the witness broke")

    monkeypatch.setattr(cosigner.witness, "follow", broken)
    try:
        with capture_logs() as logs:
            first = await asyncio.wait_for(cosigner.sign(one.to_json()), timeout=30)
            second = await asyncio.wait_for(cosigner.sign(two.to_json()), timeout=30)
        assert first.statement.index == 0 and second.statement.index == 1
        assert [e["event"] for e in logs if e["log_level"] == "error"] == [
            "the witness could not take the log's keys"
        ] * 2
    finally:
        await bed.close()
