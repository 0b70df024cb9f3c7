"""A 3-server JetStream cluster on loopback keeps working when one server stops."""

import nats
import pytest
from nats.js.api import StorageType, StreamConfig

pytestmark = pytest.mark.cluster


async def test_replicated_stream_survives_a_stopped_server(nats_cluster):
    nc = await nats.connect(
        servers=nats_cluster.urls, max_reconnect_attempts=-1, reconnect_time_wait=0.2
    )
    try:
        js = nc.jetstream(timeout=5)
        await js.add_stream(
            StreamConfig(name="R3", subjects=["r3.>"], num_replicas=3, storage=StorageType.FILE)
        )
        for i in range(10):
            await js.publish("r3.before", str(i).encode(), headers={"Nats-Msg-Id": f"b{i}"})

        await nats_cluster.servers[0].stop()
        for i in range(10):
            ack = await _publish_retrying(js, "r3.after", str(i).encode(), f"a{i}")
            assert ack.stream == "R3"

        info = await js.stream_info("R3")
        assert info.state.messages == 20
        sub = await js.subscribe("r3.>", ordered_consumer=True)
        got = [(await sub.next_msg(timeout=5)).data for _ in range(20)]
        assert got == [str(i).encode() for i in range(10)] * 2

        await nats_cluster.servers[0].start()
        await nats_cluster.wait_ready()
    finally:
        await nc.close()


async def _publish_retrying(js, subject, data, msg_id, attempts=50):
    """A publish may time out while the cluster elects a new stream leader; retrying with the
    same Nats-Msg-Id cannot duplicate it."""
    import asyncio

    for _ in range(attempts):
        try:
            return await js.publish(subject, data, headers={"Nats-Msg-Id": msg_id}, timeout=1)
        except (nats.errors.TimeoutError, nats.js.errors.APIError, nats.errors.NoRespondersError):
            await asyncio.sleep(0.2)
    raise AssertionError("cluster did not accept the publish")
