"""Killing the orchestrator during a rollout on a real nats-server, with real nodes and
cosigners.

- The orchestrator (the real service, in this process) is killed without warning again and
  again during the rollout (its tasks cancelled, its connection dropped, its lease not given
  back), and a new one takes over from the log each time: the rollout completes with the same
  chain of stage bundles, byte for byte, as an uninterrupted run with the same inputs, and the
  cosigners hold the same documents, each logged once.
- ``hsmfleet orchestrator`` processes are SIGKILLed during the rollout: the next one completes
  it, the chain in its log is the chain in the cosigners' logs, and the log replays.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import signal
import time

import aiohttp
import nats

from messages.canonical import canonical
from messages.inputs import StartRollout
from messages.plan import parse_plan
from messages.schema import Body
from ops.natsserver import NatsServer
from orchestrator.shell.config import Settings
from orchestrator.shell.keys import load_signer, operator_signer, trust_for
from orchestrator.shell.service import Orchestrator
from orchestrator.shell.store import EventStore
from tests.replay.fleet import OPERATOR_TOKEN, OrchestratorProcess, audit, wait_for
from tests.replay.rolloutbed import RolloutBed, open_bed
from transport.tasks import cancel_all

NOT_BEFORE = "2026-06-01T00:00:00.000Z"


def content_seed(command: Body) -> bytes:
    """Seeds as a function of the input: the same inputs give the same decisions."""
    return hashlib.sha256(b"seed\n" + canonical(command.to_json())).digest()[:16]


class Running:
    """One orchestrator in this process, killable without warning."""

    def __init__(self, bed: RolloutBed) -> None:
        self.bed = bed

    async def start(self) -> Orchestrator:
        settings = Settings.load(self.bed.config)
        self.nc = await nats.connect(settings.nats, name="orchestrator")
        self.orch = Orchestrator(
            self.nc,
            settings,
            load_signer(settings.key_file),
            operator=operator_signer(settings),
            seed=content_seed,
        )
        self.task = asyncio.create_task(self.orch.run())
        await wait_for(lambda: self.orch.active, timeout=20, what="the lease")
        return self.orch

    async def kill(self) -> None:
        await cancel_all([self.task])
        await asyncio.gather(self.task, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self.nc.close()


async def roll_out(bed: RolloutBed, kill_every: int | None) -> tuple[list[bytes], int, object]:
    """Run a rollout to active, killing the orchestrator every ``kill_every`` log entries."""
    running = Running(bed)
    orch = await running.start()
    await wait_for(lambda: len(orch.state.nodes) == 5, what="five nodes")
    plan = bed.plan("fleet-crash", validity={"days": 365, "not_before": NOT_BEFORE})
    for pin in plan["cosigners"]["pins"]:
        pin["url"] = None  # the cosigners' ports differ from run to run; the inputs must not
    await orch.submit(StartRollout(plan=parse_plan(plan), requested_by="operator"))
    store = EventStore(bed.nc)
    next_kill = await store.last_seq() + (kill_every or 0)
    kills, deadline = 0, time.monotonic() + 120
    while orch.state.book.of_fleet("fleet-crash").status != "active":
        assert time.monotonic() < deadline, f"not active after {kills} kills"
        if kill_every and await store.last_seq() >= next_kill:
            await running.kill()
            kills += 1
            orch = await running.start()
            next_kill = await store.last_seq() + kill_every
        await asyncio.sleep(0.01)
    state = orch.state
    await running.kill()
    return [b.to_bytes() for b in state.book.fleets["fleet-crash"].bundles], kills, state


def cosigned(bed: RolloutBed) -> list[list[bytes]]:
    return [s.cosigner.notary.entries(0, s.cosigner.notary.size) for s in bed.cosigners]


async def test_killed_again_and_again_the_rollout_ends_with_the_same_chain(
    tmp_path, rollout_template
):
    async with NatsServer(tmp_path / "calm-nats", name="calm") as server:
        bed = await open_bed(rollout_template, tmp_path / "calm", server.url)
        try:
            calm, _, _ = await roll_out(bed, None)
            calm_logs = cosigned(bed)
        finally:
            await bed.close()
    async with NatsServer(tmp_path / "crash-nats", name="crash") as server:
        bed = await open_bed(rollout_template, tmp_path / "crash", server.url)
        try:
            crashed, kills, state = await roll_out(bed, kill_every=6)
            crashed_logs = cosigned(bed)
            audited = await audit(bed.nc, trust_for(load_signer(bed.settings.key_file)))
        finally:
            await bed.close()
    assert kills >= 5
    assert len(calm) == 5 and crashed == calm
    assert [len(entries) for entries in crashed_logs] == [6, 6]
    assert crashed_logs == calm_logs
    assert audited.state.book == state.book


async def test_sigkilled_orchestrator_processes_hand_the_rollout_on(tmp_path, rollout_template):
    async with NatsServer(tmp_path / "nats", name="sigkill") as server:
        bed = await open_bed(rollout_template, tmp_path / "run", server.url)
        procs: list[OrchestratorProcess] = []
        try:
            proc = await OrchestratorProcess(bed.config).start()
            procs.append(proc)
            headers = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
            async with aiohttp.ClientSession(headers=headers) as http:

                async def view(path: str) -> dict:
                    async with http.get(procs[-1].api + path) as resp:
                        return await resp.json() if resp.status == 200 else {}

                deadline = time.monotonic() + 30
                while len((await view("/v1/nodes")).get("nodes", [])) < 5:
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.1)
                async with http.post(procs[-1].api + "/v1/rollouts", json=bed.plan()) as resp:
                    assert resp.status == 202, await resp.text()
                store = EventStore(bed.nc)
                for _ in range(3):
                    mark = await store.last_seq() + 12
                    await wait_for_seq(store, mark)
                    procs[-1].signal(signal.SIGKILL)
                    await procs[-1].proc.wait()
                    procs.append(await OrchestratorProcess(bed.config).start())
                deadline = time.monotonic() + 60
                while (rollout := await view("/v1/rollouts/fleet-1")).get("status") != "active":
                    assert rollout.get("status") in (None, "running"), rollout
                    assert time.monotonic() < deadline, rollout
                    await asyncio.sleep(0.2)
                chain = await view("/v1/fleets/fleet-1/stage-bundles")
            logged = cosigned(bed)
            audited = await audit(bed.nc, trust_for(load_signer(bed.settings.key_file)))
        finally:
            for proc in procs:
                await proc.stop()
            await bed.close()
    documents = [canonical(b) for b in chain["bundles"]]
    assert chain["logged"] == 5 and len(documents) == 5
    for entries in logged:
        assert len(entries) == 6  # five bundles and the artifact, none twice
        assert [e for e in entries if b"hsmfleet/stage-bundle/v1" in e] == documents
    assert audited.state.book.of_fleet("fleet-1").status == "active"


async def wait_for_seq(store: EventStore, seq: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while await store.last_seq() < seq:
        assert time.monotonic() < deadline, f"the log did not reach seq {seq}"
        await asyncio.sleep(0.02)
