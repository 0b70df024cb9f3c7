"""The operator HTTP API's fleet flows: rotate a fleet's keys (now, or every N
days), replace a member, retire a fleet, and follow each.

- ``POST /v1/fleets/{fleet_id}/rotate`` (body ``{"overlap_s", "reason"}``, both optional;
  without ``overlap_s``, the fleet's scheduled overlap): starts a rotation, 202;
- ``PUT /v1/fleets/{fleet_id}/rotation-schedule`` (body ``{"every_days", "overlap_s"}``;
  ``every_days`` 0 stops it): the fleet's schedule, 200;
- ``POST /v1/fleets/{fleet_id}/replace-member`` (body ``{"node_id", "replacement"}``): 202;
- ``POST /v1/fleets/{fleet_id}/retire`` (body ``{"successor", "force", "drain_s", "reason"}``,
  all optional but a successor is needed unless ``force``): 202;
- ``GET /v1/fleets/{fleet_id}/flow``: the fleet's latest flow (rollout, rotation, replacement or
  retirement) with what each kind adds: overlap window (``legacy_until_ms``, what the new
  artifact lists; ``legacy_ends_ms``, when the old keys go: the overlap after activation, null
  until then), drain window, members' progress;
- ``GET /v1/fleets/{fleet_id}/retirement``: the logged retirement notice clients ingest (404
  until the fleet is retired).

:data:`routes` is added to the app built by :func:`orchestrator.api.app.create_app`, whose
middleware authorizes every route (``read`` tokens the GETs, ``operator`` tokens the rest), maps
errors to statuses (unknown fleet 404, conflicts 409, refused settings 422) and limits requests.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from messages.inputs import ReplaceMember, RotateFleet, ScheduleRotation, StartRetirement
from messages.schema import Body
from orchestrator.api.requests import CALLER, BadRequest, UnknownId, command_body, orchestrator_of
from orchestrator.api.views import rollout_view
from orchestrator.core.fleet_errors import UnknownFleet
from orchestrator.core.rollout.state import FleetChain, Rollout
from orchestrator.shell.service import Orchestrator

routes = web.RouteTableDef()

DEFAULT_DRAIN_S = 7 * 24 * 3600


def flow_view(rollout: Rollout, chain: FleetChain, error: str | None = None) -> dict[str, Any]:
    """A fleet's latest flow: the rollout view, with the kind of flow and what it adds."""
    view = rollout_view(rollout, chain, error)
    for member, shown in zip(rollout.in_order(), view["members"], strict=True):
        shown["legacy_destroyed"] = member.legacy_destroyed is not None
        shown["drained"] = member.drained is not None
    view.update(
        kind=rollout.kind,
        predecessor=rollout.predecessor,
        legacy_until_ms=rollout.legacy_until_ms,
        legacy_ends_ms=rollout.legacy_ends_ms,
        legacy_closed=rollout.rotation is not None and rollout.rotation.legacy_closed,
        replaced=rollout.replacement and rollout.replacement.replaced,
        newcomer=rollout.replacement and rollout.replacement.newcomer,
        successor=rollout.retirement and rollout.retirement.successor,
        drain_until_ms=rollout.retirement and rollout.retirement.drain_until_ms,
        fleet_state=fleet_state(chain),
    )
    return view


def fleet_state(chain: FleetChain) -> dict[str, Any]:
    """The fleet's active epoch, rotation schedule and retirement."""
    return {
        "active_epoch": chain.active_epoch,
        "active_rollout": chain.active_rollout,
        "rotate_every_days": chain.rotate_every_days,
        "rotation_overlap_s": chain.rotation_overlap_s,
        "retiring": chain.retiring,
        "retired": chain.retirement is not None,
    }


def _flow(orch: Orchestrator, fleet: str) -> dict[str, Any]:
    chain = orch.state.book.fleets.get(fleet)
    rollout = orch.state.book.of_fleet(fleet)
    if chain is None or rollout is None:
        raise UnknownFleet("no rollout of this fleet is on record", fleet=fleet)
    return flow_view(rollout, chain, orch.effect_errors.get(fleet))


