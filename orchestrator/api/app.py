"""The operator HTTP API (aiohttp): nodes, enrollments, rollouts, fleets (their stage-bundle
chains and validation bundles), the event log, health, metrics.

Every route but ``/health``, ``/metrics`` and ``/openapi.json`` needs a bearer token, checked
by middleware (so routes registered after :func:`create_app` are covered too): ``read`` tokens
may use safe methods (GET, HEAD, OPTIONS), anything else needs an ``operator`` token. The limits
of :mod:`transport.httpguard` (body size, handler time, slow clients) hold for every route.
Errors are JSON ``{"error": kind, "message": ...}``: 401/403 for credentials, 413 for a body too
large, 4xx for the caller's mistakes (malformed JSON, unknown fields, unknown ids, conflicts),
503 when this orchestrator is a standby, the log is unreachable or the request was not answered
in time, and 500 without a traceback otherwise; each is counted by kind in
``hsmfleet_http_rejects_total``.
The NATS connection and the orchestrator run inside the app's cleanup context.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from messages.errors import HsmfleetError
from messages.events import ChallengeIssued
from messages.inputs import ROLLOUT_ACTIONS, EnrollNode, OperateRollout, StartRollout
from messages.plan import PlanError, parse_plan
from messages.retirement import FleetRetired
from messages.signing import Signer
from messages.validation import ValidationBundle, with_rotations
from orchestrator.api import fleets as api_fleets
from orchestrator.api import nodes as api_nodes
from orchestrator.api.openapi import OPENAPI
from orchestrator.api.requests import (
    CALLER,
    ORCHESTRATOR,
    SETTINGS,
    SIGNER,
    BadRequest,
    UnknownId,
    command_body,
    json_body,
    orchestrator_of,
    requester,
)
from orchestrator.api.views import (
    enrollment_view,
    entry_view,
    fleet_view,
    node_view,
    rollout_view,
)
from orchestrator.core.errors import (
    CommandRefused,
    EnrollmentConflict,
    NoPolicy,
    NotActive,
    RolloutConflict,
    StoreUnavailable,
    UnknownEnrollment,
    UnknownNode,
    UnknownRollout,
)
from orchestrator.core.node_keys import RotationConflict, UnknownRotation
from orchestrator.core.rollout.state import ENDED
from orchestrator.shell.config import Settings
from orchestrator.shell.keys import operator_signer
from orchestrator.shell.lease import LeaseLost
from orchestrator.shell.service import Orchestrator
from orchestrator.shell.store import EventStore
from transport.httpguard import (
    SAFE_METHODS,
    HttpRefusal,
    Limits,
    application,
    refusal_kind,
    stream_slot,
)

MAX_PAGE = 1000
KEEP_ALIVE_S = 15.0
"""Seconds between keep-alive comments on a quiet event stream."""
PUBLIC = frozenset({"/health", "/metrics", "/openapi.json"})
"""Routes anyone may read, without a token."""

log = structlog.get_logger("hsmfleet.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Unauthenticated(HsmfleetError):
    """No bearer token, or one this orchestrator does not know."""

    kind = "unauthenticated"


class Forbidden(HsmfleetError):
    """The token's role may not do this."""

    kind = "forbidden"


_STATUS: list[tuple[type[HsmfleetError], int]] = [
    (FleetRetired, 410),
    (UnknownNode, 404),
    (UnknownEnrollment, 404),
    (UnknownId, 404),
    (UnknownRollout, 404),
    (UnknownRotation, 404),
    (EnrollmentConflict, 409),
    (RotationConflict, 409),
    (RolloutConflict, 409),
    (PlanError, 422),
    (NoPolicy, 409),
    (CommandRefused, 422),
    (BadRequest, 400),
    (Unauthenticated, 401),
    (Forbidden, 403),
    (NotActive, 503),
    (LeaseLost, 503),
    (StoreUnavailable, 503),
]


