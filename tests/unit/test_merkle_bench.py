"""The audit-log benchmark runs end to end (tiny sizes; its figures are not asserted on)."""

from ops.bench.merkle import run


def test_benchmark_measures_every_rate() -> None:
    results = run(entries=300, single=20, batch=50, proofs=50, seed=1)
    assert len(results) == 9
    assert "sha256 leaf hashing (baseline)" in results
    assert all(value > 0 for value in results.values())
