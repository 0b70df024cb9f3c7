"""JSON views of the state and the log, as the API serves them and the CLI prints them."""

from __future__ import annotations

import json
from typing import Any

from messages.canonical import b64
from orchestrator.core.rollout.state import FleetChain, Rollout
from orchestrator.core.state import Enrollment, Node


def node_view(node: Node, liveness: Any = None, reachable: bool | None = None) -> dict[str, Any]:
    """A node: where it runs, how far its enrollment got, what it proved, and whether it was
    heard from lately (``reachable``; null if never)."""
    view: dict[str, Any] = {
        "node_id": node.node_id,
        "domain": node.domain,
        "hsm": node.hsm,
        "status": node.status,
        "measurement": node.measurement,
        "enrollment_id": node.enrollment_id,
        "reason": node.reason,
        "last_seen_ms": liveness.seen_ms if liveness is not None else None,
        "hsm_ok": liveness.hsm_ok if liveness is not None else None,
        "reachable": reachable,
    }
    if node.identity is not None:
        view["identity"] = {
            "identity_alg": node.identity.identity_alg,
            "identity_key": b64(node.identity.identity_key),
            "transport_alg": node.identity.transport_alg,
            "transport_key": b64(node.identity.transport_key),
            "device_fingerprint": node.identity.device_fingerprint,
            "attestation_digest": node.identity.attestation_digest,
        }
    return view


def enrollment_view(enrollment: Enrollment) -> dict[str, Any]:
    """One enrollment: its node, deadline, who asked, and its outcome so far."""
    return {
        "enrollment_id": enrollment.enrollment_id,
        "node_id": enrollment.node_id,
        "status": enrollment.status,
        "reason": enrollment.reason,
        "expires_ms": enrollment.expires_ms,
        "requested_by": enrollment.requested_by,
    }


def entry_view(seq: int, data: bytes) -> dict[str, Any]:
    """A log entry with its sequence; entries that are not JSON are shown as such."""
    try:
        envelope = json.loads(data)
    except ValueError:
        return {"seq": seq, "type": "unreadable", "size": len(data)}
    if not isinstance(envelope, dict):
        return {"seq": seq, "type": "unreadable", "size": len(data)}
    return {"seq": seq, "type": str(envelope.get("type", "unknown")), "entry": envelope}


def rollout_view(rollout: Rollout, chain: FleetChain | None, error: str | None = None) -> dict:
    """A rollout: stage, status, gate, members' progress, its bundles, what went wrong last."""
    issued = [
        {
            "serial": b.serial,
            "stage": b.stage,
            "digest": b.digest,
            "logged": b.serial <= chain.logged,
        }
        for b, by in (zip(chain.bundles, chain.issued_by, strict=True) if chain else ())
        if by == rollout.rollout_id
    ]
    return {
        "rollout_id": rollout.rollout_id,
        "fleet": rollout.fleet,
        "epoch": rollout.epoch,
        "stage": rollout.stage,
        "status": rollout.status,
        "reason": rollout.reason,
        "awaiting_approval": rollout.awaiting_approval and rollout.status == "running",
        "approved": rollout.approved,
        "superseded_by": rollout.superseded_by,
        "requested_by": rollout.requested_by,
        "generator": rollout.generator,
        "threshold": rollout.plan.threshold,
        "wave_size": rollout.plan.rollout.wave_size,
        "members": [
            {
                "node_id": m.node_id,
                "domain": m.domain,
                "status": m.status,
                "reason": m.reason,
                "attested": m.attestation is not None,
                "holds_keys": m.holds_keys,
                "joined": m.joined,
                "step": m.step,
                "destroyed": m.destroyed is not None,
                "destroy_failed": m.destroy_failed,
            }
            for m in rollout.in_order()
        ],
        "artifact": rollout.artifact.digest if rollout.artifact is not None else None,
        "published": rollout.validation is not None,
        "bundles": issued,
        "last_error": error,
    }


def fleet_view(chain: FleetChain) -> dict:
    """A fleet: its active epoch, latest rollout, and its chain of stage bundles."""
    return {
        "fleet": chain.fleet,
        "active_epoch": chain.active_epoch,
        "rollout_id": chain.rollout_id,
        "epochs": [a.epoch for a in chain.artifacts],
        "bundles": [
            {"serial": b.serial, "stage": b.stage, "digest": b.digest, "rollout_id": by}
            for b, by in zip(chain.bundles, chain.issued_by, strict=True)
        ],
        "logged": chain.logged,
    }
