"""The operator HTTP API on a real server with a real node: roles, JSON errors for every bad
input (nothing changes), enrollment, the event log as pages and as server-sent events."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime

import aiohttp
import nats
import pytest
from aiohttp import web

from messages import subjects
from messages.attestation import NodeAnnounce, NodeHeartbeat
from messages.ids import display_time
from messages.signing import Ed25519Signer
from node.daemon import NodeDaemon
from node.hsm import SoftHsm
from node.measurement import measure
from node.pins import read_pins, write_pin
from node.vendor import VendorCA, provision
from ops.cli import build_parser
from ops.natsserver import NatsServer
from orchestrator.api.app import create_app
from orchestrator.api.requests import ORCHESTRATOR
from orchestrator.shell.config import Settings
from orchestrator.shell.keys import load_signer
from tests.replay.fleet import OPERATOR_TOKEN, READ_TOKEN, wait_for, write_config
from transport.bus import publish
from transport.cosign_client import CheckpointRequest
from transport.outbox import Outbox

OP = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
READ = {"Authorization": f"Bearer {READ_TOKEN}"}

# Measured once: other work in a shared checkout must not change it between
# the orchestrator's allow-list and the nodes' claims.
SOFTWARE = measure()


@pytest.fixture
async def server(tmp_path):
    async with NatsServer(tmp_path / "nats", name="api") as server:
        yield server


@pytest.fixture
def limits():
    """The HTTP limits the app runs with (None: the defaults); modules may override this."""
    return None


@pytest.fixture
def late_routes():
    """Routes added after :func:`create_app` (as other modules' routes are); none here."""
    return web.RouteTableDef()


@pytest.fixture
async def api(request, tmp_path, server, limits, late_routes):
    """The API app served on a free port, its orchestrator active, one node announced."""
    VendorCA.init(tmp_path / "vendor", datetime.now(UTC))
    config = write_config(
        tmp_path / "orch",
        server.url,
        tmp_path / "vendor" / "root.pem",
        SOFTWARE,
        unreachable_after_s=1.0,
    )
    settings = Settings.load(config)
    signer = load_signer(settings.key_file)
    app = create_app(settings, signer, limits)
    app.add_routes(late_routes)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    orch = app[ORCHESTRATOR]
    await wait_for(lambda: orch.active, what="the orchestrator to become active")
    write_pin(tmp_path / "pins.json", "orchestrator", signer)
    hsm = SoftHsm(tmp_path / "node" / "hsm", bytes(32))
    provision(hsm, VendorCA.open(tmp_path / "vendor"), datetime.now(UTC))
    daemon = NodeDaemon(
        hsm,
        tmp_path / "node",
        "dc-7",
        read_pins(tmp_path / "pins.json"),
        measurement=SOFTWARE,
        heartbeat_s=0.2,
    )
    nc = await nats.connect(server.url)
    await daemon.start(nc)
    await wait_for(lambda: daemon.node_id in orch.state.nodes, what="the announcement")
    async with aiohttp.ClientSession(base_url=f"http://{host}:{port}") as http:
        request.node.daemon = daemon  # for tests that speak as the node
        request.node.address = (host, port)  # for tests that speak raw HTTP
        yield http, orch, daemon.node_id
    await daemon.stop()
    await nc.close()
    await runner.cleanup()


async def call(http, method, path, headers=None, **kw):
    async with http.request(method, path, headers=headers or {}, **kw) as resp:
        return resp.status, await resp.json(content_type=None)


def rejects(orch, kind: str) -> int:
    return orch.status_gate.rejects[kind] + int(orch.metrics.errors.labels(kind)._value.get())


async def test_an_enrolled_nodes_status_must_be_signed_by_its_identity_key(request, api):
    """Once enrolled, a node's status counts only signed by its recorded identity key; its
    announcement cannot move it to another failure domain; a message of another type on a
    status subject is refused and counted (THREAT_MODEL G11)."""
    http, orch, node_id = api
    daemon = request.node.daemon
    subject = subjects.node_status(node_id)
    bus = await nats.connect(orch.settings.nats)
    try:
        # Before enrollment, a message of another type is counted, never silently dropped.
        await publish(bus, subject, Outbox("anyone").envelope(CheckpointRequest()))
        await wait_for(lambda: rejects(orch, "not_status") == 1, what="the foreign message")

        await call(http, "POST", f"/v1/nodes/{node_id}/enroll", OP)
        await wait_for(lambda: orch.state.nodes[node_id].status == "enrolled", what="enrolled")
        moved = NodeAnnounce(node_id=node_id, domain="dc-9", hsm="soft", measurement=SOFTWARE)
        impostor = Outbox(node_id, Ed25519Signer.from_seed(bytes([5]) * 32))
        await publish(bus, subject, Outbox(node_id).envelope(moved))
        await publish(bus, subject, impostor.envelope(moved))
        await wait_for(lambda: rejects(orch, "unsigned") == 1, what="the unsigned status")
        await wait_for(lambda: rejects(orch, "unknown_signer") == 1, what="the impostor")
        await publish(bus, subject, daemon.outbox.envelope(moved))
        await wait_for(
            lambda: rejects(orch, "domain_change_refused") == 1, what="the domain change"
        )
        assert orch.state.nodes[node_id].domain == "dc-7"
        # What it runs changes by a new attestation only; saying the same again records nothing.
        node, seq = orch.state.nodes[node_id], orch.last_seq
        for changed in ({"hsm": "pkcs11"}, {"measurement": "sha256:" + "cd" * 32}):
            announced = replace(moved, domain="dc-7", **changed)
            await publish(bus, subject, daemon.outbox.envelope(announced))
        await wait_for(
            lambda: rejects(orch, "reattestation_required") == 2, what="the changed software"
        )
        await publish(bus, subject, daemon.outbox.envelope(replace(moved, domain="dc-7")))
        beat = NodeHeartbeat(node_id=node_id, domain="dc-7", seq=99, uptime_ms=1, hsm_ok=False)
        await publish(bus, subject, daemon.outbox.envelope(beat))
        await wait_for(lambda: not orch.liveness[node_id].hsm_ok, what="the signed heartbeat")
        assert orch.state.nodes[node_id] == node and orch.last_seq == seq
    finally:
        await bus.close()


async def test_a_node_that_stops_turns_unreachable_in_every_view_and_the_gauge(
    api, request, capsys
):
    """A killed node daemon stops heartbeating: the API, ``hsmfleet nodes`` and the metrics
    say it is unreachable and since when, instead of showing it as it was."""
    http, orch, node_id = api
    base = f"http://{request.node.address[0]}:{request.node.address[1]}"
    await wait_for(lambda: orch.reachable(node_id), what="a heartbeat")
    status, view = await call(http, "GET", f"/v1/nodes/{node_id}", READ)
    assert (status, view["reachable"]) == (200, True)
    await request.node.daemon.stop()
    await wait_for(lambda: orch.reachable(node_id) is False, what="the silence", timeout=10)
    status, view = await call(http, "GET", f"/v1/nodes/{node_id}", READ)
    assert view["reachable"] is False and view["last_seen_ms"] <= orch.clock_ms() - 1000
    async with http.get("/metrics") as resp:
        assert "hsmfleet_nodes_unreachable 1.0" in await resp.text()
    capsys.readouterr()
    args = build_parser().parse_args(["nodes", "--api", base, "--token", READ_TOKEN])
    assert await args.run(args) == 0
    (line,) = [line for line in capsys.readouterr().out.splitlines() if node_id in line]
    assert f"unreachable since {display_time(view['last_seen_ms'])}" in line


async def test_nodes_and_enrollment(api):
    http, orch, node_id = api
    status, body = await call(http, "GET", "/v1/nodes", READ)
    assert status == 200
    assert [(n["node_id"], n["domain"], n["status"]) for n in body["nodes"]] == [
        (node_id, "dc-7", "announced")
    ]
    status, enrollment = await call(http, "POST", f"/v1/nodes/{node_id}/enroll", OP)
    assert status == 202 and enrollment["status"] in ("open", "enrolled")
    assert enrollment["requested_by"].startswith("operator:")
    await wait_for(lambda: orch.state.nodes[node_id].status != "enrolling", what="the outcome")
    assert orch.state.nodes[node_id].status == "enrolled", orch.state.nodes[node_id].reason
    status, enrollment = await call(
        http, "GET", f"/v1/enrollments/{enrollment['enrollment_id']}", READ
    )
    assert (status, enrollment["status"]) == (200, "enrolled")
    status, node = await call(http, "GET", f"/v1/nodes/{node_id}", READ)
    assert node["identity"]["identity_alg"] == "ed25519"
    status, body = await call(http, "POST", f"/v1/nodes/{node_id}/enroll", OP)
    assert (status, body["error"]) == (409, "enrollment_conflict")


@pytest.mark.parametrize(
    ("method", "path", "headers", "status", "error"),
    [
        ("GET", "/v1/nodes", {}, 401, "unauthenticated"),
        ("GET", "/v1/nodes", {"Authorization": "Bearer wrong"}, 401, "unauthenticated"),
        ("GET", "/v1/nodes", {"Authorization": f"Basic {READ_TOKEN}"}, 401, "unauthenticated"),
        ("POST", "/v1/nodes/{node}/enroll", {}, 401, "unauthenticated"),
        ("POST", "/v1/nodes/{node}/enroll", READ, 403, "forbidden"),
        ("GET", "/v1/nodes/ghost", READ, 404, "unknown_node"),
        ("POST", "/v1/nodes/ghost/enroll", OP, 404, "unknown_node"),
        ("GET", "/v1/enrollments/nope", READ, 404, "unknown_enrollment"),
        ("GET", "/v1/fleets/nope", READ, 404, "not_found"),
        ("GET", "/v1/nowhere", READ, 404, "not_found"),
        ("GET", "/v1/events?from=abc", READ, 400, "bad_request"),
        ("GET", "/v1/events?limit=100000", READ, 400, "bad_request"),
        ("DELETE", "/v1/nodes", OP, 405, "method_not_allowed"),
    ],
)
async def test_bad_requests_get_json_errors_and_change_nothing(
    api, method, path, headers, status, error
):
    http, orch, node_id = api
    before, seq = orch.state, orch.last_seq
    got, body = await call(http, method, path.format(node=node_id), headers)
    assert (got, body["error"]) == (status, error)
    assert body["message"] and "Traceback" not in body["message"]
    assert orch.state == before and orch.last_seq == seq


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"{not json", "not JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"requested_by": "me", "force": true}', "unknown fields"),
        (b'{"requested_by": 5}', "non-empty string"),
        (b'{"requested_by": "a", "requested_by": "b"}', "duplicate key"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"requested_by": "\\ud800"}', "lone surrogate"),
        (b'{"requested_by": NaN}', "not JSON"),
    ],
)
async def test_malformed_commands_are_refused(api, data, words):
    """Bodies are parsed as strictly as messages: a typed 400, counted, never a 500."""
    http, orch, node_id = api
    before = orch.state
    status, body = await call(http, "POST", f"/v1/nodes/{node_id}/enroll", OP, data=data)
    assert (status, body["error"]) == (400, "bad_request")
    assert words in body["message"]
    assert orch.state == before
    assert orch.metrics.http_rejects.labels("bad_request")._value.get() == 1


