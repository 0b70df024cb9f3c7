"""Fleet-key rotation in the pure core, driven by simulated nodes (real HSM and node code) and two
real cosigners: a new epoch made in one freshly attested member and wrapped to the others, the
artifact listing old keys with ``legacy_until``, the old keys destroyed on every member only
once a tick finds the overlap over, each step a bundle of the fleet's one chain; the schedule;
members down and orchestrator restarts; every bad command refused without a state change."""

from __future__ import annotations

import pytest

from messages.bundle import ACTIVATE, CEREMONY, DESTROY, ENROLL, PUBLISH, QUORUM, check_chain
from messages.ceremony import key_label
from messages.documents import time_ms
from messages.envelope import Envelope
from messages.events import RotationStarted
from messages.inputs import RotateFleet, Tick
from messages.log_proofs import needed_proofs
from messages.schema import REGISTRY
from messages.verification import LegacyKeyExpired, Rollback, StaleCheckpoint
from messages.verifier_state import VerifierState
from messages.verify import check_fleet_key, parse_bundle, verify_bundle
from node.hsm.base import KeyNotFound
from ops.sim import Drill
from orchestrator.core.fleet_errors import (
    BadRotationSetting,
    FleetBusy,
    FleetNotActive,
    UnknownFleet,
)
from orchestrator.core.rollout.effects import member_commands
from orchestrator.shell.recorder import Recorder
from tests.replay.world import World
from tests.unit.test_rollout import replays

HOUR_S = 3600
DAY_MS = 24 * 3600 * 1000
FIRST = [ENROLL, CEREMONY, QUORUM, PUBLISH, ACTIVATE]


@pytest.fixture
async def world(tmp_path):
    world = World(tmp_path)
    yield world
    await world.close()


async def active(world: World) -> None:
    world.start()
    await world.settle()
    assert world.rollout().status == "active"


def stages(world: World) -> list[str]:
    return [b.stage for b in world.state.book.fleets["fleet-1"].bundles]


def holds(world: World, rollout_id: str, role: str) -> set[str]:
    """The members whose HSM holds ``rollout_id``'s key of ``role``."""
    out = set()
    for node in world.nodes.nodes.values():
        try:
            node.hsm.public_key(key_label("fleet-1", rollout_id, role))
        except KeyNotFound:
            continue
        out.add(node.node_id)
    return out


async def test_rotation_lists_old_keys_until_the_overlap_ends_then_destroys_them(world):
    await active(world)
    first = world.rollout()
    everyone = set(world.nodes.nodes)
    world.rotate(overlap_s=HOUR_S)
    rotation = world.rollout()
    assert (rotation.epoch, rotation.predecessor, rotation.stage) == (2, first.rollout_id, ENROLL)
    await world.settle()
    rotation = world.rollout()
    chain = world.state.book.fleets["fleet-1"]
    assert rotation.status == "active" and chain.active_epoch == 2
    assert world.state.book.rollouts[first.rollout_id].status == "rotated"
    assert stages(world) == FIRST + FIRST  # the rotation's bundles extend the fleet's chain
    check_chain(chain.bundles)
    # Every member attested afresh for the rotation.
    assert all(m.attestation for m in rotation.in_order())
    assert rotation.members["node-1"].enrollment_id != first.members["node-1"].enrollment_id

    artifact = rotation.artifact
    current = [k for k in artifact.keys if k.legacy_until is None]
    legacy = [k for k in artifact.keys if k.legacy_until is not None]
    assert current == list(rotation.keys) and len(legacy) == len(first.keys)
    assert {k.public_key for k in legacy} == {k.public_key for k in first.keys}
    assert not {k.public_key for k in current} & {k.public_key for k in legacy}
    until = rotation.legacy_until_ms
    assert until is not None and all(time_ms(k.legacy_until, "") == until for k in legacy)
    assert chain.validation == rotation.validation and chain.validation["artifact"]["epoch"] == 2
    # The group carries over: members join their predecessor's group, same configuration.
    assert rotation.config == first.config and rotation.group == first.rollout_id

    # During the overlap, both epochs' keys are on every member.
    assert holds(world, first.rollout_id, "vault") == everyone
    assert holds(world, rotation.rollout_id, "vault") == everyone
    await world.wait_out(HOUR_S / 2)
    assert holds(world, first.rollout_id, "vault") == everyone
    assert stages(world) == FIRST + FIRST

    # A tick after the window: every member destroys the old keys, then one destroy bundle.
    world.clock.advance(until - world.clock())
    await world.settle()
    rotation = world.rollout()
    assert rotation.rotation.legacy_closed and stages(world) == [*FIRST, *FIRST, DESTROY]
    assert holds(world, first.rollout_id, "vault") == set()
    assert holds(world, first.rollout_id, "signing") == set()
    assert holds(world, rotation.rollout_id, "vault") == everyone
    destroy = world.state.book.fleets["fleet-1"].bundles[-1]
    assert [r.node for r in destroy.evidence.receipts] == sorted(everyone)
    assert {r.digest for r in destroy.evidence.receipts} == {
        m.legacy_destroyed for m in rotation.in_order()
    }
    check_chain(world.state.book.fleets["fleet-1"].bundles)
    replays(world)


