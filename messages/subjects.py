"""The NATS subjects every message travels on, built from validated tokens."""

from __future__ import annotations

import re

from messages.errors import BadSubject

EVENT_STREAM = "FLEET_EVENTS"
EVENT_SUBJECTS = "fleet.evt.>"
FLOWS = ("rollout", "rotation", "enrollment", "node", "fleet", "vault")
NODE_VERBS = ("attest", "ceremony", "join", "rotate", "retire")

_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


def token(value: str, what: str = "token") -> str:
    """``value`` if it is safe as one subject token; raises :class:`BadSubject` otherwise."""
    if not isinstance(value, str) or not _TOKEN.fullmatch(value):
        raise BadSubject(f"{what} is not a valid subject token", value=value)
    return value


def event(flow: str, aggregate_id: str) -> str:
    """``fleet.evt.<flow>.<id>``: the event log subject of one flow instance."""
    if flow not in FLOWS:
        raise BadSubject("unknown event flow", flow=flow)
    return f"fleet.evt.{flow}.{token(aggregate_id, 'aggregate id')}"


def node_command(node_id: str, verb: str) -> str:
    """``fleet.node.<node_id>.cmd.<verb>``: a request from the orchestrator to one node."""
    if verb not in NODE_VERBS:
        raise BadSubject("unknown node command", verb=verb)
    return f"fleet.node.{token(node_id, 'node id')}.cmd.{verb}"


def node_status(node_id: str) -> str:
    """``fleet.node.<node_id>.status``: heartbeats and health from one node."""
    return f"fleet.node.{token(node_id, 'node id')}.status"


def quorum(fleet_id: str, phase: str) -> str:
    """``fleet.q.<fleet_id>.<phase>``: replication messages among a fleet's members."""
    return f"fleet.q.{token(fleet_id, 'fleet id')}.{token(phase, 'phase')}"


def vault(fleet_id: str, op: str) -> str:
    """``fleet.vault.<fleet_id>.<op>``: vault operations sent by clients."""
    return f"fleet.vault.{token(fleet_id, 'fleet id')}.{token(op, 'vault operation')}"


def cosign(cosigner_id: str) -> str:
    """``cosign.<cosigner_id>.sign``: signing requests to one cosigner."""
    return f"cosign.{token(cosigner_id, 'cosigner id')}.sign"
