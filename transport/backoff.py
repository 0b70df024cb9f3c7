"""Pauses between the attempts of something retried: exponential, capped, and jittered, so that
parties retrying the same thing after the same failure (members after a server restart,
orchestrator effects after a leader election) spread out instead of arriving together."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable


class Backoff:
    """The pauses of one retried operation: the n-th is drawn uniformly from the upper half of
    ``first * 2**n``, capped at ``longest``."""

    def __init__(
        self, first: float, longest: float, *, draw: Callable[[], float] = random.random
    ) -> None:
        if not 0 < first <= longest:
            raise ValueError("a backoff needs 0 < first <= longest")
        self.longest = longest
        self._ceiling = first
        self._draw = draw

    def pause(self) -> float:
        """The next pause, in seconds."""
        ceiling = self._ceiling
        self._ceiling = min(ceiling * 2, self.longest)
        return ceiling * (0.5 + 0.5 * self._draw())

    async def wait(self, remaining: float | None = None) -> None:
        """Sleep for the next pause, but not past ``remaining`` seconds if given."""
        pause = self.pause()
        await asyncio.sleep(pause if remaining is None else max(0.0, min(pause, remaining)))
