"""A member's answer counts only for the command it answers: the reply's ``causation`` must
be the id of the command envelope the orchestrator sent (THREAT_MODEL G12). A reply to another
command (an earlier attempt, a replay) is refused with its own error and changes nothing, so
the answer to the command itself still counts."""

from __future__ import annotations

import pytest

from messages.inputs import MemberAnswer
from orchestrator.core.rollout.answers import AnswerNotForCommand
from orchestrator.core.rollout.effects import member_commands
from tests.replay.world import World
from tests.unit.test_rollout import replays


@pytest.fixture
async def world(tmp_path):
    world = World(tmp_path)
    yield world
    await world.close()


async def test_a_reply_to_another_command_is_refused_and_changes_nothing(world):
    world.start()
    await world.drill.settle(until=lambda state: bool(member_commands(state)))
    command = member_commands(world.state)[0]
    node = world.nodes.nodes[command.node_id]
    body = node.handle(command.body)

    def answer(causation: str | None) -> MemberAnswer:
        reply = node.outbox.envelope(body, causation=causation).encode()
        return MemberAnswer(command.rollout_id, command.node_id, command.step, reply, "cmd-2")

    before = world.state
    for causation in (None, "cmd-1"):
        with pytest.raises(AnswerNotForCommand) as refused:
            world.drill.decide(answer(causation))
        assert refused.value.kind == "answer_not_for_command"
        assert world.state == before
    assert world.drill.decide(answer("cmd-2"))
    member = world.state.book.rollouts[command.rollout_id].members[command.node_id]
    assert member.step != command.step
    await world.settle()
    assert world.rollout().status == "active"
    replays(world)
