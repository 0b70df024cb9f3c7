"""The passing of time closes a node-key rotation challenge nobody answered: the core's tick
and ``overdue`` know node-key rotations (the service ticks when ``overdue`` says so)."""

from __future__ import annotations

import pytest

from messages.inputs import Tick
from messages.node_keys import NodeKeyRotationRefused, RotateNodeKey
from orchestrator.core.decisions import overdue
from tests.replay.world import World
from tests.unit.test_rollout import replays


@pytest.fixture
async def world(tmp_path):
    world = World(tmp_path)
    yield world
    await world.close()


async def test_a_tick_after_its_deadline_closes_an_unanswered_rotation(world):
    world.start()
    await world.settle()  # the members enroll in the rollout
    (challenged,) = world.drill.decide(RotateNodeKey(node_id="node-1", requested_by="test"))
    assert not overdue(world.state, world.clock())
    assert world.drill.decide(Tick()) == []
    world.clock.advance(challenged.expires_ms - world.clock() + 1)
    assert overdue(world.state, world.clock())
    (closed,) = world.drill.decide(Tick())
    assert closed == NodeKeyRotationRefused(challenged.rotation_id, "node-1", "no_answer")
    assert world.state.rotations[challenged.rotation_id].status == "refused"
    assert not overdue(world.state, world.clock())
    replays(world)
