"""A 3-server JetStream cluster on loopback keeps working when one server stops."""

import asyncio

import nats
import pytest
from nats.js.api import StorageType, StreamConfig

pytestmark = pytest.mark.cluster

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
    """Replay the stream from the start with an ordered consumer."""
    sub = await js.subscribe("r3.>", ordered_consumer=True)
    try:
        return [(await sub.next_msg(timeout=2)).data for _ in range(count)]
    finally:
        await sub.unsubscribe()


async def test_replicated_stream_survives_a_stopped_server(nats_cluster):
    nc = await nats.connect(
        servers=nats_cluster.urls, max_reconnect_attempts=-1, reconnect_time_wait=0.2
    )
    try:
        js = nc.jetstream(timeout=2)
        await js.add_stream(
            StreamConfig(name="R3", subjects=["r3.>"], num_replicas=3, storage=StorageType.FILE)
        )
        for i in range(10):
            await js.publish("r3.before", str(i).encode(), headers={"Nats-Msg-Id": f"b{i}"})

        await nats_cluster.servers[0].stop()
        for i in range(10):
            ack = await retrying(
                lambda i=i: js.publish(
                    "r3.after", str(i).encode(), headers={"Nats-Msg-Id": f"a{i}"}, timeout=1
                )
            )
            assert ack.stream == "R3"

        info = await retrying(lambda: js.stream_info("R3"))
        assert info.state.messages == 20
        got = await retrying(lambda: read_all(js, 20))
        assert got == [str(i).encode() for i in range(10)] * 2

        await nats_cluster.servers[0].start()
        await nats_cluster.wait_ready()
    finally:
        await nc.close()