def _error(status: int, kind: str, message: str) -> web.Response:
    return web.json_response({"error": kind, "message": message}, status=status)


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure becomes a JSON error, counted by kind; none shows a traceback."""
    try:
        return await handler(request)
    except HsmfleetError as exc:
        if isinstance(exc, HttpRefusal):
            status = exc.status
        else:
            status = next((code for cls, code in _STATUS if isinstance(exc, cls)), 400)
        return _refused(request, status, exc.kind, str(exc))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _refused(request, exc.status, refusal_kind(exc), exc.reason)
    except Exception:
        log.exception("request failed", path=request.path)
        return _refused(request, 500, "internal", "the orchestrator failed; see its log")


def _refused(request: web.Request, status: int, kind: str, message: str) -> web.Response:
    orch = request.app.get(ORCHESTRATOR)
    if orch is not None:
        orch.metrics.http_rejects.labels(kind).inc()
    return _error(status, kind, message)


@web.middleware
async def access(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every route but :data:`PUBLIC` needs a bearer token: ``read`` for safe methods,
    ``operator`` for the rest. Deny by default: a route added later is covered too."""
    resource = request.match_info.route.resource
    public = resource is not None and resource.canonical in PUBLIC
    if public and request.method in SAFE_METHODS:
        return await handler(request)
    tokens = request.app[SETTINGS].tokens
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    granted = tokens.get(token) if scheme.lower() == "bearer" else None
    if granted is None:
        raise Unauthenticated("a valid bearer token is required")
    if request.method not in SAFE_METHODS and granted != "operator":
        raise Forbidden("this token may only read")
    request[CALLER] = f"{granted}:{hashlib.sha256(token.encode()).hexdigest()[:8]}"
    return await handler(request)


