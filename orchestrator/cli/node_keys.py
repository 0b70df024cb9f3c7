"""``hsmfleet node rotate-key NODE``: rotate a node's identity key over the API and follow it.

The node proves a new key with its old one and a fresh attestation; the orchestrator records it,
then the node adopts it. The verb waits until the node signs with its new key (exit 0), the
rotation is refused (exit 1, with the reason), or ``--timeout`` passes (exit 3); ``--timeout 0``
only starts it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from orchestrator.cli.orchestrator import DONE, NEGATIVE, TIMED_OUT, _api_arguments, _call

OUTCOMES = {"adopted": DONE, "refused": NEGATIVE}


def register(verbs: argparse._SubParsersAction) -> None:
    """Add ``rotate-key`` to the ``node`` verb (registered before, by :mod:`node.cli`)."""
    node = verbs.choices["node"]
    actions = next(a for a in node._actions if isinstance(a, argparse._SubParsersAction))
    rotate = actions.add_parser(
        "rotate-key", help="rotate a node's identity key (via the orchestrator API) and follow it"
    )
    rotate.add_argument("node_id")
    rotate.add_argument("--timeout", type=float, default=60.0, help="seconds to wait (0: no wait)")
    rotate.add_argument("--interval", type=float, default=0.2, help="seconds between looks")
    _api_arguments(rotate)
    rotate.set_defaults(run=rotate_key_command)


async def rotate_key_command(args: argparse.Namespace) -> int:
    rotation = await _call(args, "POST", f"/v1/nodes/{args.node_id}/rotate-key", json={})
    path = f"/v1/node-key-rotations/{rotation['rotation_id']}"
    deadline = time.monotonic() + args.timeout
    shown = None
    while rotation["status"] not in OUTCOMES and time.monotonic() < deadline:
        if not args.json and rotation["status"] != shown:
            shown = rotation["status"]
            print(_progress(rotation), file=sys.stderr)
        await asyncio.sleep(args.interval)
        rotation = await _call(args, "GET", path)
    if args.json:
        print(json.dumps(rotation))
    else:
        print(_outcome(rotation))
    return OUTCOMES.get(rotation["status"], TIMED_OUT)


def _progress(rotation: dict[str, Any]) -> str:
    if rotation["status"] == "open":
        return f"waiting for {rotation['node_id']} to prove a new key ..."
    return f"new key {rotation['new_kid']} on record; waiting for the node to adopt it ..."


def _outcome(rotation: dict[str, Any]) -> str:
    node, rid = rotation["node_id"], rotation["rotation_id"]
    identity = rotation["identity"] or {}
    if rotation["status"] == "adopted":
        return (
            f"{node} signs with identity key {identity['kid']} "
            f"(version {identity['version']}; rotation {rid})"
        )
    if rotation["status"] == "refused":
        return f"{node} rotation refused: {rotation['reason']} ({rid})"
    return f"{node} rotation still {rotation['status']} ({rid})"
