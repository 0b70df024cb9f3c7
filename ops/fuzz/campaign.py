"""A fuzzing campaign over the bus: candidates to each target, paced by its reject counters.

For each :class:`~ops.fuzz.targets.BusTarget` the campaign sends ``count`` candidates that the
receiver must refuse: a candidate the gate model admits is dropped unless its seed is ``deep``
(its handler refuses it anyway). Messages go out without waiting for answers, except one in
:data:`SAMPLE_EVERY`, sent as a request whose answer must be a ``rejected`` envelope of the
expected kind. The campaign waits whenever more than :data:`IN_FLIGHT` messages are not yet
counted, so receivers are never flooded past what their servers buffer; at the end of a target
the counted rejects must equal the messages sent (times the receivers that hear each).
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from messages.envelope import Envelope
from messages.errors import MessageError
from messages.rejected import Rejected
from ops.fuzz.mutate import Mutator, Seed
from ops.fuzz.targets import BusTarget

SAMPLE_EVERY = 97
IN_FLIGHT = 1000
STALL_S = 3.0
QUIET_S = 0.5
REFRESH_EVERY = 20_000
SINK = "_fuzz.sink"


@dataclass
class TargetFigures:
    """What one target got and what it counted."""

    name: str
    sent: int = 0
    dropped_valid: int = 0
    expected_rejects: int = 0
    counted_rejects: int = 0
    sampled: int = 0
    by_mutation: Counter[str] = field(default_factory=Counter)
    expected_kinds: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0
    stalled: bool = False

    @property
    def uncounted(self) -> int:
        return self.expected_rejects - self.counted_rejects


class Campaign:
    """Sends candidates of ``mutator`` through ``nc``, choosing seeds with ``rng``; ``clock_ms``
    is the receivers' clock, against which the gate model judges freshness."""

    def __init__(
        self, nc: NATS, rng: random.Random, mutator: Mutator, clock_ms: Callable[[], int]
    ) -> None:
        self.nc = nc
        self.rng = rng
        self.mutator = mutator
        self.clock_ms = clock_ms

    async def run(self, target: BusTarget, count: int) -> TargetFigures:
        """Send ``count`` candidates to ``target`` and check every one was counted."""
        figures = TargetFigures(target.name)
        started = time.perf_counter()
        seeds, seen = await self._prime(target, figures)
        baseline = target.counted()
        next_refresh = REFRESH_EVERY
        while figures.sent < count:
            if figures.sent >= next_refresh:
                next_refresh += REFRESH_EVERY
                # settle first, so that what priming sees counted is priming's own doing
                await self._pace(target, baseline, figures.sent, 0, figures)
                seeds, more = await self._prime(target, figures)  # admitted: not counted
                seen |= more
            seed = self.rng.choice(seeds)
            how, data = self.mutator.candidate(seed)
            now = self.clock_ms()
            try:
                kind = target.gate.expected_refusal(data, seen, now)
            except Exception as exc:  # the shared decoding code itself failed
                figures.failures.append(f"model raised {exc!r} on {how} {data[:200]!r}")
                continue
            if kind is None and not seed.deep:
                figures.dropped_valid += 1
                continue
            figures.sent += 1
            figures.by_mutation[how] += 1
            figures.expected_kinds[kind or "handler"] += 1
            if target.answers and figures.sent % SAMPLE_EVERY == 0:
                await self._sample(target, data, kind, figures)
            else:
                await self.nc.publish(target.subject, data, reply=SINK if target.reply else "")
            if figures.sent % 200 == 0:
                await self._pace(target, baseline, figures.sent, IN_FLIGHT, figures)
        await self._pace(target, baseline, figures.sent, 0, figures)
        figures.expected_rejects = figures.sent * target.receivers
        figures.counted_rejects = target.counted() - baseline
        if figures.uncounted:
            figures.failures.append(
                f"{figures.expected_rejects} rejects expected, {figures.counted_rejects} counted"
            )
        figures.seconds = time.perf_counter() - started
        print(f"fuzzed {target.name}: {figures.sent} in {figures.seconds:.1f} s", file=sys.stderr)
        return figures

    async def served(self, target: BusTarget) -> bool:
        """Whether anybody serves ``target`` (asked with one malformed message, refused)."""
        if not target.answers:
            return True
        try:
            await self.nc.request(target.subject, b"{}", timeout=2.0)
        except NoRespondersError:
            return False
        except NatsTimeout:
            return True
        return True

    async def _prime(
        self, target: BusTarget, figures: TargetFigures
    ) -> tuple[list[Seed], frozenset[str]]:
        """Fresh seeds; the ones receivers admit are sent once, so that their replays are
        refused. Returns the seeds and the ids sent."""
        seeds = target.seeds()
        seen = set()
        for seed in seeds:
            if seed.deep:
                continue
            before = target.counted()
            if target.answers:
                try:
                    answer = await self.nc.request(target.subject, seed.data, timeout=5.0)
                except NatsTimeout:
                    figures.failures.append(f"no answer to a valid seed {seed.env.type}")
                    continue
                if Envelope.decode(answer.data).type == Rejected.TYPE:
                    figures.failures.append(f"valid seed refused: {answer.data[:300]!r}")
            else:
                await self.nc.publish(target.subject, seed.data)
                await self.nc.flush()
            await asyncio.sleep(0.05)
            if target.counted() != before:
                figures.failures.append(f"valid seed counted as a reject: {seed.env.type}")
            seen.add(seed.env.id)
        return seeds, frozenset(seen)

    async def _sample(
        self, target: BusTarget, data: bytes, kind: str | None, figures: TargetFigures
    ) -> None:
        figures.sampled += 1
        try:
            answer = await self.nc.request(target.subject, data, timeout=5.0)
        except NatsTimeout:
            figures.failures.append(f"no answer to {data[:200]!r}")
            return
        try:
            env = Envelope.decode(answer.data)
        except MessageError as exc:
            figures.failures.append(f"unreadable answer {answer.data[:200]!r}: {exc}")
            return
        got = env.body.get("kind") if env.type == Rejected.TYPE else None
        if got is None or (kind is not None and got != kind):
            figures.failures.append(
                f"expected rejected {kind}, got {env.type} {got} for {data[:200]!r}"
            )

    async def _pace(
        self, target: BusTarget, baseline: int, sent: int, slack: int, figures: TargetFigures
    ) -> None:
        """Wait until at most ``slack`` messages sent are not yet counted, or counting stalls:
        for :data:`STALL_S` the first time (a failure), then for :data:`QUIET_S` (the target
        has shown it leaves some messages uncounted, and the run goes on to count how many)."""
        await self.nc.flush()
        expected = sent * target.receivers
        last, still = -1, time.monotonic()
        while (counted := target.counted() - baseline) < expected - slack * target.receivers:
            if counted != last:
                last, still = counted, time.monotonic()
            elif time.monotonic() - still > (QUIET_S if figures.stalled else STALL_S):
                if not figures.stalled:
                    figures.stalled = True
                    figures.failures.append(f"counting stalled at {counted} of {expected}")
                return
            await asyncio.sleep(0.002)
