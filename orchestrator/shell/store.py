"""The event store: the orchestrator's log on the JetStream stream ``FLEET_EVENTS``.

Appends are atomic batches (one decision and its events, all or nothing) carrying
``Nats-Expected-Last-Sequence``: a batch lands only if the stream ends where its writer last
read it, so two orchestrators can never both extend the same history, and an append by one
that fell behind (a deposed or paused orchestrator) is refused by the stream itself. Every
entry carries ``Nats-Msg-Id`` (its envelope id). Reads use ordered consumers from any sequence.
The stream denies deletes and purges: the log is append-only.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import ConsumerConfig, DeliverPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from messages.subjects import EVENT_STREAM, EVENT_SUBJECTS
from orchestrator.core.errors import AppendConflict, StoreUnavailable
from orchestrator.shell.log import Sealed
from transport.backoff import Backoff
from transport.bus import MSG_ID_HEADER

WRONG_LAST_SEQUENCE = 10071
DUPLICATE_IN_BATCH = 10201
MAX_BATCH = 1000
LEADER_WAIT_S = 15.0
"""How long :meth:`EventStore.ensure` waits for a new replicated stream to elect a leader."""


class EventStore:
    """Append to and read from the log stream over one NATS connection."""

    def __init__(self, nc: NATS, stream: str = EVENT_STREAM, *, timeout: float = 5.0) -> None:
        self.nc = nc
        self.js = nc.jetstream(timeout=timeout)
        self.stream = stream
        self.timeout = timeout

    async def ensure(self, replicas: int = 1) -> None:
        """Create the stream if it does not exist (file storage, append-only, atomic batches),
        and wait until it has a leader to take appends: a replicated stream just created
        elects one first, and an append before that goes unanswered."""
        try:
            await self.js.stream_info(self.stream)
        except NotFoundError:
            await self._create(replicas)
        await self._led()

    async def _led(self, within_s: float = LEADER_WAIT_S) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within_s
        backoff = Backoff(0.05, 0.5)
        while True:
            info = await self.js.stream_info(self.stream)
            if info.cluster is None or info.cluster.leader:
                return
            if loop.time() > deadline:
                raise StoreUnavailable("the event stream elected no leader", stream=self.stream)
            await backoff.wait(deadline - loop.time())

    async def _create(self, replicas: int) -> None:
        await self.js.add_stream(
            StreamConfig(
                name=self.stream,
                subjects=[EVENT_SUBJECTS],
                storage=StorageType.FILE,
                num_replicas=replicas,
                allow_atomic=True,
                deny_delete=True,
                deny_purge=True,
                duplicate_window=120.0,
            )
        )

    async def last_seq(self) -> int:
        """The sequence of the last entry (0 when the log is empty or not created yet)."""
        try:
            info = await self.js.stream_info(self.stream)
        except NotFoundError:
            return 0
        except NatsTimeout:
            raise StoreUnavailable("JetStream did not answer", stream=self.stream) from None
        return info.state.last_seq

    async def entry(self, seq: int) -> bytes:
        """The wire bytes of the entry at ``seq``."""
        msg = await self.js.get_msg(self.stream, seq)
        return msg.data or b""

    async def append(self, batch: list[Sealed], expected_last_seq: int) -> int:
        """Append ``batch`` atomically after ``expected_last_seq``; returns the new last seq.

        Raises :class:`AppendConflict` when the stream has moved on, :class:`StoreUnavailable`
        when JetStream does not answer (the batch may or may not have landed: read to know).
        """
        if not 0 < len(batch) <= MAX_BATCH:
            raise ValueError(f"a batch holds 1 to {MAX_BATCH} entries, not {len(batch)}")
        batch_id = os.urandom(12).hex()

        def headers(index: int, item: Sealed) -> dict[str, str]:
            out = {
                "Nats-Batch-Id": batch_id,
                "Nats-Batch-Sequence": str(index),
                MSG_ID_HEADER: item.id,
            }
            if index == 1:
                out["Nats-Expected-Last-Sequence"] = str(expected_last_seq)
            if index == len(batch):
                out["Nats-Batch-Commit"] = "1"
            return out

        for index, item in enumerate(batch[:-1], start=1):
            await self.nc.publish(item.subject, item.data, headers=headers(index, item))
        last = batch[-1]
        try:
            reply = await self.nc.request(
                last.subject, last.data, timeout=self.timeout, headers=headers(len(batch), last)
            )
        except (NatsTimeout, NoRespondersError):
            raise StoreUnavailable("no acknowledgement for the append") from None
        return _acknowledged(json.loads(reply.data), expected_last_seq)

    async def scan(self, from_seq: int, to_seq: int, handle: Callable[[int, bytes], None]) -> int:
        """Call ``handle(seq, data)`` for each entry from ``from_seq`` through ``to_seq``.

        Returns the number of entries read. Uses an ordered consumer, which resumes by itself
        after a lost message or a reconnect.
        """
        if to_seq < from_seq:
            return 0
        done = asyncio.get_running_loop().create_future()
        count = 0

        async def on_message(msg: Msg) -> None:
            nonlocal count
            seq = msg.metadata.sequence.stream
            if seq > to_seq or done.done():
                return
            try:
                handle(seq, msg.data)
            except Exception as exc:
                done.set_exception(exc)
                return
            count += 1
            if seq == to_seq:
                done.set_result(None)

        sub = await self.js.subscribe(
            EVENT_SUBJECTS,
            stream=self.stream,
            ordered_consumer=True,
            config=_from(from_seq),
            cb=on_message,
            pending_msgs_limit=1_000_000,
            pending_bytes_limit=1 << 30,
        )
        try:
            await done
        finally:
            await sub.unsubscribe()
        return count

    async def follow(self, from_seq: int, handle: Callable[[int, bytes], Any]) -> Any:
        """Subscribe ``handle(seq, data)`` to every entry from ``from_seq`` on, as they come.

        Returns the subscription (``unsubscribe()`` it to stop).
        """

        async def on_message(msg: Msg) -> None:
            result = handle(msg.metadata.sequence.stream, msg.data)
            if asyncio.iscoroutine(result):
                await result

        return await self.js.subscribe(
            EVENT_SUBJECTS,
            stream=self.stream,
            ordered_consumer=True,
            config=_from(from_seq),
            cb=on_message,
        )


def _from(seq: int) -> ConsumerConfig:
    return ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=max(seq, 1))


def _acknowledged(ack: dict[str, Any], expected_last_seq: int) -> int:
    error = ack.get("error")
    if error is None:
        return int(ack["seq"])
    if error.get("err_code") in (WRONG_LAST_SEQUENCE, DUPLICATE_IN_BATCH):
        raise AppendConflict(
            "the log moved on since this writer read it, or already holds these entries",
            expected=expected_last_seq,
            server=error.get("description"),
        )
    raise StoreUnavailable("JetStream refused the append", error=error.get("description"))
