"""Fleet retirement in the pure core, driven by simulated nodes (real HSM and node code) and two
real cosigners: members stop taking registrations, the fleet's keys are destroyed on every
member once a tick finds the drain window over, a ``drain`` and a ``retire`` bundle extend the
fleet's chain, the retirement document is logged and a verifier then refuses the fleet; every
bad command refused without a state change."""

from __future__ import annotations

import pytest

from messages.bundle import ACTIVATE, CEREMONY, DRAIN, ENROLL, PUBLISH, QUORUM, RETIRE, check_chain
from messages.ceremony import key_label
from messages.inputs import OperateRollout, RetirementLogged, RotateFleet, StartRetirement
from messages.retirement import FleetRetired
from messages.verifier_state import VerifierState
from messages.verify import ingest_retirement, parse_notice, verify_bundle
from node.hsm.base import KeyNotFound
from orchestrator.core.errors import RolloutConflict
from orchestrator.core.fleet_errors import (
    BadRetirement,
    FleetBusy,
    FleetNotActive,
    FleetRetiring,
    NoActiveSuccessor,
    UnknownFleet,
)
from orchestrator.core.rollout.effects import member_commands
from tests.replay.world import World
from tests.unit.test_rollout import replays

FIRST = [ENROLL, CEREMONY, QUORUM, PUBLISH, ACTIVATE]
HOUR_S = 3600


@pytest.fixture
async def world(tmp_path):
    world = World(tmp_path)
    yield world
    await world.close()


async def two_fleets(world: World) -> None:
    for fleet in ("fleet-1", "fleet-2"):
        world.start(fleet)
        await world.settle()
        assert world.rollout(fleet).status == "active"


def holders(world: World, rollout_id: str, fleet: str = "fleet-1") -> set[str]:
    out = set()
    for node in world.nodes.nodes.values():
        try:
            node.hsm.public_key(key_label(fleet, rollout_id, "vault"))
        except KeyNotFound:
            continue
        out.add(node.node_id)
    return out


def stages(world: World, fleet: str = "fleet-1") -> list[str]:
    return [b.stage for b in world.state.book.fleets[fleet].bundles]


async def test_retirement_drains_then_destroys_the_keys_and_logs_the_retirement(world):
    await two_fleets(world)
    active = world.rollout("fleet-1")
    first_bundle = world.rollout("fleet-1").validation
    everyone = set(world.nodes.nodes)
    world.retire(drain_s=HOUR_S)
    await world.settle()
    retirement = world.rollout("fleet-1")
    chain = world.state.book.fleets["fleet-1"]
    assert (retirement.kind, retirement.stage, retirement.status) == (
        "retirement",
        DRAIN,
        "running",
    )
    assert chain.retiring and stages(world) == [*FIRST, DRAIN]
    assert all("fleet-1" in n.draining for n in world.nodes.nodes.values())
    assert all("fleet-2" not in n.draining for n in world.nodes.nodes.values())
    # Recoveries go on during the drain: the keys are still on every member.
    await world.wait_out(HOUR_S - 1)
    assert holders(world, active.rollout_id) == everyone and stages(world) == [*FIRST, DRAIN]

    await world.wait_out(1)  # the window is over: keys destroyed, bundle, document
    retirement = world.rollout("fleet-1")
    chain = world.state.book.fleets["fleet-1"]
    assert retirement.status == "retired" and stages(world) == [*FIRST, DRAIN, RETIRE]
    check_chain(chain.bundles)
    assert holders(world, active.rollout_id) == set()
    assert holders(world, world.rollout("fleet-2").rollout_id, "fleet-2") == everyone
    retire = chain.bundles[-1]
    assert [r.node for r in retire.evidence.receipts] == sorted(everyone)

    notice = parse_notice(chain.retirement)
    assert (notice.logged.fleet, notice.logged.last_epoch, notice.logged.successor) == (
        "fleet-1",
        1,
        "fleet-2",
    )
    # A verifier that ingests the notice refuses the retired fleet's bundle from then on.
    pins = world.bed.pins()
    seen = verify_bundle(first_bundle, pins, VerifierState(), world.clock() - HOUR_S * 1000)
    after = ingest_retirement(chain.retirement, pins, seen.state, world.clock())
    with pytest.raises(FleetRetired):
        verify_bundle(first_bundle, pins, after, world.clock())
    # Each cosigner logged the retirement once, after the fleet's chain.
    for cosigner in world.bed.cosigners:
        assert cosigner.notary.size == 2 * (len(FIRST) + 1) + 2 + 1
    replays(world)


