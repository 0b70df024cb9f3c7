"""A node's read-only HTTP face for its operator: ``/health`` and ``/metrics``.

``/health`` says who the node is (id, failure domain, HSM backend, identity key id), whether it
is connected to NATS, whether its HSM answered at the last heartbeat, and, for every fleet it
belongs to, its replica's configuration epoch, whether that replica votes, whether the fleet
drains, and the vault requests in progress. It answers 503 while the node is not connected or
its HSM does not answer. ``/metrics`` is the process's Prometheus registry: the gates' rejects
by kind, the acceptor's and proposer's counters, the vault's rejects and outcomes. Nothing here
changes anything or shows a secret; the limits of :mod:`transport.httpguard` hold, and every refusal
(an unknown route, a wrong method) is counted by kind.
"""

from __future__ import annotations

from typing import Any

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, generate_latest

from messages.errors import HsmfleetError
from node.daemon import NodeDaemon
from transport.httpguard import HttpRefusal, Limits, application, refusal_kind

log = structlog.get_logger("hsmfleet.node")
HTTP_REJECTS = Counter(
    "hsmfleet_node_http_rejects", "Requests the node's HTTP face refused, by kind", ["kind"]
)
DAEMON = web.AppKey("daemon", NodeDaemon)
# Reads only: no body is ever needed.
LIMITS = Limits(max_body=0, handler_s=5.0)


def health(daemon: NodeDaemon) -> dict[str, Any]:
    """The node's health report (what ``/health`` answers)."""
    fleets = daemon.fleets
    return {
        "node_id": daemon.node_id,
        "domain": daemon.domain,
        "hsm": daemon.hsm.kind,
        "identity": daemon.node.identity.kid,
        "connected": daemon.connected,
        "hsm_ok": daemon.hsm_ok,
        "uptime_s": round(daemon.uptime_s(), 3),
        "fleets": {
            fleet: {
                "epoch": replica.current().epoch,
                "voting": replica.voting,
                "draining": joined.draining,
                "vault_in_progress": (
                    fleets.vaults[fleet].in_progress if fleet in fleets.vaults else None
                ),
            }
            for fleet, (joined, replica) in sorted(fleets.replicas.items())
        },
    }


async def _health(request: web.Request) -> web.Response:
    report = health(request.app[DAEMON])
    healthy = report["connected"] and report["hsm_ok"] is not False
    return web.json_response(report, status=200 if healthy else 503)


async def _metrics(_: web.Request) -> web.Response:
    return web.Response(
        body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


@web.middleware
async def _refusals(request: web.Request, handler: Any) -> web.StreamResponse:
    """Refusals become JSON answers with their kind, counted; nothing else changes."""
    try:
        return await handler(request)
    except HttpRefusal as exc:
        status, kind, message = exc.status, exc.kind, str(exc)
    except HsmfleetError as exc:
        status, kind, message = 400, exc.kind, str(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        status, kind, message = exc.status, refusal_kind(exc), exc.reason
    except Exception:
        log.exception("request failed", path=request.path)
        status, kind, message = 500, "internal", "the node failed; see its log"
    HTTP_REJECTS.labels(kind).inc()
    return web.json_response({"error": kind, "message": message}, status=status)


def create_app(daemon: NodeDaemon) -> web.Application:
    """The node's HTTP app over ``daemon``."""
    app = application(LIMITS, _refusals)
    app[DAEMON] = daemon
    app.router.add_get("/health", _health)
    app.router.add_get("/metrics", _metrics)
    return app
