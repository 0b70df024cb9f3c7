"""A member replacement end to end on a real nats-server: a member's daemon stops for good, the
spare node is attested, receives the fleet keys from a current holder, joins the replication
group by the safe membership steps (catching up from a majority before it votes: the records
committed before it joined are readable through it), and the next epoch lists it instead of
the failed member."""

from __future__ import annotations

import pytest

from messages.bundle import ACTIVATE, CEREMONY, ENROLL, PUBLISH, QUORUM, check_chain
from messages.ceremony import key_label, probe_key, probe_value
from messages.inputs import ReplaceMember, StartRollout
from messages.plan import parse_plan
from tests.replay.fleet import running, wait_for
from tests.replay.rolloutbed import MEMBERS, SPARE, served_bed

FIRST = [ENROLL, CEREMONY, QUORUM, PUBLISH, ACTIVATE]


@pytest.fixture
async def bed(tmp_path, rollout_template):
    async with served_bed(rollout_template, tmp_path, "replacement", spare=True) as bed:
        yield bed


async def test_a_failed_member_is_replaced_and_the_newcomer_catches_up(bed):
    five = [n for n, _ in MEMBERS]
    daemons = {d.node_id: d for d in bed.daemons}
    async with running(bed.config) as orch:
        await wait_for(lambda: orch.active, what="the orchestrator to take the lease")
        await wait_for(lambda: len(orch.state.nodes) == 6, what="six announcements")
        plan = parse_plan(bed.plan(members={"ids": five}))
        await orch.submit(StartRollout(plan=plan, requested_by="test"))
        await wait_for(
            lambda: orch.state.book.of_fleet("fleet-1").status == "active",
            timeout=60,
            what="the rollout to activate",
        )
        first = orch.state.book.of_fleet("fleet-1")
        failed = daemons["node-5"]
        await failed.stop()  # lost for good
        await orch.submit(
            ReplaceMember(
                fleet="fleet-1", node_id="node-5", replacement=SPARE[0], requested_by="test"
            )
        )
        await wait_for(
            lambda: orch.state.book.fleets["fleet-1"].active_epoch == 2,
            timeout=90,
            what="the replacement to activate",
        )
        state = orch.state
    replacement = state.book.of_fleet("fleet-1")
    chain = state.book.fleets["fleet-1"]
    assert [b.stage for b in chain.bundles] == FIRST + FIRST
    check_chain(chain.bundles)
    artifact = replacement.artifact
    assert {m.id for m in artifact.quorum.members} == {*five[:4], SPARE[0]}
    assert artifact.keys == first.artifact.keys
    newcomer = daemons[SPARE[0]]
    held = newcomer.hsm.public_key(key_label("fleet-1", first.rollout_id, "vault"))
    assert held.public_key == first.keys[0].public_key
    joined, replica = newcomer.fleets.replicas["fleet-1"]
    assert joined.rollout == first.rollout_id and replica.voting
    members = {k.member for k in replica.current().to_config().members}
    assert members == {*five[:4], SPARE[0]}
    for node in five[:4]:
        config = daemons[node].fleets.replicas["fleet-1"][1].current().to_config()
        assert config == replica.current().to_config() == replacement.config
    # The first epoch's record, committed before it joined, reads through the newcomer.
    read = await replica.proposer.read(probe_key(1))
    assert read.value == probe_value("fleet-1", 1)
