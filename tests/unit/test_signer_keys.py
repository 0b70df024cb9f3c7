"""The core knows cosigners' log-key rotations: after a plan's cosigner rotates its log key,
the core refuses that cosigner's answers (signed with the new key) until the logged rotation is
recorded, then checks them with the key in force at each log position. Real cosigners (their
own durable logs and keys), simulated members (real HSM and node code); each bad rotation
notice is refused with its own error and changes nothing."""

from __future__ import annotations

import dataclasses

import pytest

from messages.bundle import check_chain
from messages.events import SignerKeyRotated
from messages.ids import format_time
from messages.inputs import RecordSignerRotation
from messages.rotation import KeyRotation
from messages.signing import Ed25519Signer
from messages.validation import LoggedNotice
from orchestrator.core.evidence import BadCosignerAnswers
from orchestrator.core.rollout.effects import bundles_to_log
from orchestrator.core.signer_keys import BadSignerRotation
from tests.replay.world import World
from tests.unit.test_rollout import replays

A = "cosigner-a"


@pytest.fixture
async def world(tmp_path):
    world = World(tmp_path)
    yield world
    await world.close()


async def rotated(world: World) -> LoggedNotice:
    """Cosigner A's log key rotated, logged by both cosigners; the shell's cosigning clients
    follow it (as the service does from the rotation chain)."""
    world.clock.advance(1000)
    rotation = await world.bed.cosigner(A).rotate_key()
    notice = world.bed.client.notice(await world.bed.client.log(rotation))
    world.cosigning.follow([notice])
    return notice


def record(world: World, notice: LoggedNotice | dict) -> list:
    body = notice.to_json() if isinstance(notice, LoggedNotice) else notice
    return world.drill.decide(RecordSignerRotation(notice=body))


async def test_a_rollout_stage_after_a_cosigner_rotation_needs_the_rotation_on_record(world):
    world.start()
    await world.settle()
    assert world.rollout().status == "active"
    notice = await rotated(world)
    world.rotate()
    # The next stage bundle is logged with A's new key: not the plan's pin, so refused.
    with pytest.raises(BadCosignerAnswers):
        await world.settle()
    [waiting] = bundles_to_log(world.state)
    before = world.state
    with pytest.raises(BadCosignerAnswers):
        world.drill.decide(await world.cosigning.log_document(waiting))
    assert world.state == before

    [event] = record(world, notice)
    assert isinstance(event, SignerKeyRotated) and event.version == 2
    assert event.old_key == world.rollout().plan.cosigners.pins[0].public_key
    assert record(world, notice) == []  # on record already
    await world.settle()
    rotation = world.rollout()
    assert (rotation.epoch, rotation.status) == (2, "active")
    check_chain(world.state.book.fleets["fleet-1"].bundles)
    replays(world)


async def test_a_second_rotation_follows_the_first_and_a_gap_is_refused(world):
    world.start()
    await world.settle()
    first, second = await rotated(world), await rotated(world)
    before = world.state
    with pytest.raises(BadSignerRotation) as refused:
        record(world, second)  # v3 while the core knows v1: the old key is not A's in force
    assert refused.value.kind == "bad_signer_rotation" and world.state == before
    record(world, first)
    [event] = record(world, second)
    assert event.version == 3
    keys = world.state.signer_keys[event.signer]
    assert [k.version for k in keys] == [1, 2, 3]
    one, two = first.logged, second.logged
    assert [k.public_key for k in keys] == [
        one.old.public_key,
        one.new.public_key,
        two.new.public_key,
    ]
    assert [k.since for k in keys] == [None, one.at, two.at]
    assert keys[0].from_index == 0 < keys[1].from_index < keys[2].from_index
    world.rotate()
    await world.settle()
    assert world.rollout().status == "active"
    replays(world)


async def test_bad_rotation_notices_are_refused_and_change_nothing(world):
    world.start()
    await world.settle()
    notice = await rotated(world)
    rotation = notice.logged
    assert isinstance(rotation, KeyRotation)
    stranger = Ed25519Signer.from_seed(bytes([7]) * 32)
    other = Ed25519Signer.from_seed(bytes([8]) * 32)
    unpinned = KeyRotation.make(rotation.signer, 2, stranger, other, format_time(world.clock()))
    single = dataclasses.replace(rotation, new_signature=rotation.old_signature)
    own_proof_only_b = dataclasses.replace(
        notice, proofs=tuple(p for p in notice.proofs if p.log != rotation.signer)
    )
    cases = {
        "not a notice": {"document": {}, "proofs": []},
        "unpinned old key": dataclasses.replace(notice, document=unpinned.to_json()).to_json(),
        "signed by one key": dataclasses.replace(notice, document=single.to_json()).to_json(),
        "not proven by its own log": own_proof_only_b,
    }
    before = world.state
    for name, bad in cases.items():
        with pytest.raises(BadSignerRotation):
            record(world, bad)
        assert world.state == before, name
    assert len(record(world, notice)) == 1
