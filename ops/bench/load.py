"""Closed-loop load for the benchmarks: writers each with one operation outstanding, timed
over a window after a warmup, and the latency quantiles of what they did."""

from __future__ import annotations

import asyncio
import math
import statistics
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

Operation = Callable[[int, int], Awaitable[None]]
"""``operation(writer, n)``: the ``n``-th operation of ``writer``."""


@dataclass(frozen=True)
class Window:
    """What the writers did in the measured window."""

    rate: float
    """Operations started in the window per second, over the time until the last one ended."""
    latencies: list[float]
    """Seconds each of those operations took."""


async def measure(
    operation: Operation,
    writers: int,
    seconds: float,
    warmup: float,
    *,
    opened: Callable[[], None] | None = None,
    closed: Callable[[], None] | None = None,
) -> Window:
    """Run ``writers`` loops of ``operation`` for ``warmup`` then ``seconds`` seconds; only
    operations started in the second span count. ``opened`` and ``closed`` are called when the
    span starts and when the last operation started in it has ended (to read counters)."""
    loop = asyncio.get_running_loop()
    start = loop.time() + warmup
    end = start + seconds
    latencies: list[float] = []
    last = start
    if opened is not None:
        loop.call_at(start, opened)

    async def writer(w: int) -> None:
        nonlocal last
        n = 0
        while (began := loop.time()) < end:
            await operation(w, n)
            n += 1
            if began >= start:
                done = loop.time()
                latencies.append(done - began)
                last = max(last, done)

    await asyncio.gather(*(writer(w) for w in range(writers)))
    if closed is not None:
        closed()
    return Window(len(latencies) / max(last - start, seconds), latencies)


def quantiles_ms(latencies: list[float]) -> tuple[float, float]:
    """The median and 99th percentile in milliseconds, interpolated within the samples (no
    extrapolation past the slowest); NaN for none."""
    if not latencies:
        return math.nan, math.nan
    if len(latencies) == 1:
        return latencies[0] * 1000, latencies[0] * 1000
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return cuts[49] * 1000, cuts[98] * 1000
