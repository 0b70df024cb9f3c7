"""What every route of the orchestrator's HTTP API shares: the app's and the request's typed
keys, the orchestrator a request acts on, strict JSON bodies, and the errors of a bad request."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from messages.canonical import loads_strict
from messages.errors import HsmfleetError
from messages.signing import Signer
from orchestrator.shell.config import Settings
from orchestrator.shell.service import Orchestrator

ORCHESTRATOR = web.AppKey("orchestrator", Orchestrator)
SETTINGS = web.AppKey("settings", Settings)
SIGNER = web.AppKey("signer", Signer)
CALLER = web.RequestKey("caller", str)


class UnknownId(HsmfleetError):
    """The path names something that does not exist."""

    kind = "not_found"


class BadRequest(HsmfleetError):
    """The request is malformed: not JSON, unknown fields, bad parameters."""

    kind = "bad_request"


def orchestrator_of(request: web.Request) -> Orchestrator:
    """The orchestrator the app serves."""
    return request.app[ORCHESTRATOR]


async def json_body(request: web.Request) -> Any:
    """The body as JSON, parsed as strictly as messages are (no duplicate member names, no
    NaN, at most 64 levels deep, no lone surrogate): anything else is :class:`BadRequest`."""
    try:
        return loads_strict(await request.read())
    except ValueError as exc:  # UnicodeDecodeError included
        raise BadRequest(f"the body is not JSON: {exc}") from None


async def command_body(request: web.Request, allowed: set[str]) -> dict[str, Any]:
    """A command's body: empty, or a JSON object with no other fields than ``allowed``."""
    if not (await request.read()).strip():
        return {}
    body = await json_body(request)
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise BadRequest("unknown fields in the command", unknown=unknown)
    return body


async def requester(request: web.Request) -> str:
    """Who a node command is recorded as requested by: the body's ``requested_by`` (its only
    field), else the caller's token name."""
    body = await command_body(request, allowed={"requested_by"})
    requested_by = body.get("requested_by", request[CALLER])
    if not isinstance(requested_by, str) or not requested_by:
        raise BadRequest("requested_by must be a non-empty string")
    return requested_by
