"""Rollouts in the pure core, driven by simulated nodes (real HSM and node code) and two real
cosigners: stages, the approval gate, waves, lost members by the plan's policy, pause with
stopped clocks, abort with keys destroyed, supersede, retry, and every bad input refused."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import pytest

from messages.bundle import ABORT, ACTIVATE, CEREMONY, ENROLL, PUBLISH, QUORUM
from messages.ceremony import KeyReceipt, key_label
from messages.events import MemberCommanded, MemberFailed, RolloutSuperseded
from messages.inputs import (
    ArtifactPublished,
    BundleCosigned,
    CosignerAnswer,
    MemberAnswer,
    OperateRollout,
    StartRollout,
)
from messages.note import Note
from messages.plan import BadQuorum
from messages.rejected import Rejected
from messages.signing import Ed25519Signer
from node.hsm.base import KeyNotFound
from orchestrator.core.decisions import decide
from orchestrator.core.errors import (
    CommandRefused,
    FleetActive,
    MembersUnavailable,
    RolloutConflict,
    UnknownNode,
    UnknownRollout,
)
from orchestrator.core.evidence import BadCosignerAnswers
from orchestrator.core.rollout.effects import bundles_to_log, member_commands
from orchestrator.shell.log import LogReader
from orchestrator.shell.replay import Replayer
from tests.replay.world import World
from transport.outbox import Outbox


@pytest.fixture
async def world(tmp_path):
    world = World(tmp_path)
    yield world
    await world.close()


def stages(world: World, fleet: str = "fleet-1") -> list[str]:
    return [b.stage for b in world.state.book.fleets[fleet].bundles]


def replays(world: World) -> None:
    """The recorded log re-runs decision by decision to the state the world holds."""
    reader, replayer = LogReader(world.drill.recorder.trust()), Replayer(check=True)
    for index, data in enumerate(world.drill.recorder.entries):
        replayer.apply(reader.admit(data, f"entry {index}"))
    assert replayer.finish("end") == world.state


async def test_stages_in_order_with_the_gate_before_publish(world):
    world.start(rollout={"approve_publish": True})
    await world.settle()
    rollout = world.rollout()
    assert (rollout.stage, rollout.status, rollout.awaiting_approval) == (
        "publish",
        "running",
        True,
    )
    assert stages(world) == [ENROLL, CEREMONY, QUORUM]
    assert rollout.artifact is None
    world.act("approve")
    await world.settle()
    rollout = world.rollout()
    assert rollout.status == "active" and stages(world) == [
        ENROLL,
        CEREMONY,
        QUORUM,
        PUBLISH,
        ACTIVATE,
    ]
    chain = world.state.book.fleets["fleet-1"]
    assert chain.active_epoch == 1 and chain.logged == 5
    assert chain.validation == rollout.validation
    # One member made the keys; every member holds the same ones under the rollout's labels.
    for node in world.nodes.nodes.values():
        for key in rollout.keys:
            held = node.hsm.public_key(key_label("fleet-1", rollout.rollout_id, key.role))
            assert held.public_key == key.public_key
    assert world.act("approve") == []  # approving again changes nothing
    replays(world)


async def test_waves_never_change_more_members_than_the_quorum_can_lose(world):
    world.start(rollout={"wave_size": 2})
    await world.settle()
    open_steps: Counter[str] = Counter()
    most: Counter[str] = Counter()
    reader = LogReader(world.drill.recorder.trust())
    for data in world.drill.recorder.entries:
        entry = reader.admit(data, "log").entry
        if isinstance(entry, MemberCommanded):
            open_steps[entry.step] += 1
            most[entry.step] = max(most[entry.step], open_steps[entry.step])
        elif type(entry).__name__ in ("MemberKeysImported", "MemberJoined"):
            step = "import" if type(entry).__name__ == "MemberKeysImported" else "join"
            open_steps[step] -= 1
    assert most["import"] == 2 and most["join"] == 2
    assert world.rollout().status == "active"


async def test_a_lost_member_pauses_the_rollout_and_resume_goes_on_without_it(world):
    world.nodes.down.add("node-2")
    world.start()
    await world.settle()
    assert world.rollout().stage == ENROLL  # waiting for node-2's attestation
    await world.wait_out(11)  # its deadline passes
    rollout = world.rollout()
    assert rollout.status == "paused" and "node-2" in rollout.reason
    assert rollout.members["node-2"].status == "failed"
    world.act("resume")
    await world.settle()
    rollout = world.rollout()
    assert rollout.status == "active" and rollout.members["node-2"].status == "lost"
    assert {m.id for m in rollout.artifact.quorum.members} == {
        "node-1",
        "node-3",
        "node-4",
        "node-5",
    }
    assert [
        r.node for r in world.state.book.fleets["fleet-1"].bundles[0].evidence.attestations
    ] == [
        "node-1",
        "node-3",
        "node-4",
        "node-5",
    ]
    replays(world)


async def test_with_continue_a_member_lost_in_the_ceremony_is_left_out(world):
    world.start(rollout={"on_member_loss": "continue"})
    await world.drill.settle(until=lambda state: state.book.of_fleet("fleet-1").stage == CEREMONY)
    world.nodes.down.add("node-4")
    await world.settle()
    await world.wait_out(11)
    rollout = world.rollout()
    assert rollout.status == "active"
    assert rollout.members["node-4"].status == "lost" and not rollout.members["node-4"].holds_keys
    assert "node-4" not in {m.id for m in rollout.artifact.quorum.members}


async def test_too_many_lost_members_fail_the_rollout_and_retry_brings_them_back(world):
    world.nodes.down |= {"node-1", "node-3", "node-4"}
    world.start(rollout={"on_member_loss": "continue"})
    await world.settle()
    await world.wait_out(11)
    rollout = world.rollout()
    assert rollout.status == "failed" and "too few members" in rollout.reason
    world.nodes.down.clear()
    world.act("retry")
    await world.settle()
    assert world.rollout().status == "active"
    assert len(world.rollout().artifact.quorum.members) == 5


async def test_paused_clocks_stand_still(world):
    world.nodes.down.add("node-3")
    world.start()
    await world.settle()
    world.act("pause", reason="maintenance window")
    assert world.rollout().status == "paused"
    await world.wait_out(60)  # far past every deadline, but paused
    assert world.rollout().members["node-3"].status == "active"
    world.nodes.down.clear()
    resumed = world.act("resume")
    assert resumed[0].paused_ms == 60_000
    await world.settle()
    assert world.rollout().status == "active"


async def test_abort_destroys_the_keys_and_closes_the_chain(world):
    world.start(rollout={"approve_publish": True})
    await world.settle()
    rollout = world.rollout()
    assert rollout.awaiting_approval
    world.act("abort", reason="changed our mind")
    await world.settle()
    rollout = world.rollout()
    assert rollout.status == "aborted" and rollout.reason == "changed our mind"
    assert all(m.destroyed is not None for m in rollout.in_order())
    for node in world.nodes.nodes.values():
        with pytest.raises(KeyNotFound):
            node.hsm.public_key(key_label("fleet-1", rollout.rollout_id, "vault"))
    chain = world.state.book.fleets["fleet-1"]
    assert stages(world) == [ENROLL, CEREMONY, QUORUM, ABORT] and chain.logged == 4
    assert {r.node for r in chain.bundles[-1].evidence.receipts} == set(rollout.order)
    assert world.act("abort") == []
    for action in ("resume", "pause", "retry", "approve"):
        with pytest.raises(RolloutConflict):
            world.act(action)
    replays(world)


async def test_a_new_plan_supersedes_the_rollout_in_progress(world):
    world.nodes.down.add("node-5")
    world.start(members={"count": 5, "min_per_domain": 0})
    await world.settle()
    first = world.rollout()
    world.nodes.down.clear()
    events = world.start(
        members={"count": 4, "domains": ["dc1", "dc2"], "min_per_domain": 1},
        rollout={"wave_size": 1},
    )
    superseded = [e for e in events if isinstance(e, RolloutSuperseded)]
    assert [e.rollout_id for e in superseded] == [first.rollout_id]
    await world.settle()
    second = world.rollout()
    assert second.rollout_id == superseded[0].by and second.status == "active"
    old = world.state.book.rollouts[first.rollout_id]
    assert old.status == "superseded" and old.superseded_by == second.rollout_id
    # The fleet's chain goes on across the two plans.
    chain = world.state.book.fleets["fleet-1"]
    assert [b.serial for b in chain.bundles] == list(range(1, len(chain.bundles) + 1))
    assert chain.logged == len(chain.bundles)


async def test_start_is_refused_when_the_nodes_cannot_meet_the_plan(world):
    with pytest.raises(MembersUnavailable):
        world.start(members={"count": 5, "domains": ["dc1", "dc2"]})
    with pytest.raises(MembersUnavailable):
        world.start(
            members={"count": 3, "domains": ["dc3"], "min_per_domain": 0},
            rollout={"wave_size": 1},
        )
    with pytest.raises(MembersUnavailable):  # losing dc1 would lose two of three
        world.start(
            members={"ids": ["node-1", "node-2", "node-3"], "min_per_domain": 0},
            quorum={"survive_domain_loss": True},
            rollout={"wave_size": 1},
        )
    with pytest.raises(MembersUnavailable):  # two in each of three domains are six, not three
        world.start(members={"count": 3, "min_per_domain": 2}, rollout={"wave_size": 1})
    with pytest.raises(UnknownNode):
        world.start(members={"ids": ["node-1", "node-2", "ghost"]}, rollout={"wave_size": 1})
    with pytest.raises(BadQuorum):
        world.start(quorum={"threshold": 2})
    assert not world.state.book.rollouts


async def test_an_active_fleet_is_not_replaced(world):
    world.start()
    await world.settle()
    with pytest.raises(FleetActive):
        world.start()


async def test_operator_actions_that_do_not_fit_are_refused(world):
    with pytest.raises(UnknownRollout):
        world.act("pause", fleet="nope")
    world.start()
    assert world.act("resume") == []  # it runs already
    with pytest.raises(RolloutConflict):
        world.act("retry")  # nothing failed
    with pytest.raises(CommandRefused):
        world.act("dance")
    await world.settle()
    with pytest.raises(RolloutConflict):
        world.act("approve")  # the fleet is active: nothing to approve


async def test_bad_member_answers_fail_the_member_with_a_reason(world):
    world.start(rollout={"on_member_loss": "continue"})
    await world.drill.settle(until=lambda state: bool(member_commands(state)))
    generate = member_commands(world.state)[0]
    assert generate.step == "generate"
    node = world.nodes.nodes[generate.node_id]
    stranger = Outbox(generate.node_id, Ed25519Signer.generate())
    wrong_receipt = KeyReceipt(fleet="fleet-1", epoch=1, node=generate.node_id, keys=())
    cases = [
        (b"not json", "garbled"),
        (stranger.envelope(wrong_receipt).encode(), "bad_signature"),
        (node.reply(Rejected(kind="hsm_unavailable", reason="down")), "refused: hsm_unavailable"),
        (node.reply(wrong_receipt), "bad_answer"),
    ]
    for reply, reason in cases:
        state = world.state
        events = decide(
            state,
            MemberAnswer(generate.rollout_id, generate.node_id, "generate", reply),
            world.drill.recorder.context(world.clock()),
        )
        failed = [e for e in events if isinstance(e, MemberFailed)]
        assert [(f.node_id, f.reason) for f in failed] == [(generate.node_id, reason)]
    # An answer to a step that is not open (late, repeated) changes nothing.
    late = MemberAnswer(generate.rollout_id, generate.node_id, "import", node.reply(wrong_receipt))
    assert decide(world.state, late, world.drill.recorder.context(world.clock())) == []
    with pytest.raises(UnknownRollout):
        decide(
            world.state,
            MemberAnswer("nope", generate.node_id, "generate", b""),
            world.drill.recorder.context(world.clock()),
        )


async def test_cosigners_answers_that_do_not_verify_are_refused(world):
    world.start()
    await world.drill.settle(until=lambda state: bool(bundles_to_log(state)))
    chain = world.state.book.fleets["fleet-1"]
    bundle = chain.bundles[0]
    real = await world.cosigning.log_document(bundles_to_log(world.state)[0])
    ctx = world.drill.recorder.context(world.clock())
    forged = CosignerAnswer(
        real.answers[0].cosigner,
        real.answers[0].statement,
        bytes(64),
        real.answers[0].inclusion,
        real.answers[0].checkpoint,
    )
    with pytest.raises(BadCosignerAnswers):
        decide(world.state, BundleCosigned("fleet-1", 1, bundle.digest, (forged,)), ctx)
    # One log whose checkpoint no witness cosigned is one cosigner, not the two of two.
    lone = real.answers[0]
    note = Note.parse(lone.checkpoint)
    own = Note(note.text, tuple(s for s in note.signatures if s.name == lone.cosigner))
    alone = replace(lone, checkpoint=own.encode().decode())
    with pytest.raises(BadCosignerAnswers):
        decide(world.state, BundleCosigned("fleet-1", 1, bundle.digest, (alone,)), ctx)
    with pytest.raises(RolloutConflict):
        decide(world.state, BundleCosigned("fleet-1", 1, "0" * 64, real.answers), ctx)
    with pytest.raises(UnknownRollout):
        decide(world.state, ArtifactPublished("fleet-1", 1, {}), ctx)
    assert decide(world.state, real, ctx)  # the real answers are recorded


async def test_decisions_on_rollouts_are_deterministic(world):
    plan = world.plan()
    ctx = world.drill.recorder.context(world.clock())
    command = StartRollout(plan=plan, requested_by="operator")
    assert decide(world.state, command, ctx) == decide(world.state, command, ctx)
    with pytest.raises(CommandRefused):
        decide(world.state, OperateRollout("fleet-1", "pause", "op", ""), ctx)


async def test_superseded_while_publishing_its_epoch_is_logged_but_never_countersigned(world):
    world.start(rollout={"approve_publish": False})
    await world.drill.settle(until=lambda state: state.book.of_fleet("fleet-1").artifact)
    first = world.rollout()
    assert first.artifact.epoch == 1 and first.validation is None
    world.start(rollout={"wave_size": 1})  # the new plan takes over before publication
    await world.settle()
    second = world.rollout()
    assert second.status == "active" and second.artifact.epoch == 2
    assert world.state.book.rollouts[first.rollout_id].validation is None
    assert world.state.book.fleets["fleet-1"].validation == second.validation
    # The cosigners logged epoch 2 only: a fleet's first logged artifact may start at any epoch,
    # and epoch 1 was never countersigned into a validation bundle.
    for cosigner in world.bed.cosigners:
        notary = cosigner.notary
        logged = [e for e in notary.entries(0, notary.size) if b"fleet-keys/v1" in e]
        assert logged == [second.artifact.to_bytes()]


async def test_rollouts_of_two_fleets_share_a_nodes_open_challenge(world):
    """The second rollout adopts the challenges the first left open on the same nodes: one
    attestation each answers both, and both fleets go active."""
    world.start("fleet-1")
    world.start("fleet-2")
    await world.settle()
    for fleet in ("fleet-1", "fleet-2"):
        rollout = world.rollout(fleet)
        assert rollout.status == "active", fleet
        assert all(m.attestation is not None for m in rollout.in_order())
    one, two = world.rollout("fleet-1"), world.rollout("fleet-2")
    assert [m.enrollment_id for m in one.in_order()] == [m.enrollment_id for m in two.in_order()]
    replays(world)
