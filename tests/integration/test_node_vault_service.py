"""Node daemons serve the vault of the fleets they are members of (real daemons, cosigners,
orchestrator and nats-server): a fleet rolled out with a vault plan answers register and
recover to clients made from its verified validation bundle, a fleet-key rotation (the same
group continued) keeps it answering, a drain refuses registrations while recoveries go on, and a
member that left the group (retirement) no longer serves it."""

from __future__ import annotations

import pytest

from messages.inputs import RotateFleet
from messages.vault import RecordKeyDestroyed, RegistrationsClosed, UnknownVaultKey, WrongGuess
from node.vault import record as records
from tests.integration.fleetvault import (
    Follower,
    roll_out,
    start_retirement,
    started,
    until_retired,
    vault_client,
)
from tests.replay.fleet import running, wait_for
from tests.replay.rolloutbed import served_bed
from transport.bus import NoResponder, RequestTimeout

ALICE = b"backup key of alice"
BOB = b"backup key of bob"
OVERLAP_S = 8
"""Long enough for the operations the test makes while both key epochs are held."""


@pytest.fixture
async def bed(tmp_path, rollout_template):
    async with served_bed(rollout_template, tmp_path, "node-vault") as bed:
        yield bed


async def test_daemons_serve_the_vault_through_rotation_drain_and_retirement(bed):
    follower = Follower(bed.pins())
    async with running(bed.config) as orch:
        await started(orch)
        await roll_out(orch, bed, "fleet-1", vault=bed.vault())
        assert all("fleet-1" in d.fleets.vaults for d in bed.daemons)
        first = await follower.accept(orch.state.book.of_fleet("fleet-1").validation)
        assert first.artifact.vault is not None
        old = vault_client(bed, first, timeout=5)
        await old.register("alice", b"1234", ALICE)
        await old.register("carol", b"5555", b"carol's")  # never logs in during the overlap
        assert (await old.recover("alice", b"1234")).secret == ALICE

        # A rotation: during the overlap both epochs' keys are held. A client may still seal
        # to the old bundle's key; a recovery of a record made with the old epoch's OPAQUE
        # setup registers it again with the new one. Users log in with the new bundle before
        # the overlap ends: a record last changed by a request sealed to the old key, or made
        # with the old setup, cannot be read once the old keys are destroyed.
        await orch.submit(
            RotateFleet(fleet="fleet-1", requested_by="t", overlap_s=OVERLAP_S, reason="t")
        )
        await wait_for(
            lambda: orch.state.book.fleets["fleet-1"].active_epoch == 2,
            timeout=60,
            what="the rotation to activate",
        )
        second = await follower.accept(orch.state.book.of_fleet("fleet-1").validation)
        new = vault_client(bed, second, timeout=5)
        assert new.kem_id != old.kem_id and new.server_key != old.server_key
        recovered = await new.recover("alice", b"1234")
        assert (recovered.secret, recovered.generation) == (ALICE, 2), "registered again"
        await new.register("bob", b"4321", BOB)
        assert (await old.recover("bob", b"4321")).secret == BOB
        assert (await new.recover("bob", b"4321")).attempt == 2
        assert not orch.state.book.of_fleet("fleet-1").rotation.legacy_closed, "the overlap is over"

        await wait_for(
            lambda: orch.state.book.of_fleet("fleet-1").rotation.legacy_closed,
            timeout=60,
            what="the old keys to be destroyed",
        )
        # Sealed to a destroyed key, a request is refused in the clear: take the new bundle.
        with pytest.raises(UnknownVaultKey):
            await old.recover("bob", b"4321")
        latest = await follower.accept(orch.state.book.of_fleet("fleet-1").validation)
        new = vault_client(bed, latest, timeout=5)
        assert (await new.recover("bob", b"4321")).secret == BOB
        assert (await new.recover("alice", b"1234")).secret == ALICE
        # A record left in the destroyed epoch cannot be recovered, and trying spends nothing.
        for _ in range(2):
            with pytest.raises(RecordKeyDestroyed):
                await new.recover("carol", b"5555")
        held = [held_record(daemon, "carol") for daemon in bed.daemons]
        assert {record.attempts for record in held if record is not None} == {0}

        await roll_out(orch, bed, "fleet-2", vault=bed.vault())
        await start_retirement(orch, "fleet-1", "fleet-2", drain_s=3)
        await wait_for(
            lambda: all("fleet-1" in d.fleets.draining for d in bed.daemons),
            timeout=30,
            what="every member to drain",
        )
        with pytest.raises(RegistrationsClosed):
            await new.register("carol", b"1234", ALICE)
        with pytest.raises(WrongGuess):
            await new.recover("alice", b"0000")
        assert (await new.recover("alice", b"1234")).secret == ALICE

        await until_retired(orch, "fleet-1")
    assert not any("fleet-1" in d.fleets.vaults for d in bed.daemons)
    with pytest.raises((NoResponder, RequestTimeout)):
        await vault_client(bed, latest, timeout=1).recover("alice", b"1234")


def held_record(daemon, user: str):
    """``user``'s record as ``daemon``'s replica of fleet-1 holds it."""
    replica = daemon.fleets.replicas["fleet-1"][1]
    key = records.record_key(user)
    return records.decode(replica.store.load([key])[key].value)
