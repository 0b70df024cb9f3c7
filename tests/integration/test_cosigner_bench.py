"""Smoke test of the cosigning benchmark: every rate is measured, none is timed against a goal."""

from __future__ import annotations

from ops.bench.cosign import run


async def test_benchmark_measures_every_rate_with_its_baselines() -> None:
    results = await run(bundles=4, fleets=2, verifies=5, inline=True)
    assert set(results) == {
        "bare NATS request/reply (baseline)",
        "1 cosigner, one chain",
        "1 cosigner, 2 chains in flight",
        "2-of-2 with witnessing, one chain",
        "2-of-2 with witnessing, 2 chains in flight",
        "bare Ed25519 verifications (baseline)",
        "validation bundles verified (2-of-2)",
    }
    assert all(value > 0 for value in results.values())