@pytest.mark.parametrize("data", [b'{"fleet": "f", "fleet": "g"}', b"[" * 100_000 + b"]" * 100_000])
async def test_a_plan_is_parsed_as_strictly_as_a_command(api, data):
    http, orch, _ = api
    seq = orch.last_seq
    status, body = await call(http, "POST", "/v1/rollouts", OP, data=data)
    assert (status, body["error"]) == (400, "bad_request")
    assert orch.last_seq == seq


async def test_event_pages_and_stream(api):
    http, _, node_id = api
    status, page = await call(http, "GET", "/v1/events?from=1&limit=2", READ)
    assert status == 200 and [e["seq"] for e in page["events"]] == [1, 2]
    assert page["events"][1]["type"] == "orchestrator.lease_taken" and page["next"] == 3
    async with http.get("/v1/events/stream?count=2", headers=READ) as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        await call(http, "POST", f"/v1/nodes/{node_id}/enroll", OP)
        frames = []
        async for raw in resp.content:
            if raw.startswith(b"data: "):
                frames.append(json.loads(raw[6:]))
    assert [f["type"] for f in frames] == [
        "orchestrator.decision",
        "enrollment.challenge_issued",
    ]
    assert frames[0]["seq"] + 1 == frames[1]["seq"]


async def test_a_stream_from_the_start_replays_the_log_in_order(api):
    http, orch, _ = api
    last = orch.last_seq
    async with http.get(f"/v1/events/stream?from=1&count={last}", headers=READ) as resp:
        seqs = [json.loads(raw[6:])["seq"] async for raw in resp.content if raw[:6] == b"data: "]
    assert seqs == list(range(1, last + 1))


