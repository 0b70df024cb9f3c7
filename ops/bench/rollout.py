"""Rollout time: the orchestrator's own work to roll out fleets of 5, 50 and 200 members.

``python -m ops.bench.rollout`` rolls out one fleet per size against simulated members sharing
this process (real software HSMs and the real node ceremony code; the quorum's test write is
answered with votes signed by the members' keys, see :mod:`ops.sim`) and two real
cosigners in this process. Each rollout runs every stage to ``active``; the clock the core sees
is moved by hand, so nothing waits.

Measured per size, and as a ratio to the 5-member fleet of the same run (per member):

- orchestrator work: deciding, sealing (signing and chaining every log entry), folding, and
  reading the effects off the state; not the members' HSM work nor the cosigners';
- decisions and log entries written;
- the whole rollout's wall time, members and cosigners included, for scale.

Then the validation bundle the largest rollout published is verified by the client library
over and over: verifications per second, against bare Ed25519 verifications in the
same run (the baseline of ``ops.bench.cosign``, which measures the same for its sample bundle).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from cosigner.testbed import ManualClock, Testbed
from messages.canonical import b64
from messages.inputs import StartRollout
from messages.pins import OperatorPin, Pins
from messages.plan import parse_plan
from messages.verifier_state import VerifierState
from messages.verify import verify_bundle
from ops.bench.cosign import ed25519_baseline
from ops.sim import Drill, SimFleet
from orchestrator.shell.cosigning import Cosigning
from orchestrator.shell.recorder import Recorder

DOMAINS = ("dc1", "dc2", "dc3", "dc4", "dc5")


async def roll_out(root: Path, size: int) -> dict[str, float]:
    """One fleet of ``size`` members rolled out; what it cost."""
    clock = ManualClock(time.time_ns() // 1_000_000)
    bed = Testbed.create(root / "cosigners", clock)
    members = [(f"node-{i:03d}", DOMAINS[i % len(DOMAINS)]) for i in range(size)]
    fleet = SimFleet(root / "nodes", members)
    recorder = Recorder()
    recorder.take_lease(1, clock())
    drill = Drill(fleet, Cosigning(bed.client.transport, bed.operator), recorder, clock)
    drill.decide(fleet.policy())
    for node in fleet.nodes.values():
        drill.decide(node.announce())
    threshold = size // 2 + 1
    plan = {
        "fleet": f"bench-{size}",
        "members": {"count": size, "min_per_domain": 1 if size >= len(DOMAINS) else 0},
        "keys": {"vault": "ed25519", "signing": "ecdsa-p256-sha256"},
        "cosigners": {
            "threshold": 2,
            "pins": [
                {"id": p.id, "name": p.pin.name, "public_key": b64(p.pin.public_key)}
                for p in bed.peers
            ],
        },
        "rollout": {"wave_size": max(1, min(size - threshold, 16)), "approve_publish": False},
    }
    drill.core_s, drill.decisions = 0.0, 0
    entries_before = len(recorder.entries)
    started = time.perf_counter()
    drill.decide(StartRollout(plan=parse_plan(plan), requested_by="bench"))
    await drill.settle()
    wall = time.perf_counter() - started
    rollout = drill.recorder.state.book.of_fleet(f"bench-{size}")
    assert rollout is not None and rollout.status == "active", rollout
    result = {
        "members": size,
        "orchestrator_s": drill.core_s,
        "decisions": drill.decisions,
        "entries": len(drill.recorder.entries) - entries_before,
        "wall_s": wall,
    }
    pins = Pins(
        cosigners=tuple(p.pin for p in bed.peers),
        threshold=2,
        operator=OperatorPin(bed.operator.alg, bed.operator.public_key),
    )
    result["bundle"] = (rollout.validation, pins, rollout.artifact.not_before_ms + 1)
    await bed.close()
    return result


def verifications(bundle: tuple, count: int) -> float:
    """How many times per second the library verifies ``bundle`` from scratch."""
    validation, pins, now = bundle
    started = time.perf_counter()
    for _ in range(count):
        verify_bundle(validation, pins, VerifierState(), now)
    return count / (time.perf_counter() - started)


async def run(sizes: list[int]) -> list[dict]:
    """A rollout of each size, one after another."""
    results = []
    for size in sizes:
        with tempfile.TemporaryDirectory(prefix=f"hsmfleet-bench-rollout-{size}-") as tmp:
            results.append(await roll_out(Path(tmp), size))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[5, 50, 200])
    parser.add_argument("--verifies", type=int, default=500, help="bundle verifications")
    args = parser.parse_args()
    results = asyncio.run(run(args.sizes))
    base = results[0]
    base_per_member = base["orchestrator_s"] / base["members"]
    print("orchestrator work per rollout (deciding, sealing, folding, reading effects);")
    print(f"ratios are per member, to the {base['members']}-member fleet of this run")
    print(
        f"{'members':>8} {'orch ms':>9} {'ms/member':>10} {'ratio':>6} "
        f"{'decisions':>10} {'entries':>8} {'wall s':>7}"
    )
    for r in results:
        per_member = r["orchestrator_s"] / r["members"]
        print(
            f"{r['members']:>8} {r['orchestrator_s'] * 1000:>9.1f} {per_member * 1000:>10.2f} "
            f"{per_member / base_per_member:>6.2f} {r['decisions']:>10} {r['entries']:>8} "
            f"{r['wall_s']:>7.2f}"
        )
    rate = verifications(results[-1]["bundle"], args.verifies)
    ed25519 = ed25519_baseline(args.verifies * 8)
    print(
        f"validation bundle of the {results[-1]['members']}-member fleet verified (2-of-2): "
        f"{rate:.0f}/s; bare Ed25519 verifications {ed25519:.0f}/s; ratio {rate / ed25519:.4f}"
    )


if __name__ == "__main__":
    main()
