"""Fleet-key rotation and fleet retirement end to end on a real nats-server: five node daemons,
two cosigners, the orchestrator. In a rotation the members keep serving the replication group
they formed (same replica, same store, the first epoch's records readable), a test write
commits at the new epoch, the new artifact lists both epochs' keys, and once the overlap window
is over the old keys are gone from every HSM with a ``destroy`` bundle logged by both
cosigners. A retired fleet's members drain, destroy its keys and leave its group, and the
retirement document is logged."""

from __future__ import annotations

import pytest

from messages.bundle import (
    ACTIVATE,
    CEREMONY,
    DESTROY,
    DRAIN,
    ENROLL,
    PUBLISH,
    QUORUM,
    RETIRE,
    check_chain,
)
from messages.ceremony import key_label, probe_key, probe_value
from messages.inputs import RotateFleet
from messages.verify import parse_notice
from node.hsm.base import KeyNotFound
from tests.integration.fleetvault import roll_out, start_retirement, started, until_retired
from tests.replay.fleet import running, wait_for
from tests.replay.rolloutbed import served_bed

FIRST = [ENROLL, CEREMONY, QUORUM, PUBLISH, ACTIVATE]


@pytest.fixture
async def bed(tmp_path, rollout_template):
    async with served_bed(rollout_template, tmp_path, "rotation") as bed:
        yield bed


def holders(bed, rollout_id: str, fleet: str = "fleet-1") -> set[str]:
    out = set()
    for daemon in bed.daemons:
        try:
            daemon.hsm.public_key(key_label(fleet, rollout_id, "vault"))
        except KeyNotFound:
            continue
        out.add(daemon.node_id)
    return out


async def test_rotation_keeps_the_group_and_destroys_old_keys_after_the_window(bed):
    async with running(bed.config) as orch:
        await started(orch)
        await roll_out(orch, bed, "fleet-1")
        first = orch.state.book.of_fleet("fleet-1")
        replicas = {d.node_id: d.fleets.replicas["fleet-1"][1] for d in bed.daemons}

        await orch.submit(
            RotateFleet(fleet="fleet-1", requested_by="test", overlap_s=2, reason="test")
        )
        await wait_for(
            lambda: orch.state.book.fleets["fleet-1"].active_epoch == 2,
            timeout=60,
            what="the rotation to activate",
        )
        rotation = orch.state.book.of_fleet("fleet-1")
        everyone = {d.node_id for d in bed.daemons}
        assert holders(bed, first.rollout_id) == everyone == holders(bed, rotation.rollout_id)
        for daemon in bed.daemons:
            joined, replica = daemon.fleets.replicas["fleet-1"]
            assert replica is replicas[daemon.node_id]  # the same replica kept serving
            assert joined.rollout == first.rollout_id and joined.epoch == 2
            assert replica.state_dir.name == first.rollout_id
        # The records of the first epoch carried over; the rotation's probe committed too.
        proposer = replicas["node-3"].proposer
        assert (await proposer.read(probe_key(1))).value == probe_value("fleet-1", 1)
        assert (await proposer.read(probe_key(2))).value == probe_value("fleet-1", 2)

        await wait_for(
            lambda: orch.state.book.of_fleet("fleet-1").rotation.legacy_closed,
            timeout=60,
            what="the old keys to be destroyed",
        )
        state = orch.state
    chain = state.book.fleets["fleet-1"]
    assert [b.stage for b in chain.bundles] == [*FIRST, *FIRST, DESTROY]
    assert check_chain(chain.bundles).serial == 11 and chain.logged == 11
    assert holders(bed, first.rollout_id) == set()
    assert holders(bed, rotation.rollout_id) == everyone
    for server in bed.cosigners:
        assert server.cosigner.notary.size == 11 + 2  # eleven bundles, two artifacts
    for daemon in bed.daemons:
        assert daemon.fleets.replicas["fleet-1"][1] is replicas[daemon.node_id]


async def test_retirement_drains_then_members_destroy_keys_and_leave_the_group(bed):
    async with running(bed.config) as orch:
        await started(orch)
        for fleet in ("fleet-1", "fleet-2"):  # one after the other: they share the nodes
            await roll_out(orch, bed, fleet)
        first = orch.state.book.of_fleet("fleet-1")
        await start_retirement(orch, "fleet-1", "fleet-2")
        await until_retired(orch, "fleet-1")
        state = orch.state
    chain = state.book.fleets["fleet-1"]
    assert [b.stage for b in chain.bundles] == [*FIRST, DRAIN, RETIRE]
    assert parse_notice(chain.retirement).logged.successor == "fleet-2"
    assert holders(bed, first.rollout_id) == set()
    for daemon in bed.daemons:
        assert "fleet-1" not in daemon.fleets.replicas and "fleet-1" in daemon.fleets.draining
        assert not (daemon.fleets.root / "fleet-1" / "fleet.json").exists()
        assert "fleet-2" in daemon.fleets.replicas
