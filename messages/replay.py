"""Replay and freshness checks: each message id is accepted once, and only near its ``at``."""

from __future__ import annotations

import heapq

from messages.envelope import Envelope
from messages.errors import MessageError, ReplayedMessage, StaleMessage
from messages.ids import parse_time

DEFAULT_WINDOW_MS = 5 * 60 * 1000
# At about 150 bytes an id this bounds the memory one guard holds to some 150 MB, far above what
# any receiver here accepts in a window (a quorum acceptor at full speed stays under 200,000).
DEFAULT_CAPACITY = 1_000_000


class FutureMessage(StaleMessage):
    """The message's ``at`` lies further ahead of the receiver's clock than the window allows."""

    kind = "future"


class ReplayWindowFull(MessageError):
    """The guard already remembers as many ids as it may; it refuses rather than forget one
    that could then be replayed."""

    kind = "replay_window_full"


class ReplayGuard:
    """Remembers accepted ids for ``window_ms`` and refuses messages outside that window.

    A message whose ``at`` is further than the window from the receiver's clock is stale (or, if
    ahead of it, from the future): its id may already have been forgotten, or would be kept too
    long, so it could otherwise be replayed. At most ``capacity`` ids are remembered at once;
    beyond that, new messages are refused until old ids expire, so that senders who need no
    key (vault clients) cannot grow a receiver's memory without bound.
    """

    def __init__(
        self, window_ms: int = DEFAULT_WINDOW_MS, capacity: int = DEFAULT_CAPACITY
    ) -> None:
        self.window_ms = window_ms
        self.capacity = capacity
        self._seen: set[str] = set()
        self._expiry: list[tuple[int, str]] = []

    def check(self, env: Envelope, now_ms: int) -> None:
        """Accept ``env`` once, or raise :class:`StaleMessage`, :class:`FutureMessage`,
        :class:`ReplayedMessage` or :class:`ReplayWindowFull`; a refusal remembers nothing."""
        at = parse_time(env.at)
        if now_ms - at > self.window_ms:
            raise StaleMessage("message time is outside the window", id=env.id, at=env.at)
        if at - now_ms > self.window_ms:
            raise FutureMessage("message time is ahead of the window", id=env.id, at=env.at)
        self._forget(now_ms)
        if env.id in self._seen:
            raise ReplayedMessage("message id was already accepted", id=env.id)
        if len(self._seen) >= self.capacity:
            raise ReplayWindowFull("too many recent messages; try again later", id=env.id)
        self._seen.add(env.id)
        heapq.heappush(self._expiry, (at + self.window_ms, env.id))

    def _forget(self, now_ms: int) -> None:
        while self._expiry and self._expiry[0][0] < now_ms:
            _, old = heapq.heappop(self._expiry)
            self._seen.discard(old)

    def __len__(self) -> int:
        return len(self._seen)