async def test_a_member_down_during_the_drain_is_asked_until_it_answers(world):
    await two_fleets(world)
    world.nodes.down.add("node-2")
    world.retire(drain_s=60)
    await world.settle()
    await world.wait_out(11)
    assert [c.node_id for c in member_commands(world.state)] == ["node-2"]
    assert stages(world) == FIRST
    world.nodes.down.clear()
    await world.settle()
    assert stages(world) == [*FIRST, DRAIN]
    await world.wait_out(60)
    assert world.rollout("fleet-1").status == "retired"
    replays(world)


async def test_forced_retirement_without_a_successor(world):
    world.start("fleet-1")
    await world.settle()
    with pytest.raises(NoActiveSuccessor):
        world.retire(successor=None)
    world.retire(successor=None, force=True, drain_s=0)
    await world.settle()
    await world.wait_out(1)
    assert world.rollout("fleet-1").status == "retired"
    assert parse_notice(world.state.book.fleets["fleet-1"].retirement).logged.successor is None


async def test_bad_retirements_are_refused_and_change_nothing(world):
    def refused(error: type, command) -> None:
        before = (world.state, len(world.drill.recorder.entries))
        with pytest.raises(error):
            world.drill.decide(command)
        assert (world.state, len(world.drill.recorder.entries)) == before

    def retire(fleet="fleet-1", successor="fleet-2", force=False, drain_s=60):
        return StartRetirement(
            fleet=fleet,
            successor=successor,
            force=force,
            drain_s=drain_s,
            requested_by="operator",
            reason="",
        )

    refused(UnknownFleet, retire("fleet-x"))
    world.start("fleet-1")
    await world.settle()
    refused(NoActiveSuccessor, retire())  # fleet-2 unknown
    refused(NoActiveSuccessor, retire(successor="fleet-1", force=True))
    world.start("fleet-2", rollout={"approve_publish": True})
    await world.settle()
    refused(NoActiveSuccessor, retire())  # fleet-2 not active yet
    refused(FleetNotActive, retire("fleet-2", successor="fleet-1"))
    world.act("approve", "fleet-2")
    await world.settle()
    refused(BadRetirement, retire(drain_s=-1))
    world.rotate("fleet-2", overlap_s=60)
    await world.settle()
    world.act("approve", "fleet-2")
    await world.settle()
    refused(FleetBusy, retire("fleet-2", successor="fleet-1"))  # its old keys are still there

    world.retire(drain_s=60)
    refused(FleetRetiring, retire())
    rotate = RotateFleet(fleet="fleet-1", requested_by="operator", overlap_s=60, reason="")
    refused(FleetRetiring, rotate)
    for action in ("abort", "retry", "approve"):
        refused(RolloutConflict, OperateRollout("fleet-1", action, "operator", ""))
    wrong = dict(world.state.book.fleets["fleet-2"].validation)
    refused(BadRetirement, RetirementLogged(fleet="fleet-1", notice=wrong))
    await world.settle()
    await world.wait_out(60)
    assert world.rollout("fleet-1").status == "retired"
    # The notice recorded once; the same again changes nothing.
    notice = world.state.book.fleets["fleet-1"].retirement
    assert world.drill.decide(RetirementLogged(fleet="fleet-1", notice=notice)) == []
