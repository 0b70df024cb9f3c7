"""The OpenAPI 3.1 document of the operator API, served at ``/openapi.json``."""

from __future__ import annotations

from typing import Any


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERRORS = {
    "401": _json(_ref("Error"), "No valid bearer token"),
    "403": _json(_ref("Error"), "The token may only read"),
    "413": _json(_ref("Error"), "The request body is too large (request_too_large)"),
}
_READ = [{"bearer": []}]


def _path_id(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def _query_int(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": {"type": "integer", "minimum": 0},
    }


_COMMAND_ERRORS = {
    "400": _json(_ref("Error"), "Malformed JSON, unknown fields or a field of the wrong type"),
    "404": _json(_ref("Error"), "Unknown fleet"),
    "409": _json(_ref("Error"), "The command does not fit the fleet's state"),
    "422": _json(_ref("Error"), "A setting out of range (typed by kind)"),
    "503": _json(_ref("Error"), "This orchestrator is a standby (not_active)"),
    **_ERRORS,
}


def _fleet_command(summary: str, body: str, conflict: str) -> dict[str, Any]:
    """A POST on a fleet that starts one of its flows: answered 202 with the flow."""
    return {
        "post": {
            "summary": summary,
            "description": conflict,
            "security": _READ,
            "parameters": [_path_id("fleet_id")],
            "requestBody": {
                "required": False,
                "content": {"application/json": {"schema": _ref(body)}},
            },
            "responses": {"202": _json(_ref("Rollout"), "The flow started"), **_COMMAND_ERRORS},
        }
    }


def _read_one(summary: str, param: str, found: dict[str, Any], missing: str) -> dict[str, Any]:
    """A GET of one thing named by the path parameter ``param``: ``found`` (200) or 404."""
    return {
        "get": {
            "summary": summary,
            "security": _READ,
            "parameters": [_path_id(param)],
            "responses": {"200": found, "404": _json(_ref("Error"), missing), **_ERRORS},
        }
    }


def _command(properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": False, "properties": properties}


OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "hsmfleet orchestrator",
        "version": "1",
        "description": "Operate a fleet of HSM nodes: enrollment, rollouts, fleets, the log.",
    },
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Error": {
                "type": "object",
                "required": ["error", "message"],
                "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
            },
            "Node": {
                "type": "object",
                "required": ["node_id", "domain", "hsm", "status"],
                "properties": {
                    "node_id": {"type": "string"},
                    "domain": {"type": "string", "description": "failure domain"},
                    "hsm": {"type": "string"},
                    "status": {"enum": ["announced", "enrolling", "enrolled", "rejected"]},
                    "measurement": {"type": "string"},
                    "enrollment_id": {"type": ["string", "null"]},
                    "reason": {"type": ["string", "null"]},
                    "last_seen_ms": {"type": ["integer", "null"]},
                    "hsm_ok": {"type": ["boolean", "null"]},
                    "reachable": {
                        "type": ["boolean", "null"],
                        "description": "heard from within unreachable_after_s; null if never",
                    },
                    "identity": {"type": "object"},
                },
            },
            "Enrollment": {
                "type": "object",
                "required": ["enrollment_id", "node_id", "status"],
                "properties": {
                    "enrollment_id": {"type": "string"},
                    "node_id": {"type": "string"},
                    "status": {"enum": ["open", "enrolled", "rejected"]},
                    "reason": {"type": ["string", "null"]},
                    "expires_ms": {"type": "integer"},
                    "requested_by": {"type": "string"},
                },
            },
            "EnrollCommand": {
                "type": "object",
                "additionalProperties": False,
                "properties": {"requested_by": {"type": "string", "minLength": 1}},
            },
            "Rollout": {
                "type": "object",
                "required": ["rollout_id", "fleet", "epoch", "stage", "status", "members"],
                "properties": {
                    "rollout_id": {"type": "string"},
                    "fleet": {"type": "string"},
                    "epoch": {"type": "integer"},
                    "stage": {
                        "enum": ["enroll", "ceremony", "quorum", "publish", "activate", "active"]
                    },
                    "status": {
                        "enum": ["running", "paused", "failed", "aborted", "superseded", "active"]
                    },
                    "reason": {"type": ["string", "null"]},
                    "awaiting_approval": {"type": "boolean"},
                    "members": {"type": "array", "items": {"type": "object"}},
                    "bundles": {"type": "array", "items": {"type": "object"}},
                    "last_error": {"type": ["string", "null"]},
                },
            },
            "Plan": {
                "type": "object",
                "description": "A rollout plan as JSON: the settings of a plan file (TOML)",
                "required": ["fleet", "members", "keys", "cosigners"],
            },
            "RotateCommand": _command(
                {"overlap_s": {"type": ["integer", "null"]}, "reason": {"type": "string"}}
            ),
            "ScheduleCommand": {
                **_command(
                    {
                        "every_days": {"type": "integer", "minimum": 0},
                        "overlap_s": {"type": "integer", "minimum": 0},
                    }
                ),
                "required": ["every_days", "overlap_s"],
            },
            "ReplaceCommand": {
                **_command({"node_id": {"type": "string"}, "replacement": {"type": "string"}}),
                "required": ["node_id", "replacement"],
            },
            "RetireCommand": _command(
                {
                    "successor": {"type": ["string", "null"]},
                    "force": {"type": "boolean"},
                    "drain_s": {"type": "integer", "minimum": 0},
                    "reason": {"type": "string"},
                }
            ),
            "FleetState": {
                "type": "object",
                "properties": {
                    "active_epoch": {"type": ["integer", "null"]},
                    "active_rollout": {"type": ["string", "null"]},
                    "rotate_every_days": {"type": "integer"},
                    "rotation_overlap_s": {"type": "integer"},
                    "retiring": {"type": "boolean"},
                    "retired": {"type": "boolean"},
                },
            },
            "NodeKeyRotation": {
                "type": "object",
                "required": ["rotation_id", "node_id", "status"],
                "properties": {
                    "rotation_id": {"type": "string"},
                    "node_id": {"type": "string"},
                    "status": {"enum": ["open", "rotated", "adopted", "refused"]},
                    "reason": {"type": ["string", "null"]},
                    "expires_ms": {"type": "integer"},
                    "requested_by": {"type": "string"},
                    "new_kid": {"type": ["string", "null"]},
                    "identity": {"type": ["object", "null"]},
                },
            },
            "Entry": {
                "type": "object",
                "required": ["seq", "type"],
                "properties": {
                    "seq": {"type": "integer"},
                    "type": {"type": "string"},
                    "entry": {"type": "object", "description": "the signed envelope"},
                },
            },
        },
    },
    "paths": {
        "/health": {
            "get": {
                "summary": "Liveness, lease holder and log position",
                "responses": {"200": {"description": "Health"}},
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "responses": {"200": {"description": "Text exposition format"}},
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "responses": {"200": {"description": "The OpenAPI 3.1 document"}},
            }
        },
        "/v1/nodes": {
            "get": {
                "summary": "Nodes with their state and failure domain",
                "security": _READ,
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {"nodes": {"type": "array", "items": _ref("Node")}},
                        },
                        "Nodes",
                    ),
                    **_ERRORS,
                },
            }
        },
        "/v1/nodes/{node_id}": _read_one(
            "One node",
            "node_id",
            _json(_ref("Node"), "The node"),
            "Unknown node",
        ),
        "/v1/nodes/{node_id}/enroll": {
            "post": {
                "summary": "Challenge the node to attest itself (operator)",
                "security": _READ,
                "parameters": [_path_id("node_id")],
                "requestBody": {
                    "required": False,
                    "content": {"application/json": {"schema": _ref("EnrollCommand")}},
                },
                "responses": {
                    "202": _json(_ref("Enrollment"), "Challenge issued"),
                    "400": _json(_ref("Error"), "Malformed JSON or unknown fields"),
                    "404": _json(_ref("Error"), "Unknown node"),
                    "409": _json(_ref("Error"), "Enrolled already, or in progress"),
                    "503": _json(
                        _ref("Error"),
                        "This orchestrator is a standby (not_active), or the command was not"
                        " answered in time and may still take effect (handler_timeout)",
                    ),
                    **_ERRORS,
                },
            }
        },
        "/v1/enrollments/{enrollment_id}": _read_one(
            "One enrollment and its outcome",
            "enrollment_id",
            _json(_ref("Enrollment"), "The enrollment"),
            "Unknown enrollment",
        ),
        "/v1/rollouts": {
            "get": {
                "summary": "The latest rollout of every fleet",
                "security": _READ,
                "responses": {"200": {"description": "Rollouts"}, **_ERRORS},
            },
            "post": {
                "summary": "Start a rollout by a plan; supersedes one of the fleet in progress",
                "security": _READ,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("Plan")}},
                },
                "responses": {
                    "202": _json(_ref("Rollout"), "Rollout started"),
                    "400": _json(_ref("Error"), "Not JSON"),
                    "404": _json(_ref("Error"), "A planned member never announced itself"),
                    "409": _json(_ref("Error"), "The fleet is active"),
                    "422": _json(_ref("Error"), "The plan breaks a rule (typed by kind)"),
                    **_ERRORS,
                },
            },
        },
        "/v1/rollouts/{fleet_id}": _read_one(
            "The fleet's latest rollout",
            "fleet_id",
            _json(_ref("Rollout"), "The rollout"),
            "No rollout of this fleet",
        ),
        "/v1/rollouts/{fleet_id}/{action}": {
            "post": {
                "summary": "pause, resume, abort, retry or approve the rollout (operator)",
                "security": _READ,
                "parameters": [_path_id("fleet_id"), _path_id("action")],
                "responses": {
                    "200": _json(_ref("Rollout"), "The rollout after the action"),
                    "404": _json(_ref("Error"), "No rollout, or no such action"),
                    "409": _json(_ref("Error"), "The action does not fit the rollout's status"),
                    **_ERRORS,
                },
            }
        },
        "/v1/fleets": {
            "get": {
                "summary": "Fleets with their stage-bundle chains",
                "security": _READ,
                "responses": {"200": {"description": "Fleets"}, **_ERRORS},
            }
        },
        "/v1/fleets/{fleet_id}": _read_one(
            "One fleet",
            "fleet_id",
            {"description": "The fleet: its chain head, active epoch, schedule and retirement"},
            "Unknown fleet",
        ),
        "/v1/fleets/{fleet_id}/stage-bundles": _read_one(
            "The fleet's chain of stage bundles (documents) and how many are logged",
            "fleet_id",
            {"description": "The stage bundles in chain order, and how many are logged"},
            "Unknown fleet",
        ),
        "/v1/fleets/{fleet_id}/bundle": {
            "get": {
                "summary": "The fleet's validation bundle",
                "security": _READ,
                "parameters": [_path_id("fleet_id")],
                "responses": {
                    "200": {"description": "The bundle, with the signer-key rotations logged"},
                    "404": _json(_ref("Error"), "Unknown fleet, or nothing published yet"),
                    "410": _json(_ref("Error"), "The fleet is retired (fleet_retired)"),
                    **_ERRORS,
                },
            }
        },
        "/v1/fleets/{fleet_id}/rotate": _fleet_command(
            "Rotate the active fleet's keys to a new epoch (operator)",
            "RotateCommand",
            "409 when the fleet is busy or not active",
        ),
        "/v1/fleets/{fleet_id}/rotation-schedule": {
            "put": {
                **_fleet_command(
                    "Rotate the fleet's keys every N days (0: never) (operator)",
                    "ScheduleCommand",
                    "409 when the fleet is not active",
                )["post"],
                "responses": {
                    "200": _json(_ref("FleetState"), "The fleet's schedule now"),
                    **_COMMAND_ERRORS,
                },
            }
        },
        "/v1/fleets/{fleet_id}/replace-member": _fleet_command(
            "Replace a failed member by a freshly attested node (operator)",
            "ReplaceCommand",
            "409 when the fleet is busy, 404 for an unknown node",
        ),
        "/v1/fleets/{fleet_id}/retire": _fleet_command(
            "Retire the active fleet: stop registrations, drain, destroy its keys (operator)",
            "RetireCommand",
            "409 when the fleet is busy or has no active successor (without force)",
        ),
        "/v1/fleets/{fleet_id}/flow": _read_one(
            "The fleet's latest flow (rollout, rotation, replacement, retirement)",
            "fleet_id",
            _json(_ref("Rollout"), "The flow and its members' progress"),
            "No rollout of this fleet",
        ),
        "/v1/fleets/{fleet_id}/retirement": _read_one(
            "The logged notice of the fleet's retirement, as verifiers ingest it",
            "fleet_id",
            {"description": "The logged notice (document and log proofs)"},
            "Unknown fleet, or not retired",
        ),
        "/v1/nodes/{node_id}/rotate-key": {
            "post": {
                "summary": "Have the enrolled node rotate its identity key (operator)",
                "security": _READ,
                "parameters": [_path_id("node_id")],
                "requestBody": {
                    "required": False,
                    "content": {"application/json": {"schema": _ref("EnrollCommand")}},
                },
                "responses": {
                    "202": _json(_ref("NodeKeyRotation"), "Challenge issued (or refused)"),
                    "400": _json(_ref("Error"), "Malformed JSON or unknown fields"),
                    "404": _json(_ref("Error"), "Unknown node"),
                    "409": _json(_ref("Error"), "A rotation of this node is in progress"),
                    **_ERRORS,
                },
            }
        },
        "/v1/node-key-rotations/{rotation_id}": _read_one(
            "One node-key rotation and its outcome",
            "rotation_id",
            _json(_ref("NodeKeyRotation"), "The rotation"),
            "Unknown rotation",
        ),
        "/v1/events": {
            "get": {
                "summary": "A page of log entries",
                "security": _READ,
                "parameters": [
                    _query_int("from", "first sequence (default 1)"),
                    _query_int("limit", "at most this many (1-1000, default 100)"),
                ],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {
                                "events": {"type": "array", "items": _ref("Entry")},
                                "next": {"type": "integer"},
                            },
                        },
                        "Entries",
                    ),
                    "400": _json(_ref("Error"), "Bad parameters"),
                    **_ERRORS,
                },
            }
        },
        "/v1/events/stream": {
            "get": {
                "summary": "Server-sent events: log entries as they are appended",
                "security": _READ,
                "parameters": [
                    _query_int("from", "first sequence (default: the next entry)"),
                    _query_int("count", "close after this many entries (default: never)"),
                ],
                "responses": {
                    "200": {
                        "description": "An event stream; each event's data is an Entry",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    },
                    "503": _json(_ref("Error"), "As many streams are open as allowed"),
                    **_ERRORS,
                },
            }
        },
    },
}