async def test_health_openapi_and_metrics(api):
    http, orch, _ = api
    status, health = await call(http, "GET", "/health")
    assert status == 200 and health["active"] and health["lease"]["holder"] == "orch-a"
    status, doc = await call(http, "GET", "/openapi.json")
    assert doc["openapi"].startswith("3.") and "/v1/nodes/{node_id}/enroll" in doc["paths"]
    # Every route the app serves is documented, with its method.
    served = {
        (r.resource.canonical, r.method.lower())
        for r in create_app(orch.settings, orch.signer).router.routes()
        if r.method != "HEAD"
    }
    documented = {(path, method) for path, item in doc["paths"].items() for method in item}
    assert served - documented == set()
    # ... and each operation says what it answers when it succeeds.
    without_success = [
        (path, method)
        for path, item in doc["paths"].items()
        for method, operation in item.items()
        if not any(code.startswith("2") for code in operation["responses"])
    ]
    assert without_success == []
    async with http.get("/metrics") as resp:
        text = await resp.text()
    assert 'hsmfleet_decisions_total{input="node.announce"} 1.0' in text
    assert "hsmfleet_events_appended_total" in text
    assert 'hsmfleet_stage_duration_seconds_count{stage="append"}' in text
    assert "# TYPE hsmfleet_messages_rejected_total counter" in text


async def test_a_standby_refuses_commands(api, tmp_path, server):
    _, orch, node_id = api
    config = write_config(
        tmp_path / "orch", server.url, tmp_path / "vendor" / "root.pem", SOFTWARE, holder="orch-b"
    )
    standby = create_app(Settings.load(config), load_signer(tmp_path / "orch" / "orchestrator.key"))
    runner = web.AppRunner(standby)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        await wait_for(lambda: standby[ORCHESTRATOR].last_seq == orch.last_seq, what="catch-up")
        async with aiohttp.ClientSession(base_url=f"http://{host}:{port}") as other:
            status, body = await call(other, "POST", f"/v1/nodes/{node_id}/enroll", OP)
            assert (status, body["error"]) == (503, "not_active")
            status, nodes = await call(other, "GET", "/v1/nodes", READ)
            assert [n["node_id"] for n in nodes["nodes"]] == [node_id]
    finally:
        await runner.cleanup()
