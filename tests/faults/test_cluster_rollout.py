"""Rollouts on a 3-server JetStream cluster (NATS permissions on) that loses servers and
orchestrators on the way.

- The server leading the event stream is stopped once the ceremony begins, and started again
  once the fleet is active;
- every server is stopped and started again on the same stores once the quorum stage begins;
- the active orchestrator process is SIGKILLed once the ceremony begins, and a standby takes
  over through the lease.

Each fault must land before the activation is logged; the stage it landed in is reported.

Each time the rollout completes to an active fleet whose validation bundle verifies, and the
log exported afterwards has an unbroken chain, no entry twice, every entry a witness read
during the faults, and replays decision by decision; the stage bundles form one chain with
contiguous serials, each logged once in the log and once by each cosigner.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from messages.bundle import CEREMONY, QUORUM
from tests.faults.clusterworld import (
    HOLDERS,
    LAYOUT,
    ClusterWorld,
    examine,
    report,
    wait_until,
)

pytestmark = [pytest.mark.faults, pytest.mark.cluster]


@pytest.fixture(scope="module")
def nats_cluster_layout():
    return LAYOUT


@pytest.fixture
async def world(tmp_path, rollout_template, nats_cluster, request):
    world = await ClusterWorld.open(
        rollout_template, tmp_path / "run", nats_cluster, request.node.name
    )
    yield world
    await world.close()


async def test_the_stream_leader_stopped_mid_rollout(world, tmp_path, request):
    orchestrator = world.orchestrator(HOLDERS[0])
    try:
        await orchestrator.start()
        await world.start_rollout(orchestrator, HOLDERS[0])
        await wait_until(lambda: CEREMONY in world.witness.stages(), "the ceremony")
        leader = await world.stream_leader()
        await world.stop_server(leader, "the event stream's leader")
        await wait_until(world.witness.activated, "an active fleet on two servers")
        await world.start_server(leader)
    finally:
        await orchestrator.stop()
    await world.check(tmp_path / "log.jsonl")
    report(request, world.tally)
    assert len(world.tally.faults) == 1 and world.tally.bundles_checked == 5


async def test_every_server_restarted_mid_rollout(world, tmp_path, request):
    orchestrator = world.orchestrator(HOLDERS[0])
    try:
        await orchestrator.start()
        await world.start_rollout(orchestrator, HOLDERS[0])
        await wait_until(lambda: QUORUM in world.witness.stages(), "the quorum stage")
        await world.restart_cluster()
        await wait_until(world.witness.activated, "an active fleet after the restart")
    finally:
        await orchestrator.stop()
    await world.check(tmp_path / "log.jsonl")
    report(request, world.tally)
    assert len(world.tally.faults) == 1 and world.tally.bundles_checked == 5


async def test_the_active_orchestrator_killed_mid_rollout(world, tmp_path, request):
    active, standby = (world.orchestrator(holder) for holder in HOLDERS)
    try:
        await active.start()
        await standby.start()
        await world.start_rollout(active, HOLDERS[0])
        await wait_until(lambda: CEREMONY in world.witness.stages(), "the ceremony")
        await world.kill(active, HOLDERS[0])
        await wait_until(lambda: world.witness.holders() == list(HOLDERS), "the standby's lease")
        await wait_until(world.witness.activated, "an active fleet under the standby")
    finally:
        await standby.stop()
        await active.stop()
    await world.check(tmp_path / "log.jsonl")
    report(request, world.tally)
    assert len(world.tally.faults) == 1 and world.tally.bundles_checked == 5


def test_the_checks_count_what_a_doctored_log_lost_or_repeats():
    golden = Path(__file__).parents[1] / "data" / "rollout-active.v2.jsonl"
    lines = golden.read_bytes().splitlines()[1:]
    seen = dict(enumerate(lines, start=1))
    intact = examine(lines, seen)
    assert (intact.entries, intact.breaks, intact.duplicates, intact.lost) == (len(lines), 0, 0, 0)

    dropped = examine(lines[:40] + lines[41:], seen)
    assert dropped.breaks == 1 and dropped.duplicates == 0
    assert dropped.lost == len(lines) - 40  # entry 41 and every one after it moved

    repeated = examine(lines[:41] + lines[40:], seen)
    assert repeated.breaks == 1 and repeated.duplicates == 1 and repeated.lost == len(lines) - 41
