"""An orchestrator killed at any point of a rollout and started again from its log completes the
rollout with the same chain of stage bundles, byte for byte, as an uninterrupted run with the
same inputs, and no document is signed twice.

The orchestrator is restarted after every single decision (its memory gone, only its log left,
every decision in it re-run on the way back), and once after each cosigning effect whose
outcome it never recorded (the cosigners signed, the orchestrator died before writing it down):
asked again, the cosigners answer with their receipt instead of signing a second time.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

from cosigner.testbed import ManualClock, Testbed
from messages.canonical import b64
from messages.inputs import BundleCosigned, StartRollout
from messages.plan import parse_plan
from messages.schema import Body
from messages.signing import Ed25519Signer
from ops.sim import Drill, SimFleet
from orchestrator.core.rollout.effects import ToLog
from orchestrator.shell.cosigning import Cosigning
from orchestrator.shell.recorder import Recorder
from tests.replay.rolloutbed import MEMBERS, SEALING_KEY, SeededHsm

SIGNER = Ed25519Signer.from_seed(hashlib.sha256(b"crash test orchestrator").digest())
NOT_BEFORE = "2026-06-01T00:00:00.000Z"


def seeded(state_dir: Path, node_id: str) -> SeededHsm:
    return SeededHsm(state_dir, SEALING_KEY, node_id.encode())


class CrashingDrill(Drill):
    """Restarts the orchestrator from its log after every decision once the rollout started."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.restarts = 0

    def decide(self, command: Body) -> list:
        events = super().decide(command)
        if not self.recorder.state.book.rollouts:
            return events  # the rollout has not started yet
        self.recorder = Recorder.resume(self.recorder.entries, SIGNER, "orch-a")
        self.recorder.take_lease(self.recorder.epoch + 1, self.clock())
        self.restarts += 1
        return events


class ForgetfulCosigning(Cosigning):
    """Cosigning whose first answer for each document dies with the orchestrator."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lost: list[str] = []

    async def log_document(self, job: ToLog) -> BundleCosigned:
        answer = await super().log_document(job)
        if job.key not in self.lost:
            self.lost.append(job.key)
            return await super().log_document(job)  # asked again by the next orchestrator
        return answer


async def run(
    root: Path, world: SimFleet, drill_class: type[Drill], cosigning_class: type, now_ms: int
):
    clock = ManualClock(now_ms)
    bed = Testbed.create(root, clock)
    recorder = Recorder(SIGNER, "orch-a")
    recorder.take_lease(1, clock())
    cosigning = cosigning_class(bed.client.transport, bed.operator)
    drill = drill_class(world, cosigning, recorder, clock)
    drill.decide(world.policy())
    for node in world.nodes.values():
        drill.decide(node.announce())
    plan = {
        "fleet": "fleet-crash",
        "members": {"count": 5, "min_per_domain": 1},
        "keys": {"vault": "ed25519", "signing": "ecdsa-p256-sha256"},
        "validity": {"days": 365, "not_before": NOT_BEFORE},
        "cosigners": {
            "threshold": 2,
            "pins": [
                {"id": p.id, "name": p.pin.name, "public_key": b64(p.pin.public_key)}
                for p in bed.peers
            ],
        },
        "rollout": {"wave_size": 2, "approve_publish": False},
    }
    drill.decide(StartRollout(plan=parse_plan(plan), requested_by="operator"))
    await drill.settle()
    state = drill.recorder.state
    logs = [c.notary for c in bed.cosigners]
    entries = [n.entries(0, n.size) for n in logs]
    await bed.close()
    return state, entries, drill, cosigning


async def test_restarted_at_every_point_the_chain_is_the_same_bytes(tmp_path):
    # Both runs share the nodes (their HSMs) and their start time: the rollout gets the same id
    # in both, so the second run's members find the first run's keys under the same labels.
    world = SimFleet(tmp_path / "nodes", list(MEMBERS), hsm=seeded)
    now_ms = time.time_ns() // 1_000_000
    calm, calm_logs, _, _ = await run(tmp_path / "calm", world, Drill, Cosigning, now_ms)
    crashed, crashed_logs, drill, cosigning = await run(
        tmp_path / "crashed", world, CrashingDrill, ForgetfulCosigning, now_ms
    )
    assert calm.book.of_fleet("fleet-crash").status == "active"
    assert crashed.book.of_fleet("fleet-crash").status == "active"
    assert drill.restarts > 20 and len(cosigning.lost) == 5

    calm_chain = [b.to_bytes() for b in calm.book.fleets["fleet-crash"].bundles]
    crashed_chain = [b.to_bytes() for b in crashed.book.fleets["fleet-crash"].bundles]
    assert len(calm_chain) == 5 and crashed_chain == calm_chain

    # Each cosigner logged the five bundles and the artifact once, the same bytes either way.
    assert [len(entries) for entries in crashed_logs] == [6, 6]
    assert crashed_logs == calm_logs
