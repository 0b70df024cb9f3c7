"""A fleet rollout end to end on a real nats-server: five node daemons (software HSMs, three
failure domains), two cosigners that witness each other, the orchestrator with its operator
key in an HSM. Every stage's bundle is logged by both cosigners, the fleet keys are made in one
member's HSM and imported by the others, the members form the replication group and commit a
test write, and the validation bundle verifies as a client verifies it."""

from __future__ import annotations

import pytest

from messages.bundle import ACTIVATE, CEREMONY, ENROLL, PUBLISH, QUORUM, check_chain
from messages.ceremony import key_label
from messages.inputs import StartRollout
from messages.pins import QuorumFloor
from messages.plan import parse_plan
from messages.verifier_state import VerifierState
from messages.verify import verify_bundle
from orchestrator.shell.keys import load_signer, trust_for
from tests.replay.fleet import audit, running, wait_for
from tests.replay.rolloutbed import served_bed


@pytest.fixture
async def bed(tmp_path, rollout_template):
    async with served_bed(rollout_template, tmp_path, "rollout") as bed:
        yield bed


async def test_a_rollout_runs_every_stage_to_a_verified_bundle(bed):
    async with running(bed.config) as orch:
        await wait_for(lambda: orch.active, what="the orchestrator to take the lease")
        await wait_for(lambda: len(orch.state.nodes) == 5, what="five announcements")
        await orch.submit(StartRollout(plan=parse_plan(bed.plan()), requested_by="test"))
        await wait_for(
            lambda: orch.state.book.of_fleet("fleet-1").status == "active",
            timeout=60,
            what="the rollout to activate",
        )
        state = orch.state
    rollout = state.book.of_fleet("fleet-1")
    chain = state.book.fleets["fleet-1"]
    assert [b.stage for b in chain.bundles] == [ENROLL, CEREMONY, QUORUM, PUBLISH, ACTIVATE]
    assert chain.logged == 5 and check_chain(chain.bundles).serial == 5
    assert [r.node for r in chain.bundles[0].evidence.attestations] == sorted(rollout.order)
    assert chain.bundles[3].evidence.artifact == rollout.artifact.digest

    # The cosigners logged exactly this chain (and the artifact), each document once.
    for server in bed.cosigners:
        notary = server.cosigner.notary
        assert notary.size == 6
        assert all(notary.receipt(b.digest).statement.seq == b.serial for b in chain.bundles)

    # Every member holds the fleet keys the artifact publishes; they were made in one HSM.
    artifact = rollout.artifact
    for daemon in bed.daemons:
        for key in artifact.keys:
            held = daemon.hsm.public_key(key_label("fleet-1", rollout.rollout_id, key.role))
            assert (held.alg, held.public_key) == (key.alg, key.public_key)
        assert "fleet-1" in daemon.fleets.replicas
    assert {m.id for m in artifact.quorum.members} == set(rollout.order)
    assert artifact.quorum.threshold == 3

    floor = QuorumFloor(min_members=5, min_threshold=3, min_domains=3)
    accepted = verify_bundle(
        rollout.validation, bed.pins(floor), VerifierState(), artifact.not_before_ms + 1000
    )
    assert accepted.digest == artifact.digest and len(accepted.vouchers) == 2

    # The log the orchestrator wrote replays decision by decision to the same state.
    signer = load_signer(bed.settings.key_file)
    audited = await audit(bed.nc, trust_for(signer))
    assert audited.state == state
