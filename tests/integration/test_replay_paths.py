"""Replay and freshness on the signed NATS paths, on a real nats-server: a node's commands and a
cosigner's signing requests. A replayed, stale or future message is answered with its own kind,
counted, and changes nothing."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime

import pytest

from cosigner.http import NATS_SERVICE, Server, make_app
from cosigner.testbed import init_cosigners, sample_chain
from messages import Ed25519Signer, subjects
from messages.attestation import AttestRequest
from messages.cosigning import SignRequest
from messages.replay import DEFAULT_WINDOW_MS
from messages.signing import TrustStore
from node.daemon import NodeDaemon
from node.hsm import SoftHsm
from node.pins import read_pins, write_pin
from node.vendor import VendorCA, provision
from transport.bus import RequestRejected, request
from transport.gate import Gate
from transport.outbox import IdSource, Outbox

# Each refusal's kind, and how far the message's ``at`` is from the receiver's clock.
CASES = [
    ("replayed", 0),
    ("stale", -DEFAULT_WINDOW_MS - 60_000),
    ("future", DEFAULT_WINDOW_MS + 60_000),
]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def outbox_at(source: str, signer: Ed25519Signer, offset_ms: int) -> Outbox:
    """An outbox whose clock runs ``offset_ms`` off the receiver's."""
    return Outbox(source, signer, IdSource(lambda: now_ms() + offset_ms))


async def refusal(nc, subject: str, env) -> str:
    with pytest.raises(RequestRejected) as info:
        await request(nc, subject, env, Gate(TrustStore()), None)
    return info.value.detail["kind"]


@pytest.mark.parametrize(("kind", "offset_ms"), CASES)
async def test_a_node_refuses_a_replayed_stale_or_future_command(
    nc, tmp_path, kind, offset_ms
) -> None:
    orchestrator = Ed25519Signer.generate()
    write_pin(tmp_path / "pins.json", "orchestrator", orchestrator)
    vendor = VendorCA.init(tmp_path / "vendor", datetime.now(UTC))
    hsm = SoftHsm(tmp_path / "hsm", bytes(32))
    provision(hsm, vendor, datetime.now(UTC))
    daemon = NodeDaemon(hsm, tmp_path, "dc1", read_pins(tmp_path / "pins.json"))
    await daemon.start(nc)
    subject = subjects.node_command(daemon.node_id, "attest")
    body = AttestRequest(nonce=os.urandom(32), expires_ms=now_ms() + 60_000)
    try:
        env = outbox_at("orchestrator", orchestrator, offset_ms).envelope(body)
        if kind == "replayed":
            await request(nc, subject, env, Gate(TrustStore()), None)
        accepted = daemon.gate.accepted
        assert await refusal(nc, subject, env) == kind
        assert daemon.gate.rejects == {kind: 1}
        assert daemon.gate.accepted == accepted
    finally:
        await daemon.stop()


@pytest.mark.parametrize(("kind", "offset_ms"), CASES)
async def test_a_cosigner_refuses_a_replayed_stale_or_future_request(
    nc, nats_server, tmp_path, kind, offset_ms
) -> None:
    orchestrator = Ed25519Signer.generate()
    init_cosigners(tmp_path, orchestrator, [("cosigner-a", "a.example/log", os.urandom(32))])
    server = Server(make_app(tmp_path / "cosigner-a", nats_server.url))
    await server.start()
    subject = subjects.cosign("cosigner-a")
    first = sample_chain()[0].to_json()
    try:
        env = outbox_at("orchestrator", orchestrator, offset_ms).envelope(SignRequest(first))
        if kind == "replayed":
            await request(nc, subject, env, Gate(TrustStore()), None)
        size = server.cosigner.notary.size
        assert await refusal(nc, subject, env) == kind
        stats = server.cosigner.stats()
        assert stats["size"] == size and not stats["rejects"]
        assert server.app[NATS_SERVICE].rejects() == {kind: 1}
    finally:
        await server.stop()
