"""The rollout benchmark runs: small fleets roll out to active and their bundle verifies."""

from __future__ import annotations

from ops.bench.rollout import run, verifications


async def test_the_rollout_benchmark_runs():
    results = await run([5, 7])
    assert [r["members"] for r in results] == [5, 7]
    assert all(r["orchestrator_s"] > 0 and r["decisions"] > 10 for r in results)
    assert verifications(results[-1]["bundle"], 3) > 0