async def test_a_second_rotation_follows_the_first(world):
    await active(world)
    for epoch in (2, 3):
        world.rotate(overlap_s=60)
        await world.settle()
        await world.wait_out(61)
        rotation = world.rollout()
        assert rotation.epoch == epoch and rotation.rotation.legacy_closed
    artifact = world.rollout().artifact
    assert [k.legacy_until is None for k in artifact.keys] == [True, True, False, False]
    assert stages(world) == [*FIRST, *FIRST, DESTROY, *FIRST, DESTROY]
    check_chain(world.state.book.fleets["fleet-1"].bundles)
    replays(world)


async def test_a_member_down_when_the_window_ends_destroys_when_it_returns(world):
    await active(world)
    first = world.rollout()
    world.rotate(overlap_s=60)
    await world.settle()
    world.nodes.down.add("node-4")
    await world.wait_out(61)
    rotation = world.rollout()
    assert not rotation.rotation.legacy_closed and rotation.stage == DESTROY
    assert holds(world, first.rollout_id, "vault") == {"node-4"}
    await world.wait_out(11)  # its deadline passes: it is asked again, not given up
    assert [c.node_id for c in member_commands(world.state)] == ["node-4"]
    world.nodes.down.clear()
    await world.settle()
    assert (
        world.rollout().rotation.legacy_closed and holds(world, first.rollout_id, "vault") == set()
    )
    replays(world)


async def test_scheduled_rotation_starts_from_a_tick_when_due(world):
    await active(world)
    first = world.rollout()
    world.schedule(every_days=30, overlap_s=HOUR_S)
    assert world.schedule(every_days=30, overlap_s=HOUR_S) == []  # the same again: nothing
    await world.wait_out(29 * 24 * 3600)
    assert world.rollout().rollout_id == first.rollout_id
    world.clock.advance(first.not_before_ms + 30 * DAY_MS - world.clock())
    events = world.drill.decide(Tick())
    started = [e for e in events if isinstance(e, RotationStarted)]
    assert len(started) == 1 and started[0].requested_by == "policy:schedule"
    assert started[0].overlap_s == HOUR_S
    await world.settle()
    await world.wait_out(HOUR_S)
    assert world.rollout().rotation.legacy_closed and world.rollout().epoch == 2
    # The next one is due 30 days after this rotation began, not before.
    await world.wait_out(29 * 24 * 3600)
    assert world.rollout().epoch == 2
    await world.wait_out(24 * 3600)
    assert world.rollout().epoch == 3 and world.rollout().status == "active"
    replays(world)


async def test_bad_rotations_are_refused_and_change_nothing(world):
    def refused(error: type, command: RotateFleet) -> None:
        before = (world.state, len(world.drill.recorder.entries))
        with pytest.raises(error):
            world.drill.decide(command)
        assert (world.state, len(world.drill.recorder.entries)) == before

    def rotate(fleet: str = "fleet-1", overlap_s: int | None = 60) -> RotateFleet:
        return RotateFleet(fleet=fleet, requested_by="operator", overlap_s=overlap_s, reason="")

    refused(UnknownFleet, rotate("fleet-x"))
    world.start(rollout={"approve_publish": True})
    await world.settle()
    refused(FleetNotActive, rotate())  # still waiting at the publish gate
    world.act("approve")
    await world.settle()
    refused(BadRotationSetting, rotate(overlap_s=0))
    with pytest.raises(BadRotationSetting):
        world.schedule(every_days=1, overlap_s=2 * 24 * 3600)  # overlap past the next one
    world.rotate(overlap_s=60)
    refused(FleetBusy, rotate())  # the rotation is under way
    await world.settle()
    assert world.rollout().awaiting_approval  # the plan's gate holds for rotations too
    world.act("approve")
    await world.settle()
    refused(FleetBusy, rotate())  # its old keys are not destroyed yet
    await world.wait_out(61)
    world.rotate(overlap_s=60)
    assert world.rollout().epoch == 3


