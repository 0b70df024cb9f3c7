"""The orchestrator's evidence against a cosigner's log: a rolled-out fleet's chain matches the
log byte for byte; a log holding a bundle the orchestrator did not issue, or lacking one it says
was logged, is an :class:`EvidenceMismatch`."""

from __future__ import annotations

import pytest

from messages.audit import audit_entries
from messages.checkpoint import open_checkpoint
from orchestrator.shell.audit import EvidenceMismatch, FleetEvidence, cross_check
from tests.replay.world import World


@pytest.fixture
async def world(tmp_path):
    world = World(tmp_path)
    yield world
    await world.close()


async def test_evidence_matches_the_log_and_every_disagreement_is_caught(world):
    world.start()
    await world.settle()
    world.start("fleet-2", rollout={"approve_publish": True})
    await world.settle()
    cosigner = world.bed.cosigners[0]
    notary = cosigner.notary
    pin = world.bed.peers[0].pin
    signed = open_checkpoint(notary.checkpoint(), pin.name, pin.log_verifier)
    audit = audit_entries(signed.checkpoint, notary.entries(0, notary.size))
    chains = world.state.book.fleets
    evidence = [FleetEvidence(f, chains[f].bundles, chains[f].logged) for f in sorted(chains)]
    lines = cross_check(evidence, audit)
    assert lines == [
        f"  fleet fleet-1: the orchestrator's 5 stage bundle(s) match {pin.name} (5 logged there)",
        f"  fleet fleet-2: the orchestrator's 3 stage bundle(s) match {pin.name} (3 logged there)",
    ]
    # Another orchestrator's fleet in the same log is reported, not refused.
    foreign = cross_check(evidence[:1], audit)[-1]
    assert foreign == f"  fleet fleet-2: in {pin.name}, not this orchestrator's"

    one, two = evidence
    fewer = FleetEvidence(one.fleet, one.bundles[:3], 3)  # the log holds bundles 4 and 5 too
    with pytest.raises(EvidenceMismatch, match="did not issue"):
        cross_check([fewer, two], audit)
    swapped = FleetEvidence(one.fleet, (one.bundles[1], one.bundles[0], *one.bundles[2:]), 5)
    with pytest.raises(EvidenceMismatch, match="did not issue"):
        cross_check([swapped, two], audit)
    claimed = FleetEvidence(two.fleet, (*two.bundles, one.bundles[0]), 4)
    with pytest.raises(EvidenceMismatch, match="lacks"):
        cross_check([one, claimed], audit)
