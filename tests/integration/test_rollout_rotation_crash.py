"""Killing the orchestrator again and again during a fleet-key rotation on a real nats-server,
with real node daemons and cosigners: each time a new one takes over from the log (the old one's
tasks cancelled, its connection dropped, its lease not given back) and the rotation still ends
as it would have: new epoch active, old keys destroyed on every member after the overlap, the
chain whole, every document logged once by each cosigner, the log replaying to the same
state."""

from __future__ import annotations

import asyncio
import time

from messages.bundle import check_chain
from messages.ceremony import key_label
from messages.events import RotateFleet
from node.hsm.base import KeyNotFound
from ops.natsserver import NatsServer
from orchestrator.keys import load_signer, trust_for
from orchestrator.store import EventStore
from tests.integration.fleetvault import roll_out, started
from tests.integration.test_rollout_crash import Running
from tests.replay.fleet import audit
from tests.replay.rolloutbed import open_bed

FIRST = ["enroll", "ceremony", "quorum", "publish", "activate"]


async def test_killed_again_and_again_a_rotation_ends_the_same(tmp_path, rollout_template):
    async with NatsServer(tmp_path / "nats", name="rotation-crash") as server:
        bed = await open_bed(rollout_template, tmp_path / "run", server.url)
        try:
            running = Running(bed)
            orch = await running.start()
            await started(orch)
            await roll_out(orch, bed, "fleet-1")
            first = orch.state.book.of_fleet("fleet-1")
            rotate = RotateFleet(fleet="fleet-1", requested_by="test", overlap_s=3, reason="")
            await orch.submit(rotate)
            store = EventStore(bed.nc)
            next_kill, kills = await store.last_seq() + 4, 0
            deadline = time.monotonic() + 120
            while not orch.state.book.of_fleet("fleet-1").legacy_closed:
                assert time.monotonic() < deadline, f"not done after {kills} kills"
                if await store.last_seq() >= next_kill:
                    await running.kill()
                    kills += 1
                    orch = await running.start()
                    next_kill = await store.last_seq() + 4
                await asyncio.sleep(0.01)
            state = orch.state
            await running.kill()
            audited = await audit(bed.nc, trust_for(load_signer(bed.settings.key_file)))
            logs = [s.cosigner.notary.entries(0, s.cosigner.notary.size) for s in bed.cosigners]
            held = set()
            for daemon in bed.daemons:
                try:
                    daemon.hsm.public_key(key_label("fleet-1", first.rollout_id, "vault"))
                except KeyNotFound:
                    continue
                held.add(daemon.node_id)
        finally:
            await bed.close()
    assert kills >= 5
    chain = state.book.fleets["fleet-1"]
    assert [b.stage for b in chain.bundles] == [*FIRST, *FIRST, "destroy"]
    assert check_chain(chain.bundles).serial == 11 and chain.active_epoch == 2
    assert held == set()
    for entries in logs:  # eleven bundles and two artifacts, each once
        assert len(entries) == 13 and len(set(entries)) == 13
    assert audited.state.book == state.book
