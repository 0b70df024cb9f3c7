"""The operator HTTP API's node-key routes: rotate a node's identity key, and follow
the rotation.

- ``POST /v1/nodes/{node_id}/rotate-key`` (body ``{"requested_by"}`` optional): starts
  a rotation, answers 202 with its view (``refused`` at once, with its reason, for a node that is
  not enrolled);
- ``GET /v1/node-key-rotations/{rotation_id}``: the rotation's status (``open``,
  ``rotated``, ``adopted``, ``refused``) and reason, and the node's identity now.

:data:`routes` is added to the app built by :func:`orchestrator.api.app.create_app`, whose
middleware authorizes every route (``read`` tokens the GET, ``operator`` tokens the POST), maps
errors and limits requests; the orchestrator comes from there too.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from messages.canonical import b64
from messages.node_keys import NodeKeyChallenged, NodeKeyRotationRefused, RotateNodeKey
from orchestrator.api.requests import UnknownId, orchestrator_of, requester
from orchestrator.core.state import KeyRotation, Node

routes = web.RouteTableDef()


def rotation_view(rotation: KeyRotation, node: Node) -> dict[str, Any]:
    """A rotation: its node, deadline, who asked, its outcome so far, the node's identity now."""
    identity = node.identity
    return {
        "rotation_id": rotation.rotation_id,
        "node_id": rotation.node_id,
        "status": rotation.status,
        "reason": rotation.reason,
        "expires_ms": rotation.expires_ms,
        "requested_by": rotation.requested_by,
        "new_kid": rotation.identity_kid,
        "identity": None
        if identity is None
        else {
            "version": node.identity_version,
            "kid": identity.kid,
            "identity_alg": identity.identity_alg,
            "identity_key": b64(identity.identity_key),
            "previous_kids": [past.kid for past in node.past_identities],
        },
    }


@routes.post("/v1/nodes/{node_id}/rotate-key")
async def rotate_key(request: web.Request) -> web.Response:
    requested_by = await requester(request)
    orch = orchestrator_of(request)
    command = RotateNodeKey(node_id=request.match_info["node_id"], requested_by=requested_by)
    events = await orch.submit(command)
    started = next(
        e for e in reversed(events) if isinstance(e, NodeKeyChallenged | NodeKeyRotationRefused)
    )
    state = orch.state
    view = rotation_view(state.rotations[started.rotation_id], state.nodes[started.node_id])
    return web.json_response(view, status=202)


@routes.get("/v1/node-key-rotations/{rotation_id}")
async def get_rotation(request: web.Request) -> web.Response:
    rotation_id = request.match_info["rotation_id"]
    state = orchestrator_of(request).state
    rotation = state.rotations.get(rotation_id)
    if rotation is None:
        raise UnknownId("no node-key rotation of this id", rotation_id=rotation_id)
    return web.json_response(rotation_view(rotation, state.nodes[rotation.node_id]))
