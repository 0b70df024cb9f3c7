"""A node's /health and /metrics, served by a real daemon on a real nats-server."""

import os

import aiohttp
import nats
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from messages import Ed25519Signer, TrustStore, subjects
from messages.attestation import AttestRequest
from node.http import create_app, health
from tests.integration.test_node_daemon import orchestrator, pins, soft_daemon, vendor  # noqa: F401
from transport.bus import RequestRejected, request
from transport.gate import Gate
from transport.httpguard import BadListenAddress, listen_address
from transport.outbox import Outbox


@pytest.fixture
async def served(nats_server, tmp_path, vendor, pins):  # noqa: F811
    """A started daemon with its own connection, and the URL of its HTTP face."""
    daemon = soft_daemon(tmp_path, vendor, pins)
    nc = await nats.connect(nats_server.url)
    await daemon.start(nc)
    runner = web.AppRunner(create_app(daemon), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield daemon, nc, f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()
        await daemon.stop()
        await nc.close()


def sample(text: str, name: str, **labels: str) -> float:
    """The value of the sample ``name`` with ``labels`` in a Prometheus text page (0 if none)."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


async def test_health_says_who_the_node_is_and_that_it_is_connected(served):
    daemon, _, url = served
    async with aiohttp.ClientSession() as http, http.get(f"{url}/health") as resp:
        assert resp.status == 200
        report = await resp.json()
    assert report.pop("uptime_s") >= 0
    assert report == {k: v for k, v in health(daemon).items() if k != "uptime_s"}
    assert report["node_id"] == daemon.node_id and report["domain"] == "dc1"
    assert report["hsm"] == "soft" and report["identity"] == daemon.node.identity.kid
    assert report["connected"] is True and report["fleets"] == {}


async def test_a_node_without_its_connection_is_unhealthy(served):
    _, nc, url = served
    await nc.close()
    async with aiohttp.ClientSession() as http, http.get(f"{url}/health") as resp:
        assert resp.status == 503
        assert (await resp.json())["connected"] is False


async def test_metrics_count_the_commands_the_node_refused(served, nc):
    daemon, _, url = served
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}/metrics") as resp:
            before = await resp.text()
        forged = Outbox("orchestrator", Ed25519Signer.generate()).envelope(
            AttestRequest(nonce=os.urandom(32), expires_ms=2**40)
        )
        subject = subjects.node_command(daemon.node_id, "attest")
        for _ in range(3):
            with pytest.raises(RequestRejected):
                await request(nc, subject, forged, Gate(TrustStore()), None)
        async with http.get(f"{url}/metrics") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain")
            after = await resp.text()
    name = "hsmfleet_messages_rejected_total"
    # the first is refused as unknown_signer, its copies as unknown_signer too (never admitted)
    assert (
        sample(after, name, kind="unknown_signer") - sample(before, name, kind="unknown_signer")
        >= 3  # a process-wide counter: other receivers in this process may count too
    )
    assert daemon.gate.rejects["unknown_signer"] == 3


async def test_refused_requests_are_json_errors_counted_by_kind(served):
    _, _, url = served
    name = "hsmfleet_node_http_rejects_total"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}/metrics") as resp:
            before = await resp.text()
        async with http.get(f"{url}/keys") as resp:
            assert resp.status == 404
            assert (await resp.json())["error"] == "not_found"
        async with http.post(f"{url}/health", data=b"x") as resp:
            assert resp.status in (405, 413)
            refused = (await resp.json())["error"]
        async with http.get(f"{url}/metrics") as resp:
            after = await resp.text()
    assert sample(after, name, kind="not_found") - sample(before, name, kind="not_found") == 1
    assert sample(after, name, kind=refused) - sample(before, name, kind=refused) == 1


@pytest.mark.parametrize(
    "address",
    ["localhost", "127.0.0.1:", "127.0.0.1:http", "[::1]:70000", "host:\u0661", "", "::1:80"],
)
def test_a_bad_listen_address_is_a_typed_error(address):
    """The one parser every HTTP face (node, cosigner, orchestrator) reads its address with."""
    with pytest.raises(BadListenAddress) as info:
        listen_address(address)
    assert info.value.kind == "listen_address"
    assert listen_address("127.0.0.1:0") == ("127.0.0.1", 0)
    assert listen_address(":9464") == ("127.0.0.1", 9464)
    assert listen_address("[::1]:9464") == ("::1", 9464)


async def test_a_stopped_daemon_is_unhealthy_and_a_failing_route_is_a_counted_500(
    served, monkeypatch
):
    daemon, _, url = served
    await daemon.stop()
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}/health") as resp:
            assert resp.status == 503
            report = await resp.json()
        assert report["connected"] is False and report["uptime_s"] == 0

        def broken(_daemon):
            raise RuntimeError("a bug")

        monkeypatch.setattr("node.http.health", broken)
        async with http.get(f"{url}/metrics") as resp:
            before = sample(await resp.text(), "hsmfleet_node_http_rejects_total", kind="internal")
        async with http.get(f"{url}/health") as resp:
            assert resp.status == 500 and (await resp.json())["error"] == "internal"
        async with http.get(f"{url}/metrics") as resp:
            after = sample(await resp.text(), "hsmfleet_node_http_rejects_total", kind="internal")
    assert after - before == 1
