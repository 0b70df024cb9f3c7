"""Replay and freshness checks: each message id is accepted once, and only near its ``at``."""

from __future__ import annotations

import heapq

from messages.envelope import Envelope
from messages.errors import ReplayedMessage, StaleMessage
from messages.ids import parse_time


class ReplayGuard:
    """Remembers accepted ids for ``window_ms`` and refuses messages outside that window.

    A message whose ``at`` is further than the window from the receiver's clock is stale: its id
    may already have been forgotten, so it could otherwise be replayed.
    """

    def __init__(self, window_ms: int = 5 * 60 * 1000) -> None:
        self.window_ms = window_ms
        self._seen: set[str] = set()
        self._expiry: list[tuple[int, str]] = []

    def check(self, env: Envelope, now_ms: int) -> None:
        """Accept ``env`` once, or raise :class:`StaleMessage` / :class:`ReplayedMessage`."""
        at = parse_time(env.at)
        if abs(now_ms - at) > self.window_ms:
            raise StaleMessage("message time is outside the window", id=env.id, at=env.at)
        self._forget(now_ms)
        if env.id in self._seen:
            raise ReplayedMessage("message id was already accepted", id=env.id)
        self._seen.add(env.id)
        heapq.heappush(self._expiry, (at + self.window_ms, env.id))

    def _forget(self, now_ms: int) -> None:
        while self._expiry and self._expiry[0][0] < now_ms:
            _, old = heapq.heappop(self._expiry)
            self._seen.discard(old)

    def __len__(self) -> int:
        return len(self._seen)