async def health(request: web.Request) -> web.Response:
    orch = orchestrator_of(request)
    lease = orch.state.lease
    return web.json_response(
        {
            "status": "ok",
            "holder": orch.holder,
            "active": orch.active,
            "lease": {"holder": lease.holder, "epoch": lease.epoch},
            "last_seq": orch.last_seq,
        }
    )


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(orchestrator_of(request).metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi(_: web.Request) -> web.Response:
    return web.json_response(OPENAPI)


async def list_nodes(request: web.Request) -> web.Response:
    orch = orchestrator_of(request)
    nodes = [
        node_view(n, orch.liveness.get(n.node_id), orch.reachable(n.node_id))
        for n in orch.state.nodes.values()
    ]
    return web.json_response({"nodes": sorted(nodes, key=lambda n: n["node_id"])})


async def get_node(request: web.Request) -> web.Response:
    orch = orchestrator_of(request)
    node_id = request.match_info["node_id"]
    node = orch.state.nodes.get(node_id)
    if node is None:
        raise UnknownNode("no node of this id has announced itself", node_id=node_id)
    return web.json_response(node_view(node, orch.liveness.get(node_id), orch.reachable(node_id)))


async def enroll(request: web.Request) -> web.Response:
    requested_by = await requester(request)
    command = EnrollNode(node_id=request.match_info["node_id"], requested_by=requested_by)
    orch = orchestrator_of(request)
    events = await orch.submit(command)
    issued = next(e for e in events if isinstance(e, ChallengeIssued))
    return web.json_response(
        enrollment_view(orch.state.enrollments[issued.enrollment_id]), status=202
    )


async def get_enrollment(request: web.Request) -> web.Response:
    enrollment_id = request.match_info["enrollment_id"]
    enrollment = orchestrator_of(request).state.enrollments.get(enrollment_id)
    if enrollment is None:
        raise UnknownEnrollment("no enrollment of this id", enrollment_id=enrollment_id)
    return web.json_response(enrollment_view(enrollment))


def _rollout(orch: Orchestrator, fleet: str) -> dict[str, Any]:
    rollout = orch.state.book.of_fleet(fleet)
    if rollout is None:
        raise UnknownRollout("no rollout of this fleet", fleet=fleet)
    chain = orch.state.book.fleets.get(fleet)
    return rollout_view(rollout, chain, orch.effect_errors.get(fleet))


async def start_rollout(request: web.Request) -> web.Response:
    """Start a rollout by the plan in the body (the JSON form of a plan file)."""
    plan = parse_plan(await json_body(request))
    orch = orchestrator_of(request)
    await orch.submit(StartRollout(plan=plan, requested_by=request[CALLER]))
    return web.json_response(_rollout(orch, plan.fleet), status=202)


async def operate_rollout(request: web.Request) -> web.Response:
    action = request.match_info["action"]
    if action not in ROLLOUT_ACTIONS:
        raise UnknownId("no such rollout action", action=action, actions=list(ROLLOUT_ACTIONS))
    body = await command_body(request, allowed={"reason"})
    reason = body.get("reason", "")
    if not isinstance(reason, str):
        raise BadRequest("reason must be a string")
    fleet = request.match_info["fleet_id"]
    orch = orchestrator_of(request)
    command = OperateRollout(
        fleet=fleet, action=action, requested_by=request[CALLER], reason=reason
    )
    await orch.submit(command)
    return web.json_response(_rollout(orch, fleet))


async def list_rollouts(request: web.Request) -> web.Response:
    orch = orchestrator_of(request)
    fleets = sorted(orch.state.book.fleets)
    return web.json_response({"rollouts": [_rollout(orch, f) for f in fleets]})


async def get_rollout(request: web.Request) -> web.Response:
    return web.json_response(_rollout(orchestrator_of(request), request.match_info["fleet_id"]))


def _chain(request: web.Request) -> Any:
    fleet = request.match_info["fleet_id"]
    chain = orchestrator_of(request).state.book.fleets.get(fleet)
    if chain is None:
        raise UnknownId("no fleet of this id", fleet_id=fleet)
    return chain


async def list_fleets(request: web.Request) -> web.Response:
    book = orchestrator_of(request).state.book
    return web.json_response({"fleets": [fleet_view(book.fleets[f]) for f in sorted(book.fleets)]})


async def get_fleet(request: web.Request) -> web.Response:
    return web.json_response(fleet_view(_chain(request)))


async def stage_bundles(request: web.Request) -> web.Response:
    """The fleet's chain of stage bundles as documents, and how many the cosigners logged."""
    chain = _chain(request)
    bundles = [b.to_json() for b in chain.bundles]
    return web.json_response({"fleet": chain.fleet, "bundles": bundles, "logged": chain.logged})


async def validation_bundle(request: web.Request) -> web.Response:
    """The validation bundle clients need: the active epoch's, else that of the rollout in
    progress once it is published (never one of an aborted or superseded rollout; none of a
    retired fleet: 410), carrying
    every signer-key rotation logged so far (also those logged after it was published)."""
    chain = _chain(request)
    if chain.retirement is not None:
        raise FleetRetired("the fleet is retired: clients must refuse it", fleet_id=chain.fleet)
    bundle = chain.validation
    latest = orchestrator_of(request).state.book.of_fleet(chain.fleet)
    if bundle is None and latest is not None and latest.status not in ENDED:
        bundle = latest.validation
    if bundle is None:
        raise UnknownId("the fleet has no published validation bundle yet", fleet_id=chain.fleet)
    rotations = orchestrator_of(request).rotation_chain()
    served = with_rotations(ValidationBundle.from_json(bundle), rotations)
    return web.json_response(served.to_json())


async def list_events(request: web.Request) -> web.Response:
    from_seq = _int_param(request, "from", 1, minimum=1)
    limit = _int_param(request, "limit", 100, minimum=1, maximum=MAX_PAGE)
    store = orchestrator_of(request).store
    last = min(await store.last_seq(), from_seq + limit - 1)
    entries = [entry_view(seq, data) for seq, data in await _entries(store, from_seq, last)]
    return web.json_response({"events": entries, "next": from_seq + len(entries)})


async def _entries(store: EventStore, first: int, last: int) -> list[tuple[int, bytes]]:
    """The log's entries ``first`` through ``last`` with their sequence numbers."""
    entries: list[tuple[int, bytes]] = []
    await store.scan(first, last, lambda seq, data: entries.append((seq, data)))
    return entries


async def stream_events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: every entry from ``from`` (default: the next one) as it is appended.

    Entries are read from the log a page at a time, as fast as the client takes them; new
    appends only wake the reader. Nothing is buffered per client, so a slow client misses
    nothing and holds no memory. At most ``Limits.max_streams`` streams are open at once.
    """
    store = orchestrator_of(request).store
    next_seq = _int_param(request, "from", 0, minimum=0)
    count = _int_param(request, "count", 0, minimum=0)
    with stream_slot(request):
        last = await store.last_seq()
        next_seq = next_seq or last + 1
        appended = asyncio.Event()
        sub = await store.follow(last + 1, lambda seq, data: appended.set())
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        try:
            await response.prepare(request)
            await _stream(request, store, response, appended, next_seq, count)
        except ConnectionResetError:
            pass  # the client went away
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
    return response


async def _stream(
    request: web.Request,
    store: EventStore,
    response: web.StreamResponse,
    appended: asyncio.Event,
    next_seq: int,
    count: int,
) -> None:
    """Write entries from ``next_seq`` on (``count`` of them, or without end) as appended."""
    sent = 0
    while not count or sent < count:
        appended.clear()
        last = await store.last_seq()
        if last < next_seq:
            await _next_append(request, response, appended)
            continue
        upto = min(last, next_seq + MAX_PAGE - 1)
        if count:
            upto = min(upto, next_seq + count - sent - 1)
        page = await _entries(store, next_seq, upto)
        for seq, data in page:
            view = entry_view(seq, data)
            frame = f"id: {seq}\nevent: {view['type']}\ndata: {json.dumps(view)}\n\n"
            await response.write(frame.encode())
        sent += len(page)
        next_seq = upto + 1


async def _next_append(
    request: web.Request, response: web.StreamResponse, appended: asyncio.Event
) -> None:
    """Wait for the next append, with a keep-alive comment every :data:`KEEP_ALIVE_S`. A
    client that went away is noticed within a second (raising ``ConnectionResetError``), so
    its stream slot and log subscription are given back without waiting for a write to fail."""
    loop = asyncio.get_running_loop()
    quiet_until = loop.time() + KEEP_ALIVE_S
    while not appended.is_set():
        if request.transport is None or request.transport.is_closing():
            raise ConnectionResetError("the client went away")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(appended.wait(), 1.0)
        if loop.time() >= quiet_until:
            await response.write(b": keep-alive\n\n")
            quiet_until = loop.time() + KEEP_ALIVE_S


def _int_param(
    request: web.Request, name: str, default: int, *, minimum: int, maximum: int | None = None
) -> int:
    text = request.query.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise BadRequest(f"query parameter {name} must be an integer", value=text) from None
    if value < minimum or (maximum is not None and value > maximum):
        raise BadRequest(f"query parameter {name} is out of range", value=value)
    return value


async def _service(app: web.Application) -> AsyncIterator[None]:
    """Connect to NATS, run the orchestrator for the app's lifetime, then stop and close."""
    settings = app[SETTINGS]
    nc = await settings.connect()
    orch = Orchestrator(nc, settings, app[SIGNER], operator=operator_signer(settings))
    app[ORCHESTRATOR] = orch
    task = asyncio.create_task(orch.run(), name=f"orchestrator-{settings.holder}")
    yield
    orch.stop()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)
    await nc.close()


