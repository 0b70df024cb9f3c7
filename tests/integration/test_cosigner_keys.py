"""A cosigner's own key rotation, its recovery after crashes, witnesses following rotations,
retired fleets, and checkpoint refreshes, on real cosigner state (SQLite logs, key files)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from cosigner.engine import Cosigner
from cosigner.keys import NEXT_FILE, next_key
from cosigner.notary import OwnKeyUnavailable
from cosigner.testbed import ManualClock, Testbed, sample_artifact, sample_chain
from messages.checkpoint import open_checkpoint
from messages.cosignature import CosignatureVerifier, cosignatures
from messages.ids import format_time, parse_time
from messages.note import Ed25519NoteVerifier, Note
from messages.retirement import FleetRetired, FleetRetirement
from messages.rotation import KeyRotation
from messages.signing import Ed25519Signer

A, B = "cosigner-a.example/log", "cosigner-b.example/log"


async def _bed(tmp_path: Path) -> Testbed:
    bed = Testbed.create(tmp_path)
    for bundle in sample_chain():
        await bed.client.log(bundle)
    return bed


async def _reopen(bed: Testbed, cid: str) -> Cosigner:
    index = next(i for i, c in enumerate(bed.cosigners) if c.id == cid)
    await bed.cosigners[index].close()
    bed.cosigners[index] = Cosigner.open(bed.directory / cid, bed.clock)
    bed.client.transport.cosigners[cid] = bed.cosigners[index]
    return bed.cosigners[index]


async def test_a_rotated_log_signs_with_its_new_key_and_keeps_old_statements(
    tmp_path: Path,
) -> None:
    bed = await _bed(tmp_path)
    try:
        a = bed.cosigner("cosigner-a")
        old = a.signer.public_key
        rotation = await a.rotate_key()
        assert (rotation.version, rotation.old.public_key) == (2, old)
        assert not (bed.directory / "cosigner-a" / NEXT_FILE).exists()
        a = await _reopen(bed, "cosigner-a")
        assert a.signer.public_key == rotation.new.public_key
        assert a.notary.own_version == 2
        # Entries before the rotation keep their statements by the old key.
        first = a.notary.signed_at(0)
        assert first.statement.verify(old, first.signature)
        own = a.notary.signed_at(rotation_index := a.notary.size - 1)
        assert own.statement.index == rotation_index
        assert own.statement.verify(rotation.new.public_key, own.signature)
        note = a.notary.checkpoint()
        open_checkpoint(note, A, Ed25519NoteVerifier(A, rotation.new.public_key))
        # B logged nothing of it yet: it still checks A's checkpoints with the old key.
        logged = await bed.client.log(rotation)
        assert set(logged.answers) == {"cosigner-a", "cosigner-b"}
        b = await _reopen(bed, "cosigner-b")
        # After a restart, B still follows A's new key as a witness (rebuilt from its log).
        witnessed = await b.cosign(b.witness.latest(A).size, [], a.notary.checkpoint())
        assert witnessed.cosignature is not None
    finally:
        await bed.close()


async def test_a_witness_makes_its_verifiers_once_per_key_state(tmp_path: Path) -> None:
    """B's batches leave its witness's verifier of A's log and its cosigning key as they are;
    only a logged rotation (A's, then B's own) replaces the one whose key moved."""
    bed = await _bed(tmp_path)
    try:
        a, b = bed.cosigner("cosigner-a"), bed.cosigner("cosigner-b")
        verifier, cosigner = b.witness._logs[A], b.witness._cosigner
        batches = b.batches
        await bed.client.log(sample_artifact())
        await bed.client.log(sample_artifact(epoch=2))
        assert b.batches >= batches + 2
        assert b.witness._logs[A] is verifier and b.witness._cosigner is cosigner

        rotation = await a.rotate_key()
        await bed.client.log(rotation)
        followed = b.witness._logs[A]
        assert followed.public_key == rotation.new.public_key != verifier.public_key
        assert b.witness._cosigner is cosigner
        witnessed = await b.cosign(b.witness.latest(A).size, [], a.notary.checkpoint())
        assert witnessed.cosignature is not None

        own = await b.rotate_key()
        assert b.witness._cosigner.verifier.public_key == own.new.public_key
        assert b.witness._logs[A] is followed
        moved = b.witness._cosigner
        await bed.client.log(own)  # the client follows B's new key
        await bed.client.log(sample_artifact(epoch=3))
        assert b.witness._logs[A] is followed and b.witness._cosigner is moved
        witnessed = await b.cosign(b.witness.latest(A).size, [], a.notary.checkpoint())
        assert witnessed.cosignature is not None
        witness = CosignatureVerifier(B, own.new.public_key)
        cosigned = a.notary.checkpoint() + witnessed.cosignature
        assert len(cosignatures(open_checkpoint(cosigned, A, followed, [witness]), [witness])) == 1
    finally:
        await bed.close()


async def test_a_crash_between_logging_and_the_key_move_is_finished_on_open(
    tmp_path: Path,
) -> None:
    bed = await _bed(tmp_path)
    try:
        a = bed.cosigner("cosigner-a")
        state = bed.directory / "cosigner-a"
        new = next_key(state)
        assert next_key(state).public_key == new.public_key  # kept for a retry
        a.notary.hold(new)
        at = format_time(bed.clock())
        await a.sign(KeyRotation.make(A, 2, a.notary.signer, new, at).to_json())
        a = await _reopen(bed, "cosigner-a")  # "key" still held the old seed
        assert a.signer.public_key == new.public_key
        assert not (state / NEXT_FILE).exists()
        assert (
            Ed25519Signer.from_seed(bytes.fromhex((state / "key").read_text().strip())).public_key
            == new.public_key
        )
    finally:
        await bed.close()


async def test_a_rotation_of_its_own_log_to_a_key_it_lacks_is_refused(tmp_path: Path) -> None:
    bed = await _bed(tmp_path)
    try:
        a = bed.cosigner("cosigner-a")
        stranger = Ed25519Signer.generate()
        rotation = KeyRotation.make(A, 2, a.notary.signer, stranger, format_time(bed.clock()))
        size = a.notary.size
        with pytest.raises(OwnKeyUnavailable):
            await a.sign(rotation.to_json())
        assert a.notary.size == size
    finally:
        await bed.close()


async def test_a_retired_fleet_stays_retired_after_a_restart(tmp_path: Path) -> None:
    bed = await _bed(tmp_path)
    try:
        await bed.client.publish(sample_artifact())
        retirement = FleetRetirement(
            fleet="fleet-1",
            last_epoch=1,
            successor=None,
            retired_at=format_time(bed.clock()),
            reason="test",
        )
        await bed.client.log(retirement)
        a = await _reopen(bed, "cosigner-a")
        with pytest.raises(FleetRetired):
            await a.sign(sample_artifact(epoch=2).to_json())
        with pytest.raises(FleetRetired):
            await a.sign(retirement.to_json() | {"reason": "again"})
    finally:
        await bed.close()


async def test_refresh_adds_the_logs_timestamp_until_the_log_grows(tmp_path: Path) -> None:
    clock = ManualClock(parse_time("2026-01-01T00:00:00.000Z"))
    bed = Testbed.create(tmp_path, clock)
    try:
        await bed.client.log(sample_chain()[0])
        a = bed.cosigner("cosigner-a")
        head = a.notary.checkpoint()
        clock.advance(90_000)
        fresh = await a.refresh()
        assert a.notary.checkpoint() == fresh != head
        assert Note.parse(fresh).text == Note.parse(head).text
        own = CosignatureVerifier(A, a.signer.public_key)
        opened = open_checkpoint(fresh, A, Ed25519NoteVerifier(A, a.signer.public_key), [own])
        assert [c.timestamp for c in cosignatures(opened, [own])] == [clock() // 1000]
        await bed.client.log(sample_chain()[1])
        assert a.notary.checkpoint() == a.notary.head()[1]  # the new head, untimed
        a.start_refresh(0.01)
        a.start_refresh(0.01)  # once only
        for _ in range(200):
            if a.notary.checkpoint() != a.notary.head()[1]:
                break
            await asyncio.sleep(0.01)
        assert a.notary.checkpoint() != a.notary.head()[1]
    finally:
        await bed.close()
