"""The orchestrator lease: who is active, held in a JetStream KV bucket.

The holder renews the key ``active`` every ``ttl / 4`` with a compare-and-set on its last
revision (``Nats-Expected-Last-Subject-Sequence``). A standby takes the lease only after it
has seen the same revision for a whole ``ttl`` by its own clock, again by compare-and-set, so
of several standbys exactly one wins. The revision at which a holder took the lease is its
*epoch*: it rises with every takeover and fences the holder's decisions in the log.

A holder that could not renew for ``3/4 ttl`` gives the lease up on its own; one that was
paused cannot, and is fenced by the log instead (its next append finds the log moved on).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable

from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import (
    APIError,
    BucketNotFoundError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
)
from nats.js.kv import KeyValue

from messages.errors import HsmfleetError

BUCKET = "FLEET_LEASE"
KEY = "active"


class LeaseLost(HsmfleetError):
    """This orchestrator no longer holds the lease."""

    kind = "lease_lost"


class Lease:
    """One orchestrator's view of the lease; ``epoch`` is set while it holds it."""

    def __init__(
        self,
        js: JetStreamContext,
        holder: str,
        *,
        ttl: float = 2.0,
        bucket: str = BUCKET,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.js = js
        self.holder = holder
        self.ttl = ttl
        self.bucket = bucket
        self.clock = clock
        self.epoch: int | None = None
        self._kv: KeyValue | None = None
        self._revision = 0
        self._renewed_at = 0.0
        self._seen: tuple[int, float] | None = None

    async def open(self, replicas: int = 1) -> None:
        """Bind to the lease bucket, creating it if needed."""
        try:
            self._kv = await self.js.key_value(self.bucket)
        except BucketNotFoundError:
            self._kv = await self.js.create_key_value(
                KeyValueConfig(
                    bucket=self.bucket, history=1, storage=StorageType.FILE, replicas=replicas
                )
            )

    @property
    def kv(self) -> KeyValue:
        if self._kv is None:
            raise LeaseLost("the lease bucket is not open")
        return self._kv

    @property
    def held(self) -> bool:
        """Whether this holder may still act: it holds the lease and renewed it in time."""
        return self.epoch is not None and self.clock() - self._renewed_at < 0.75 * self.ttl

    def _value(self) -> bytes:
        return json.dumps({"holder": self.holder, "ttl": self.ttl}).encode()

    async def try_acquire(self) -> int | None:
        """Take the lease if it is free or has lapsed; the new epoch, or None."""
        started = self.clock()
        try:
            entry = await self.kv.get(KEY)
        except KeyNotFoundError:
            return await self._take(lambda: self.kv.create(KEY, self._value()), started)
        except NatsTimeout:
            return None
        revision = entry.revision or 0
        if self._seen is None or self._seen[0] != revision:
            self._seen = (revision, started)
            return None
        if started - self._seen[1] < self.ttl:
            return None
        return await self._take(lambda: self.kv.update(KEY, self._value(), last=revision), started)

    async def _take(self, write: Callable, started: float) -> int | None:
        try:
            revision = await write()
        except (KeyWrongLastSequenceError, NatsTimeout):
            return None
        self.epoch = self._revision = revision
        self._renewed_at = started
        return revision

    async def renew(self) -> None:
        """Extend the lease; raises :class:`LeaseLost` if another holder has it now."""
        if self.epoch is None:
            raise LeaseLost("this orchestrator holds no lease")
        started = self.clock()
        try:
            self._revision = await self.kv.update(KEY, self._value(), last=self._revision)
        except KeyWrongLastSequenceError:
            self.epoch = None
            raise LeaseLost("another orchestrator took the lease") from None
        except NatsTimeout:
            if not self.held:
                self.epoch = None
                raise LeaseLost("the lease could not be renewed in time") from None
            return
        self._renewed_at = started

    async def release(self) -> None:
        """Give the lease up so that a standby takes over at once."""
        if self.epoch is None:
            return
        self.epoch = None
        # If this fails someone else holds the lease already, or it lapses by itself.
        with contextlib.suppress(APIError, NatsTimeout):
            await self.kv.delete(KEY, last=self._revision)
