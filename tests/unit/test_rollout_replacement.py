"""Member replacement in the pure core, driven by simulated nodes (real HSM and node code) and
two real cosigners: a failed member is replaced by a freshly attested node that receives the
same fleet keys from a current holder and joins the group by the safe membership steps; the
new epoch lists the new quorum; a node whose attestation fails is never sent anything; every
bad command refused without a state change."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from messages.bundle import ACTIVATE, CEREMONY, ENROLL, PUBLISH, QUORUM, check_chain
from messages.ceremony import GenerateFleetKeys, JoinFleet, key_label
from messages.events import MemberCommanded, MemberReconfigured
from messages.inputs import ReplaceMember
from messages.membership import Membership
from node.hsm.base import KeyNotFound
from node.vendor import VendorCA
from ops.sim import SimNode
from orchestrator.core.errors import RolloutConflict, UnknownNode
from orchestrator.core.fleet_errors import AlreadyAMember, FleetNotActive, NotAMember
from orchestrator.core.rollout.effects import member_commands
from orchestrator.shell.log import LogReader
from tests.replay.world import MEMBERS, World
from tests.unit.test_rollout import replays

FIRST = [ENROLL, CEREMONY, QUORUM, PUBLISH, ACTIVATE]
FIVE = [n for n, _ in MEMBERS]


@pytest.fixture
async def world(tmp_path):
    world = World(tmp_path, (*MEMBERS, ("node-6", "dc3")))
    yield world
    await world.close()


async def active(world: World, **sections) -> None:
    world.start(members={"ids": FIVE}, **sections)
    await world.settle()
    assert world.rollout().status == "active"


def logged(world: World, kind: type) -> list:
    reader = LogReader(world.drill.recorder.trust())
    entries = [reader.admit(d, "log").entry for d in world.drill.recorder.entries]
    return [e for e in entries if isinstance(e, kind)]


async def test_a_failed_member_is_replaced_by_a_freshly_attested_node(world):
    await active(world)
    first = world.rollout()
    world.nodes.down.add("node-5")  # failed
    sent = []
    answer = world.nodes.answer
    world.nodes.answer = lambda command: sent.append(command) or answer(command)
    world.replace("node-5", "node-6")
    await world.settle()
    replacement = world.rollout()
    chain = world.state.book.fleets["fleet-1"]
    assert (replacement.kind, replacement.status, chain.active_epoch) == (
        "replacement",
        "active",
        2,
    )
    assert [b.stage for b in chain.bundles] == FIRST + FIRST
    check_chain(chain.bundles)
    # Only the newcomer was challenged; the others' attestations carried over.
    assert [r.node for r in chain.bundles[5].evidence.attestations] == sorted(
        ["node-1", "node-2", "node-3", "node-4", "node-6"]
    )
    assert replacement.members["node-1"].attestation == first.members["node-1"].attestation
    # The same keys, now also in node-6's HSM under the labels they were made with.
    artifact = replacement.artifact
    assert artifact.keys == first.artifact.keys and artifact.epoch == 2
    assert {m.id for m in artifact.quorum.members} == {
        "node-1",
        "node-2",
        "node-3",
        "node-4",
        "node-6",
    }
    held = world.nodes.nodes["node-6"].hsm.public_key(
        key_label("fleet-1", first.rollout_id, "vault")
    )
    assert held.public_key == first.keys[0].public_key
    generate = [c.body for c in sent if isinstance(c.body, GenerateFleetKeys)]
    assert [r.node for g in generate for r in g.recipients] == ["node-6"]
    assert {g.rollout for g in generate} == {first.rollout_id}
    # The group changed by safe steps: each applied by every member before the next, the
    # newcomer last in the first step; node-5 is out of the final configuration.
    steps = [c.body.config for c in sent if isinstance(c.body, JoinFleet) and not c.body.probe]
    epochs = [c.epoch for c in steps]
    assert epochs == sorted(epochs) and epochs[0] == first.config.epoch + 1
    assert steps[len([s for s in steps if s.epoch == epochs[0]]) - 1] == steps[0]
    first_step = [
        c.node_id
        for c in sent
        if isinstance(c.body, JoinFleet) and c.body.config.epoch == epochs[0]
    ]
    assert first_step[-1] == "node-6" and sorted(first_step[:-1]) == [
        "node-1",
        "node-2",
        "node-3",
        "node-4",
    ]
    final = Membership.from_config(replacement.config)
    assert set(final.voters) == {"node-1", "node-2", "node-3", "node-4", "node-6"}
    assert final.prepare_quorum == final.accept_quorum == 3
    assert all(e.node_id != "node-5" for e in logged(world, MemberReconfigured))
    assert not any(c.node_id == "node-5" for c in sent)
    replays(world)


async def test_a_node_whose_attestation_fails_is_never_sent_keys(world, tmp_path):
    await active(world)
    first = world.rollout()
    stranger = VendorCA.init(tmp_path / "other-vendor", datetime.now(UTC))
    rogue = SimNode(tmp_path / "rogue", "node-7", "dc3", stranger)
    world.nodes.nodes["node-7"] = rogue
    world.drill.decide(rogue.announce())
    world.replace("node-5", "node-7")
    await world.settle()
    replacement = world.rollout()
    assert replacement.status == "paused" and replacement.members["node-7"].status == "failed"
    world.act("resume")
    await world.settle()
    assert world.rollout().status == "failed"
    assert "not admitted" in world.rollout().reason
    # Nothing but the challenge ever went to it, and its HSM holds no fleet key.
    commanded = logged(world, MemberCommanded)
    assert all(c.node_id != "node-7" for c in commanded)
    assert not [label for label in rogue.hsm.labels() if label.startswith("fleet:")]
    assert all(
        r.node != "node-7"
        for c in member_commands(world.state)
        if isinstance(c.body, GenerateFleetKeys)
        for r in c.body.recipients
    )
    world.act("abort")  # still enrolling: the replacement may be given up
    await world.settle()
    chain = world.state.book.fleets["fleet-1"]
    assert world.rollout().status == "aborted" and chain.active_rollout == first.rollout_id
    assert all(
        n.hsm.public_key(key_label("fleet-1", first.rollout_id, "vault"))
        for n in world.nodes.nodes.values()
        if n.node_id in FIVE
    )
    world.replace("node-5", "node-6")  # another node can take its place
    await world.settle()
    assert world.rollout().status == "active" and chain.active_epoch == 1
    assert world.state.book.fleets["fleet-1"].active_epoch == 2
    replays(world)


async def test_bad_replacements_are_refused_and_change_nothing(world):
    def refused(error: type, node_id: str, replacement: str) -> None:
        before = (world.state, len(world.drill.recorder.entries))
        with pytest.raises(error):
            world.drill.decide(
                ReplaceMember(
                    fleet="fleet-1", node_id=node_id, replacement=replacement, requested_by="op"
                )
            )
        assert (world.state, len(world.drill.recorder.entries)) == before

    world.start(members={"ids": FIVE}, rollout={"approve_publish": True})
    await world.settle()
    refused(FleetNotActive, "node-5", "node-6")
    world.act("approve")
    await world.settle()
    refused(NotAMember, "node-6", "node-5")
    refused(AlreadyAMember, "node-5", "node-4")
    refused(UnknownNode, "node-5", "node-9")
    world.replace("node-5", "node-6")
    await world.settle()  # waits at the plan's publish gate
    with pytest.raises(RolloutConflict):
        world.act("abort")  # past enroll: only on
    world.act("approve")
    await world.settle()
    assert world.rollout().status == "active"


async def test_after_a_replacement_a_rotation_and_a_retirement_destroy_the_keys_it_kept(world):
    await active(world)
    first = world.rollout()
    world.nodes.down.add("node-5")
    world.replace("node-5", "node-6")
    await world.settle()
    world.nodes.down.clear()
    label = key_label("fleet-1", first.rollout_id, "vault")
    world.rotate(overlap_s=60)
    await world.settle()
    rotation = world.rollout()
    assert {m.node_id for m in rotation.in_order()} == {*FIVE[:4], "node-6"}
    assert rotation.config == world.state.book.rollouts[rotation.predecessor].config
    await world.wait_out(61)
    assert world.rollout().rotation.legacy_closed
    for node_id in (*FIVE[:4], "node-6"):
        with pytest.raises(KeyNotFound):
            world.nodes.nodes[node_id].hsm.public_key(label)
    world.start("fleet-2", members={"ids": FIVE})
    await world.settle()
    world.retire("fleet-1", "fleet-2", drain_s=0)
    await world.settle()
    await world.wait_out(1)
    assert world.rollout("fleet-1").status == "retired"
    new_label = key_label("fleet-1", rotation.rollout_id, "vault")
    for node_id in (*FIVE[:4], "node-6"):
        with pytest.raises(KeyNotFound):
            world.nodes.nodes[node_id].hsm.public_key(new_label)
    replays(world)