async def test_a_rotation_aborted_midway_destroys_only_its_own_keys(world):
    await active(world)
    first = world.rollout()
    world.rotate(overlap_s=60)
    world.nodes.down.add("node-5")  # the rotation pauses on its lost member
    await world.settle()
    await world.wait_out(11)
    rotation = world.rollout()
    assert rotation.status == "paused"
    world.act("abort")
    world.nodes.down.clear()
    await world.settle()
    chain = world.state.book.fleets["fleet-1"]
    assert world.rollout().status == "aborted" and chain.active_epoch == 1
    assert chain.active_rollout == first.rollout_id
    assert holds(world, rotation.rollout_id, "vault") == set()
    assert holds(world, first.rollout_id, "vault") == set(world.nodes.nodes)
    assert world.state.book.rollouts[first.rollout_id].status == "active"
    world.rotate(overlap_s=60)  # a new rotation may start
    await world.settle()
    assert world.rollout().status == "active"
    assert world.state.book.fleets["fleet-1"].active_epoch == world.rollout().epoch == 2
    replays(world)


class RestartingDrill(Drill):
    """Restarts the orchestrator from its log after every decision once a rotation began:
    its memory gone, only its log left, every decision in it re-run on the way back."""

    restarts = 0

    def decide(self, command):
        events = super().decide(command)
        if any(r.predecessor for r in self.recorder.state.book.rollouts.values()):
            signer = self.recorder.signer
            self.recorder = Recorder.resume(self.recorder.entries, signer, "orch-a")
            self.recorder.take_lease(self.recorder.epoch + 1, self.clock())
            self.restarts += 1
        return events


async def test_orchestrator_restarted_at_every_point_of_a_rotation_ends_the_same(world):
    await active(world)
    first = world.rollout()
    world.drill = RestartingDrill(world.nodes, world.cosigning, world.recorder, world.clock)
    world.rotate(overlap_s=60)
    await world.settle()
    await world.wait_out(61)
    rotation = world.rollout()
    assert world.drill.restarts > 20
    assert rotation.rotation.legacy_closed and stages(world) == [*FIRST, *FIRST, DESTROY]
    assert holds(world, first.rollout_id, "vault") == set()
    assert holds(world, rotation.rollout_id, "vault") == set(world.nodes.nodes)
    check_chain(world.state.book.fleets["fleet-1"].bundles)
    # Each cosigner logged every bundle and both artifacts once.
    for cosigner in world.bed.cosigners:
        assert cosigner.notary.size == 2 * len(FIRST) + 1 + 2
    replays(world)


async def test_a_verifier_follows_the_rotation_and_refuses_old_keys_after_the_window(world):
    await active(world)
    first = world.rollout()
    pins = world.bed.pins()
    seen = verify_bundle(first.validation, pins, VerifierState(), world.clock())
    old_key = first.artifact.keys[0]
    world.rotate(overlap_s=HOUR_S)
    await world.settle()
    rotation = world.rollout()
    bundle = parse_bundle(rotation.validation)
    proofs = {
        (log, old, new): next(
            c for c in world.bed.cosigners if c.notary.name == log
        ).notary.consistency_proof(old, new)
        for log, old, new, _ in needed_proofs(bundle, pins, seen.state)
    }
    accepted = verify_bundle(bundle, pins, seen.state, world.clock(), proofs)
    assert accepted.artifact.epoch == 2
    new_key = rotation.keys[0]
    assert check_fleet_key(accepted.artifact, old_key.public_key, "vault", world.clock())
    assert check_fleet_key(accepted.artifact, new_key.public_key, "vault", world.clock())
    until = rotation.legacy_until_ms
    with pytest.raises(LegacyKeyExpired):
        check_fleet_key(accepted.artifact, old_key.public_key, "vault", until)
    assert check_fleet_key(accepted.artifact, new_key.public_key, "vault", until)
    # A verifier that took epoch 2 refuses the first artifact again (no rollback).
    with pytest.raises((Rollback, StaleCheckpoint)):
        verify_bundle(first.validation, pins, accepted.state, world.clock())


