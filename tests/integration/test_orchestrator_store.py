"""The event store on a real nats-server: atomic batches, optimistic concurrency, reads."""

from __future__ import annotations

import asyncio

import nats
import pytest

from messages.attestation import NodeAnnounce
from messages.envelope import Envelope
from messages.schema import REGISTRY
from ops.natsserver import NatsServer
from orchestrator.core.context import Context
from orchestrator.core.decisions import decide
from orchestrator.core.errors import AppendConflict
from orchestrator.shell.log import GENESIS, LogReader, Sealed, entry_digest, seal
from orchestrator.shell.replay import Replayer
from orchestrator.shell.store import EventStore
from tests.replay.kit import MEASUREMENT, T0, PureLog


@pytest.fixture
async def store(tmp_path):
    """A fresh server per test: the log stream is append-only and cannot be emptied."""
    async with NatsServer(tmp_path / "nats", name="store") as server:
        nc = await nats.connect(server.url)
        store = EventStore(nc)
        await store.ensure()
        yield store
        await nc.close()


def announcement(log: PureLog, node_id: str, now_ms: int, head: bytes):
    command = NodeAnnounce(node_id=node_id, domain="dc-1", hsm="soft", measurement=MEASUREMENT)
    ctx = Context(now_ms, node_id.encode(), log.epoch, log.holder)
    return seal(command, decide(log.state, command, ctx), ctx, head, log.signer)


async def read_all(store: EventStore, trust, from_seq: int = 1, head: bytes = GENESIS):
    reader, replayer = LogReader(trust, head=head), Replayer()
    last = await store.last_seq()
    await store.scan(
        from_seq, last, lambda seq, data: replayer.apply(reader.admit(data, f"seq {seq}"))
    )
    return replayer.finish(f"seq {last}")


async def test_appended_log_reads_back_verified(store):
    log = PureLog()
    log.take_lease(1)
    last = await store.append([_as_sealed(d) for d in log.entries], 0)
    head = log.head
    for i, node_id in enumerate(["n1", "n2", "n3"]):
        batch = announcement(log, node_id, T0 + i, head)
        last = await store.append(batch, last)
        head = entry_digest(batch[-1].data)
    assert last == 2 + 3 * 2
    state = await read_all(store, log.trust())
    assert sorted(state.nodes) == ["n1", "n2", "n3"]
    assert await store.entry(1) == log.entries[0]


async def test_two_writers_cannot_both_extend_the_same_log(store):
    log = PureLog()
    log.take_lease(1)
    last = await store.append([_as_sealed(d) for d in log.entries], 0)
    mine = announcement(log, "n1", T0, log.head)
    theirs = announcement(log, "n2", T0, log.head)
    results = await asyncio.gather(
        store.append(mine, last), store.append(theirs, last), return_exceptions=True
    )
    assert sorted(type(r).__name__ for r in results) == ["AppendConflict", "int"]
    assert await store.last_seq() == last + 2  # one whole batch, nothing of the other
    state = await read_all(store, log.trust())
    assert len(state.nodes) == 1


async def test_stale_writer_and_repeated_batch_are_refused(store):
    log = PureLog()
    log.take_lease(1)
    first = [_as_sealed(d) for d in log.entries]
    last = await store.append(first, 0)
    with pytest.raises(AppendConflict):
        await store.append(first, 0)  # behind the log
    with pytest.raises(AppendConflict):
        await store.append(first, last)  # ids already in the log
    assert await store.last_seq() == last


def _as_sealed(data: bytes) -> Sealed:
    env = Envelope.decode(data)
    return Sealed(REGISTRY.parse(env).subject(), data, env.id)
