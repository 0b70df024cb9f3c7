"""The operator API's limits and authorization hold for every route, those registered after
``create_app`` too: tokens by method, 413 for bodies too large, 503 for requests not answered in
time and for event streams beyond the limit; every refusal is typed JSON, counted, and changes
nothing."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from tests.integration import test_api
from tests.integration.test_api import OP, READ, call
from transport.httpguard import Limits

api, server = test_api.api, test_api.server  # the same fixtures, with the limits below

LIMITS = Limits(max_body=4096, handler_s=1.0, max_streams=2)


class Late:
    """What the routes added after ``create_app`` saw."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.read_cancelled = asyncio.Event()
        self.command_done = asyncio.Event()


@pytest.fixture
def limits():
    return LIMITS


@pytest.fixture
def late():
    return Late()


@pytest.fixture
def late_routes(late):
    routes = web.RouteTableDef()

    @routes.post("/v1/late")
    async def late_command(request: web.Request) -> web.Response:
        late.calls.append(await request.text())
        return web.json_response({"ok": True})

    @routes.get("/v1/late")
    async def late_read(_: web.Request) -> web.Response:
        late.calls.append("read")
        return web.json_response({"ok": True})

    @routes.get("/v1/late/slow")
    async def slow_read(_: web.Request) -> web.Response:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            late.read_cancelled.set()
            raise
        return web.json_response({})

    @routes.post("/v1/late/slow")
    async def slow_command(_: web.Request) -> web.Response:
        await asyncio.sleep(LIMITS.handler_s * 2)
        late.command_done.set()
        return web.json_response({})

    return routes


@pytest.mark.parametrize(
    ("method", "headers", "status", "error"),
    [
        ("POST", {}, 401, "unauthenticated"),
        ("POST", {"Authorization": "Bearer wrong"}, 401, "unauthenticated"),
        ("POST", READ, 403, "forbidden"),
        ("PUT", READ, 403, "forbidden"),
        ("GET", {}, 401, "unauthenticated"),
    ],
)
async def test_a_route_added_later_needs_the_right_token(api, late, method, headers, status, error):
    http, orch, _ = api
    before, seq = orch.state, orch.last_seq
    got, body = await call(http, method, "/v1/late", headers, data=b"x")
    assert (got, body["error"]) == (status, error)
    assert late.calls == [] and orch.state == before and orch.last_seq == seq


async def test_a_route_added_later_serves_the_right_token(api, late):
    http, _, _ = api
    assert (await call(http, "GET", "/v1/late", READ))[0] == 200
    assert (await call(http, "POST", "/v1/late", OP, data=b"go"))[0] == 200
    assert late.calls == ["read", "go"]


@pytest.mark.parametrize("headers", [OP, {}])
async def test_a_declared_body_over_the_limit_is_refused_unread(api, headers):
    http, orch, node_id = api
    before, seq = orch.state, orch.last_seq
    big = b'{"requested_by": "' + b"x" * LIMITS.max_body + b'"}'
    got, body = await call(http, "POST", f"/v1/nodes/{node_id}/enroll", headers, data=big)
    assert (got, body["error"]) == (413, "request_too_large")
    assert orch.state == before and orch.last_seq == seq


async def test_credentials_are_checked_before_a_body_is_read(request, api):
    """A request without a token is refused from its head alone: the server does not wait,
    up to its deadline, for a body nobody authorized."""
    _, orch, node_id = api
    host, port = request.node.address
    reader, writer = await asyncio.open_connection(host, port)
    try:
        head = f"POST /v1/nodes/{node_id}/enroll HTTP/1.1\r\nHost: {host}\r\n"
        writer.write(f"{head}Content-Length: {LIMITS.max_body}\r\n\r\n".encode())
        await writer.drain()
        status = await asyncio.wait_for(reader.readline(), LIMITS.handler_s / 2)
    finally:
        writer.close()
    assert status.split()[1] == b"401"
    assert orch.metrics.http_rejects.labels("unauthenticated")._value.get() == 1


async def test_a_chunked_body_is_cut_off_at_the_limit(api, late):
    http, orch, _ = api
    seq = orch.last_seq

    async def chunks():
        for _ in range(LIMITS.max_body // 512 + 2):
            yield b"x" * 512

    got, body = await call(http, "POST", "/v1/late", OP, data=chunks())
    assert (got, body["error"]) == (413, "request_too_large")
    assert late.calls == [] and orch.last_seq == seq


async def test_a_read_not_answered_in_time_is_cancelled(api, late):
    http, _, _ = api
    got, body = await call(http, "GET", "/v1/late/slow", READ)
    assert (got, body["error"]) == (503, "handler_timeout")
    await asyncio.wait_for(late.read_cancelled.wait(), 10)


async def test_a_command_not_answered_in_time_says_its_outcome_is_unknown(api, late):
    http, _, _ = api
    got, body = await call(http, "POST", "/v1/late/slow", OP)
    assert (got, body["error"]) == (503, "handler_timeout")
    assert "may still take effect" in body["message"]
    await asyncio.wait_for(late.command_done.wait(), 10)  # left to finish, not torn half-way


async def test_a_stream_outlives_the_handler_deadline(api):
    http, _, node_id = api
    async with http.get("/v1/events/stream?count=1", headers=READ) as resp:
        assert resp.status == 200
        await asyncio.sleep(LIMITS.handler_s * 2)
        assert (await call(http, "POST", f"/v1/nodes/{node_id}/enroll", OP))[0] == 202
        frames = [raw async for raw in resp.content if raw.startswith(b"data: ")]
    assert len(frames) == 1


async def test_streams_beyond_the_limit_are_refused_until_one_closes(api):
    http, _, _ = api
    stream = "/v1/events/stream"  # from the next entry: quiet streams
    async with http.get(stream, headers=READ) as one, http.get(stream, headers=READ) as two:
        assert (one.status, two.status) == (200, 200)
        status, body = await call(http, "GET", stream, READ)
        assert (status, body["error"]) == (503, "too_many_streams")
    # The server notices within a second that the clients left (well before its 15 s
    # keep-alive write would fail), and gives their slots back.
    async with asyncio.timeout(5):
        while True:
            async with http.get(f"{stream}?from=1&count=1", headers=READ) as again:
                if again.status == 200:
                    assert [raw async for raw in again.content if raw.startswith(b"data: ")]
                    break
            await asyncio.sleep(0.05)
    async with http.get("/metrics") as resp:
        assert 'hsmfleet_http_rejects_total{kind="too_many_streams"}' in await resp.text()


async def test_refusals_are_counted_by_kind(api):
    http, _, node_id = api
    await call(http, "POST", f"/v1/nodes/{node_id}/enroll", READ)
    await call(http, "POST", f"/v1/nodes/{node_id}/enroll", OP, data=b"x" * 5000)
    async with http.get("/metrics") as resp:
        text = await resp.text()
    assert 'hsmfleet_http_rejects_total{kind="forbidden"} 1.0' in text
    assert 'hsmfleet_http_rejects_total{kind="request_too_large"} 1.0' in text
