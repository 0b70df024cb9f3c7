"""A 3-server JetStream cluster on loopback keeps working when one server stops; the
orchestrator reaches it with its own credentials (the cluster runs with permissions on)."""

import asyncio

import nats
import pytest

from messages import subjects
from orchestrator.shell.store import EventStore
from transport.parties import parse_layout

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def nats_cluster_layout():
    """This module's cluster is secured for one orchestrator of its own."""
    return parse_layout({"orchestrators": ["writer"]})


# What a JetStream call may raise while the cluster elects new leaders after losing a server.
FAILOVER_ERRORS = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.js.errors.APIError,
    nats.js.errors.NoStreamResponseError,
)


async def retrying(call, attempts=50):
    """Run ``call()`` until it succeeds; every call here is idempotent (publishes carry a
    Nats-Msg-Id), so a retry cannot duplicate anything."""
    for _ in range(attempts):
        try:
            return await call()
        except FAILOVER_ERRORS:
            await asyncio.sleep(0.2)
    raise AssertionError("the cluster did not recover")


async def read_all(js, count):
    """Replay the event stream from the start with an ordered consumer."""
    sub = await js.subscribe(
        subjects.EVENT_SUBJECTS, stream=subjects.EVENT_STREAM, ordered_consumer=True
    )
    try:
        return [(await sub.next_msg(timeout=2)).data for _ in range(count)]
    finally:
        await sub.unsubscribe()


async def test_replicated_stream_survives_a_stopped_server(nats_cluster):
    nc = await nats_cluster.connect(
        "orchestrator", "writer", max_reconnect_attempts=-1, reconnect_time_wait=0.2
    )
    before, after = subjects.event("rollout", "before"), subjects.event("rollout", "after")
    try:
        js = nc.jetstream(timeout=2)
        await EventStore(nc).ensure(replicas=3)
        for i in range(10):
            await js.publish(before, str(i).encode(), headers={"Nats-Msg-Id": f"b{i}"})

        await nats_cluster.servers[0].stop()
        for i in range(10):
            ack = await retrying(
                lambda i=i: js.publish(
                    after, str(i).encode(), headers={"Nats-Msg-Id": f"a{i}"}, timeout=1
                )
            )
            assert ack.stream == subjects.EVENT_STREAM

        info = await retrying(lambda: js.stream_info(subjects.EVENT_STREAM))
        assert info.state.messages == 20
        got = await retrying(lambda: read_all(js, 20))
        assert got == [str(i).encode() for i in range(10)] * 2

        await nats_cluster.servers[0].start()
        await nats_cluster.wait_ready()
    finally:
        await nc.close()
