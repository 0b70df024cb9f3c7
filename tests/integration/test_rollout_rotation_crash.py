"""Killing the orchestrator again and again during a fleet-key rotation on a real nats-server,
with real node daemons and cosigners: each time a new one takes over from the log (the old one's
tasks cancelled, its connection dropped, its lease not given back) and the rotation still ends
as it would have: new epoch active, old keys destroyed on every member after the overlap, the
chain whole, every document logged once by each cosigner, the log replaying to the same
state. An orchestrator process killed between the approval of a rotation and its activation
takes nothing from the overlap window of clients still holding the old bundle."""

from __future__ import annotations

import asyncio
import signal
import time

import aiohttp

from messages.bundle import check_chain
from messages.ceremony import key_label
from messages.inputs import RotateFleet
from node.hsm.base import KeyNotFound
from ops.natsserver import NatsServer
from orchestrator.shell.keys import load_signer, trust_for
from orchestrator.shell.store import EventStore
from tests.integration.fleetvault import roll_out, started
from tests.integration.test_rollout_crash import Running
from tests.replay.fleet import OPERATOR_TOKEN, OrchestratorProcess, audit
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
            while not orch.state.book.of_fleet("fleet-1").rotation.legacy_closed:
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
            held = {d.node_id for d in bed.daemons if _holds(d, first.rollout_id)}
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


async def test_an_orchestrator_killed_between_approval_and_activation_keeps_the_overlap(
    tmp_path, rollout_template
):
    """The operator approves a rotation's publish gate and the ``hsmfleet orchestrator``
    process is SIGKILLed at once, staying down longer than the overlap; the next process
    activates the new epoch, and the old keys stay on every member for the whole overlap after
    activation (counted from the artifact's preparation, they would go at once)."""
    overlap_s = 3
    async with NatsServer(tmp_path / "nats", name="rotation-window") as server:
        bed = await open_bed(rollout_template, tmp_path / "run", server.url)
        procs = [await OrchestratorProcess(bed.config).start()]
        try:
            headers = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
            async with aiohttp.ClientSession(headers=headers) as http:

                async def call(method: str, path: str, **kw) -> dict:
                    async with http.request(method, procs[-1].api + path, **kw) as resp:
                        return await resp.json() if resp.status < 300 else {}

                async def until(path: str, holds, what: str) -> dict:
                    deadline = time.monotonic() + 90
                    while not holds(view := await call("GET", path)):
                        assert time.monotonic() < deadline, f"{what}: {view}"
                        await asyncio.sleep(0.1)
                    return view

                async def approve(epoch: int) -> None:
                    await until(
                        "/v1/rollouts/fleet-1",
                        lambda v: v.get("epoch") == epoch and v.get("awaiting_approval"),
                        f"epoch {epoch} at the gate",
                    )
                    assert await call("POST", "/v1/rollouts/fleet-1/approve")

                await until("/v1/nodes", lambda v: len(v.get("nodes", [])) == 5, "five nodes")
                plan = bed.plan(rollout={"approve_publish": True})
                assert await call("POST", "/v1/rollouts", json=plan)
                await approve(1)
                await until("/v1/fleets/fleet-1/flow", lambda v: v.get("status") == "active", "1")
                first = (await call("GET", "/v1/fleets/fleet-1/flow"))["rollout_id"]
                assert await call("POST", "/v1/fleets/fleet-1/rotate", json={"overlap_s": 3})
                await approve(2)
                procs[-1].signal(signal.SIGKILL)
                await procs[-1].proc.wait()
                await asyncio.sleep(overlap_s + 1)
                procs.append(await OrchestratorProcess(bed.config).start())
                await until(
                    "/v1/fleets/fleet-1/flow",
                    lambda v: v.get("epoch") == 2 and v.get("legacy_closed"),
                    "the rotation to close",
                )
            audited = await audit(bed.nc, trust_for(load_signer(bed.settings.key_file)))
            held = {d.node_id for d in bed.daemons if _holds(d, first)}
        finally:
            for proc in procs:
                await proc.stop()
            await bed.close()
    times = _decided_at(audited.envelopes)
    prepared_until = audited.state.book.of_fleet("fleet-1").legacy_until_ms
    assert prepared_until < times["rollout.activated"]  # the fault: the old window was over
    assert times["destroy"] >= times["rollout.activated"] + overlap_s * 1000
    assert times["rollout.legacy_window_opened"] == times["rollout.activated"]
    assert held == set()


def _holds(daemon, rollout_id: str) -> bool:
    try:
        daemon.hsm.public_key(key_label("fleet-1", rollout_id, "vault"))
    except KeyNotFound:
        return False
    return True


def _decided_at(envelopes) -> dict[str, int]:
    """When (the deciding decision's ``now_ms``) the rotation's activation, window and destroy
    stage were decided: the last of each type in the log."""
    times, now_ms = {}, 0
    for env in envelopes:
        if env.type == "orchestrator.decision":
            now_ms = env.body["now_ms"]
        elif env.type in ("rollout.activated", "rollout.legacy_window_opened"):
            times[env.type] = now_ms
        elif env.type == "rollout.stage_entered" and env.body["stage"] == "destroy":
            times["destroy"] = now_ms
    return times