def create_app(settings: Settings, signer: Signer, limits: Limits | None = None) -> web.Application:
    """The API app; the orchestrator runs while the app does. Authorization and ``limits``
    (by default :class:`Limits`) apply to every route, those added to the app later included."""
    app = application(limits or Limits(), errors, access)
    app[SETTINGS] = settings
    app[SIGNER] = signer
    app.cleanup_ctx.append(_service)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi)
    app.router.add_get("/v1/nodes", list_nodes)
    app.router.add_get("/v1/nodes/{node_id}", get_node)
    app.router.add_post("/v1/nodes/{node_id}/enroll", enroll)
    app.router.add_get("/v1/enrollments/{enrollment_id}", get_enrollment)
    app.router.add_post("/v1/rollouts", start_rollout)
    app.router.add_get("/v1/rollouts", list_rollouts)
    app.router.add_get("/v1/rollouts/{fleet_id}", get_rollout)
    app.router.add_post("/v1/rollouts/{fleet_id}/{action}", operate_rollout)
    app.router.add_get("/v1/fleets", list_fleets)
    app.router.add_get("/v1/fleets/{fleet_id}", get_fleet)
    app.router.add_get("/v1/fleets/{fleet_id}/stage-bundles", stage_bundles)
    app.router.add_get("/v1/fleets/{fleet_id}/bundle", validation_bundle)
    app.router.add_get("/v1/events", list_events)
    app.router.add_get("/v1/events/stream", stream_events)
    # The fleet and node-key flows' routes build on this module's helpers, hence imported here.

    app.router.add_routes(api_fleets.routes)
    app.router.add_routes(api_nodes.routes)
    return app
