"""Node daemons serve the vault of the fleets they are members of (real daemons, cosigners,
orchestrator and nats-server): a rolled-out fleet answers register and recover, a fleet-key
rotation (the same group continued) keeps it answering, a drain refuses registrations while
recoveries go on, and a member that left the group (retirement) no longer serves it."""

from __future__ import annotations

import pytest

from messages.bus import NoResponder, RequestTimeout
from messages.events import RotateFleet
from messages.vault import Registration, RegistrationsClosed, WrongGuess
from messages.vault_client import VaultClient
from tests.integration.fleetvault import (
    provision_vault_keys,
    roll_out,
    start_retirement,
    started,
    until_retired,
)
from tests.replay.fleet import running, wait_for
from tests.replay.rolloutbed import served_bed

ALICE = Registration(pin=b"1234", secret=b"backup key of alice")
BOB = Registration(pin=b"4321", secret=b"backup key of bob")


@pytest.fixture
async def bed(tmp_path, rollout_template):
    async with served_bed(rollout_template, tmp_path, "node-vault") as bed:
        yield bed


async def test_daemons_serve_the_vault_through_rotation_drain_and_retirement(bed):
    keys = provision_vault_keys(bed, "fleet-1")
    client = VaultClient(bed.nc, "fleet-1", keys.session_public, timeout=5)
    async with running(bed.config) as orch:
        await started(orch)
        await roll_out(orch, bed, "fleet-1")
        assert all("fleet-1" in d.fleets.vaults for d in bed.daemons)
        await client.register("alice", ALICE)
        assert await client.recover("alice", b"1234") == ALICE.secret

        await orch.submit(RotateFleet(fleet="fleet-1", requested_by="t", overlap_s=1, reason="t"))
        await wait_for(
            lambda: orch.state.book.fleets["fleet-1"].active_epoch == 2,
            timeout=60,
            what="the rotation to activate",
        )
        assert await client.recover("alice", b"1234") == ALICE.secret
        await client.register("bob", BOB)
        assert await client.recover("bob", b"4321") == BOB.secret
        await wait_for(
            lambda: orch.state.book.of_fleet("fleet-1").legacy_closed,
            timeout=60,
            what="the old keys to be destroyed",
        )
        assert await client.recover("bob", b"4321") == BOB.secret

        await roll_out(orch, bed, "fleet-2")
        await start_retirement(orch, "fleet-1", "fleet-2", drain_s=3)
        await wait_for(
            lambda: all("fleet-1" in d.fleets.draining for d in bed.daemons),
            timeout=30,
            what="every member to drain",
        )
        with pytest.raises(RegistrationsClosed):
            await client.register("carol", ALICE)
        with pytest.raises(WrongGuess):
            await client.recover("alice", b"0000")
        assert await client.recover("alice", b"1234") == ALICE.secret

        await until_retired(orch, "fleet-1")
    assert not any("fleet-1" in d.fleets.vaults for d in bed.daemons)
    with pytest.raises((NoResponder, RequestTimeout)):
        await VaultClient(bed.nc, "fleet-1", keys.session_public, timeout=1).recover(
            "alice", b"1234"
        )