def _rotation_member_doing(state, step: str) -> str | None:
    """A member of the running rotation with ``step`` open (``enroll``: challenged, not yet
    attested), if any."""
    rotation = next((r for r in state.book.rollouts.values() if r.kind == "rotation"), None)
    if rotation is None:
        return None
    for member in rotation.in_order():
        if step == ENROLL and member.enrollment_id and member.attestation is None:
            return member.node_id
        if member.step == step:
            return member.node_id
    return None


@pytest.mark.parametrize("step", [ENROLL, "generate", "import", "join", "probe", DESTROY])
async def test_a_member_down_at_any_step_of_a_rotation_ends_the_same(world, step):
    await active(world)
    first = world.rollout()
    world.rotate(overlap_s=60)
    if step == DESTROY:
        await world.settle()
        world.clock.advance(60_000)  # the overlap is over: the next tick starts destroying
    await world.drill.settle(until=lambda state: _rotation_member_doing(state, step) is not None)
    node = _rotation_member_doing(world.state, step)
    assert node is not None
    world.nodes.down.add(node)
    await world.wait_out(5)  # within its deadline: the others go on as far as they can
    world.nodes.down.clear()
    await world.settle()
    await world.wait_out(61)
    rotation = world.rollout()
    assert rotation.status == "active" and rotation.rotation.legacy_closed
    assert stages(world) == [*FIRST, *FIRST, DESTROY]
    assert {m.id for m in rotation.artifact.quorum.members} == set(world.nodes.nodes)
    assert holds(world, first.rollout_id, "vault") == set()
    assert holds(world, rotation.rollout_id, "vault") == set(world.nodes.nodes)
    replays(world)


async def test_a_member_down_past_its_deadline_pauses_and_retry_ends_the_same(world):
    await active(world)
    world.rotate(overlap_s=60)
    await world.drill.settle(until=lambda state: _rotation_member_doing(state, "import"))
    node = _rotation_member_doing(world.state, "import")
    world.nodes.down.add(node)
    await world.wait_out(11)
    assert world.rollout().status == "paused" and node in world.rollout().reason
    world.nodes.down.clear()
    world.act("retry")
    await world.settle()
    await world.wait_out(61)
    rotation = world.rollout()
    assert rotation.rotation.legacy_closed and stages(world) == [*FIRST, *FIRST, DESTROY]
    assert {m.id for m in rotation.artifact.quorum.members} == set(world.nodes.nodes)
    replays(world)


async def test_time_lost_before_activation_does_not_shorten_the_overlap(world):
    """The window counts from activation, when clients can first fetch the new bundle: an
    orchestrator down between preparing the artifact and activating it (here for twice the
    overlap) takes nothing from clients still holding the old bundle."""
    await active(world)
    first = world.rollout()
    everyone = set(world.nodes.nodes)
    world.rotate(overlap_s=HOUR_S)
    await world.drill.settle(until=lambda s: s.book.of_fleet("fleet-1").artifact is not None)
    prepared = world.clock()
    assert world.rollout().legacy_until_ms == prepared + HOUR_S * 1000
    world.clock.advance(2 * HOUR_S * 1000)
    await world.settle()
    rotation, activated = world.rollout(), world.clock()
    assert rotation.status == "active" and rotation.legacy_ends_ms == activated + HOUR_S * 1000
    assert holds(world, first.rollout_id, "vault") == everyone
    await world.wait_out(HOUR_S - 1)
    assert holds(world, first.rollout_id, "vault") == everyone
    assert stages(world) == FIRST + FIRST
    await world.wait_out(1)
    assert (
        world.rollout().rotation.legacy_closed and holds(world, first.rollout_id, "vault") == set()
    )
    replays(world)


async def test_rotations_recorded_before_keep_their_window_from_preparation(world):
    """A command recorded as version 1 decides again as it did: its window opens with the
    artifact, so an old log replays unchanged."""
    await active(world)
    recorded = REGISTRY.parse(
        Envelope(
            type=RotateFleet.TYPE,
            v=1,
            id="input",
            at="1970-01-01T00:00:00.000Z",
            source="log",
            body={"fleet": "fleet-1", "requested_by": "op", "overlap_s": 60, "reason": ""},
        )
    )
    assert recorded.overlap_from_activation is False
    world.drill.decide(recorded)
    await world.drill.settle(until=lambda s: s.book.of_fleet("fleet-1").artifact is not None)
    until = world.rollout().legacy_until_ms
    world.clock.advance(120_000)
    await world.settle()
    rotation = world.rollout()
    assert rotation.rotation.legacy_closed and rotation.rotation.window_until_ms is None
    assert until is not None and until < world.clock()
    replays(world)
