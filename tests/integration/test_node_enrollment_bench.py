"""The enrollment benchmark runs end to end (tiny sizes; its figures are not asserted on)."""

from ops.bench.enrollment import run


async def test_benchmark_enrolls_and_measures_both_rates():
    result = await run(nodes=2, total=40, concurrency=4, baseline=20, node_process=False)
    assert set(result) == {"enrollments", "chains", "ratio"}
    assert all(value > 0 for value in result.values())