def _field(body: dict[str, Any], name: str, kind: type, default: Any) -> Any:
    """``body[name]`` if given and not null (exactly a ``kind``: a bool is no int), else
    ``default``."""
    value = body.get(name)
    if value is None:
        return default
    if type(value) is not kind:
        raise BadRequest(f"{name} must be of type {kind.__name__}", value=value)
    return value


@routes.post("/v1/fleets/{fleet_id}/rotate")
async def rotate(request: web.Request) -> web.Response:
    body = await command_body(request, allowed={"overlap_s", "reason"})
    fleet = request.match_info["fleet_id"]
    command = RotateFleet(
        fleet=fleet,
        requested_by=request[CALLER],
        overlap_s=_field(body, "overlap_s", int, None),
        reason=_field(body, "reason", str, ""),
    )
    return await _started(request, command, fleet)


@routes.put("/v1/fleets/{fleet_id}/rotation-schedule")
async def schedule(request: web.Request) -> web.Response:
    body = await command_body(request, allowed={"every_days", "overlap_s"})
    every_days, overlap_s = (_field(body, name, int, None) for name in ("every_days", "overlap_s"))
    if every_days is None or overlap_s is None:
        raise BadRequest("every_days and overlap_s are required")
    fleet = request.match_info["fleet_id"]
    command = ScheduleRotation(
        fleet=fleet, every_days=every_days, overlap_s=overlap_s, requested_by=request[CALLER]
    )
    orch = orchestrator_of(request)
    await orch.submit(command)
    return web.json_response(fleet_state(orch.state.book.fleets[fleet]))


@routes.post("/v1/fleets/{fleet_id}/replace-member")
async def replace_member(request: web.Request) -> web.Response:
    body = await command_body(request, allowed={"node_id", "replacement"})
    for name in ("node_id", "replacement"):
        if not isinstance(body.get(name), str) or not body[name]:
            raise BadRequest(f"{name} is required: a node id")
    fleet = request.match_info["fleet_id"]
    command = ReplaceMember(
        fleet=fleet,
        node_id=body["node_id"],
        replacement=body["replacement"],
        requested_by=request[CALLER],
    )
    return await _started(request, command, fleet)


@routes.post("/v1/fleets/{fleet_id}/retire")
async def retire(request: web.Request) -> web.Response:
    body = await command_body(request, allowed={"successor", "force", "drain_s", "reason"})
    fleet = request.match_info["fleet_id"]
    command = StartRetirement(
        fleet=fleet,
        successor=_field(body, "successor", str, None),
        force=_field(body, "force", bool, False),
        drain_s=_field(body, "drain_s", int, DEFAULT_DRAIN_S),
        requested_by=request[CALLER],
        reason=_field(body, "reason", str, ""),
    )
    return await _started(request, command, fleet)


async def _started(request: web.Request, command: Body, fleet: str) -> web.Response:
    """Submit a command that starts one of ``fleet``'s flows; answer with the flow (202)."""
    orch = orchestrator_of(request)
    await orch.submit(command)
    return web.json_response(_flow(orch, fleet), status=202)


@routes.get("/v1/fleets/{fleet_id}/flow")
async def get_flow(request: web.Request) -> web.Response:
    return web.json_response(_flow(orchestrator_of(request), request.match_info["fleet_id"]))


@routes.get("/v1/fleets/{fleet_id}/retirement")
async def get_retirement(request: web.Request) -> web.Response:
    """The logged notice of the fleet's retirement, as verifiers ingest it."""
    fleet = request.match_info["fleet_id"]
    chain = orchestrator_of(request).state.book.fleets.get(fleet)
    if chain is None or chain.retirement is None:
        raise UnknownId("the fleet is not retired", fleet_id=fleet)
    return web.json_response(chain.retirement)
