"""Signed messages over a real nats-server: request/reply through the gate, JetStream de-dup."""

import asyncio
import threading

import pytest
from nats.js.api import StreamConfig

from messages import Ed25519Signer, TrustStore, subjects
from tests.unit.sample_messages import Ping, registry
from transport.bus import NoResponder, RequestRejected, RequestTimeout, publish, request, serve
from transport.gate import Gate
from transport.outbox import Outbox


@pytest.fixture
def parties():
    """An orchestrator and a node that trust each other for their roles."""
    orch, node = Ed25519Signer.generate(), Ed25519Signer.generate()
    trust = TrustStore()
    trust.trust("orch", orch, "orchestrator")
    trust.trust("n1", node, "node")
    return Outbox("orch", orch), Outbox("n1", node), trust


async def test_request_reply_through_the_gate(nc, parties):
    orch, node, trust = parties
    seen = []

    async def handle(received):
        seen.append(received.body)
        return Ping(count=received.body.count + 1, label="pong")

    node_gate = Gate(trust, registry=registry)
    sub = await serve(
        nc, subjects.node_command("n1", "attest"), node_gate, "orchestrator", handle, node
    )
    try:
        answer = await request(
            nc,
            subjects.node_command("n1", "attest"),
            orch.envelope(Ping(count=1, label="ping")),
            Gate(trust, registry=registry),
            "node",
        )
    finally:
        await sub.unsubscribe()
    assert seen == [Ping(count=1, label="ping")]
    assert answer.body == Ping(count=2, label="pong")
    assert answer.envelope.causation is not None


async def test_forged_request_never_reaches_the_handler(nc, parties):
    _, node, trust = parties
    calls = []

    async def handle(received):
        calls.append(received)
        return Ping(count=0, label="x")

    node_gate = Gate(trust, registry=registry)
    subject = subjects.node_command("n2", "retire")
    sub = await serve(nc, subject, node_gate, "orchestrator", handle, node)
    mallory = Outbox("orch", Ed25519Signer.generate())
    try:
        with pytest.raises(RequestRejected, match="not trusted"):
            await request(
                nc,
                subject,
                mallory.envelope(Ping(count=1, label="x")),
                Gate(trust, registry=registry),
                "node",
            )
        await nc.publish(subject, b"\x00garbage")
        await nc.flush()
        await asyncio.sleep(0.05)
    finally:
        await sub.unsubscribe()
    assert calls == []
    assert node_gate.rejects == {"unknown_signer": 1, "malformed": 1}


async def test_request_to_nobody_fails_at_once(nc, parties):
    orch, _, trust = parties
    with pytest.raises(NoResponder):
        await request(
            nc,
            subjects.node_command("nobody", "attest"),
            orch.envelope(Ping(count=1, label="x")),
            Gate(trust, registry=registry),
            "node",
            timeout=5,
        )


async def test_request_to_a_silent_server_times_out(nc, parties):
    orch, _, trust = parties
    sub = await nc.subscribe(subjects.node_command("mute", "attest"))
    try:
        with pytest.raises(RequestTimeout):
            await request(
                nc,
                subjects.node_command("mute", "attest"),
                orch.envelope(Ping(count=1, label="x")),
                Gate(trust, registry=registry),
                "node",
                timeout=0.2,
            )
    finally:
        await sub.unsubscribe()


async def test_jetstream_publish_receive_and_deduplicate(nc, js, parties):
    orch, _, trust = parties
    await js.add_stream(StreamConfig(name="BUS_TEST", subjects=["bus.test.>"]))
    sub = await js.subscribe("bus.test.>", ordered_consumer=True)
    env = orch.envelope(Ping(count=9, label="event"), corr="rollout-7")
    first = await js.publish("bus.test.one", env.encode(), headers={"Nats-Msg-Id": env.id})
    again = await js.publish("bus.test.one", env.encode(), headers={"Nats-Msg-Id": env.id})
    assert again.duplicate and again.seq == first.seq
    msg = await sub.next_msg(timeout=2)
    received = Gate(trust, registry=registry).admit(msg.data, "orchestrator")
    assert received.body == Ping(count=9, label="event")
    assert received.envelope.corr == "rollout-7"
    info = await js.stream_info("BUS_TEST")
    assert info.state.messages == 1


async def test_core_publish_carries_the_message_id(nc, parties):
    orch, _, _ = parties
    sub = await nc.subscribe("fleet.node.n1.status")
    env = orch.envelope(Ping(count=1, label="hb"))
    await publish(nc, "fleet.node.n1.status", env)
    msg = await sub.next_msg(timeout=2)
    assert msg.headers["Nats-Msg-Id"] == env.id
    await sub.unsubscribe()


async def test_a_blocking_signer_signs_replies_off_the_event_loop(nc, parties):
    orch, node, trust = parties
    loop_thread = threading.get_ident()
    signed_in = []

    class DeviceSigner:
        """A signer that says it may wait on a device, as PKCS#11 signers do."""

        blocking = True

        def __init__(self, inner):
            self.kid, self.alg, self.public_key = inner.kid, inner.alg, inner.public_key
            self._inner = inner

        def sign(self, data: bytes) -> bytes:
            signed_in.append(threading.get_ident())
            return self._inner.sign(data)

    device = Outbox("n1", DeviceSigner(node.signer))
    assert device.blocking and not node.blocking

    async def handle(received):
        return Ping(count=0, label="from the device")

    subject = subjects.node_command("n3", "attest")
    sub = await serve(nc, subject, Gate(trust, registry=registry), "orchestrator", handle, device)
    try:
        answer = await request(
            nc,
            subject,
            orch.envelope(Ping(count=1, label="x")),
            Gate(trust, registry=registry),
            "node",
        )
    finally:
        await sub.unsubscribe()
    assert answer.body.label == "from the device"
    assert signed_in and loop_thread not in signed_in
