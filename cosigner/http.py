"""A cosigner's HTTP API (aiohttp): its log for auditors, its witness for other logs.

Read API (anyone):

- ``GET /checkpoint``: the latest signed checkpoint note (``text/plain``);
- ``GET /entries?start=S&end=E``: entries ``S..E-1`` (at most :data:`MAX_ENTRIES`) as
  ``{"start": S, "entries": [base64 of each entry's bytes]}``;
- ``GET /inclusion?index=I[&size=N]`` or ``?digest=HEX[&size=N]``:
  ``{"index", "size", "proof": [base64], "checkpoint"}``; without ``size`` the proof is against
  the latest checkpoint, which the answer carries (else ``checkpoint`` is null);
- ``GET /consistency?old=M[&size=N]``: ``{"old_size", "size", "proof", "checkpoint"}``, likewise;
- ``GET /receipt?digest=HEX``: the cosigner's answer for a logged document (statement,
  signature, inclusion proof, checkpoint), as sent over NATS;
- ``GET /witnessed?origin=O``: the checkpoints of log ``O`` this witness cosigned, and the
  ones ``O`` signed with the size of a cosigned one but another root (``equivocations``);
- ``GET /stats``: counters, rejects by kind.

Witness API (C2SP tlog-witness): ``POST /add-checkpoint`` with body ``old <size>\\n``, the
consistency proof one base64 hash per line, an empty line, then the checkpoint note; answers the
cosignature line (200), or 400 malformed, 403 not signed by the log, 404 unknown log, 409 with
``text/x.tlog.size`` body ``<size>\\n`` when ``old`` is not the size last cosigned, 422 when the
proof does not verify.

Bad requests get ``{"kind", "reason"}`` with 400 (or 404 for what does not exist), change
nothing and are counted. The limits of :mod:`transport.httpguard` hold for every route: request
bodies up to :data:`MAX_REQUEST_BYTES` (else 413), an answer within the handler time (else 503),
and slow or idle connections closed.

Authentication: reading needs none (a log is public). The one request that changes state,
``POST /add-checkpoint``, is authenticated as C2SP tlog-witness does it: by the checkpoint's
signature under the key of a log this witness is configured to witness. Nothing is stored before
that signature verifies (an unknown origin is 404, a bad signature 403), so an anonymous caller
can only make the witness cosign what the log itself signed and extends what it saw; no bearer
token is added, so that any log operator or relay may submit.

:func:`make_app` builds the application; its ``cleanup_ctx`` opens the cosigner's state (and its
NATS service, given a URL) when the app starts and closes them when it stops.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from cosigner.engine import Cosigner, wall_clock_ms
from cosigner.service import NatsService
from cosigner.witness import (
    BadWitnessCheckpoint,
    BadWitnessProof,
    MalformedWitnessRequest,
    UnknownLog,
    WitnessError,
)
from messages.canonical import b64, unb64
from messages.checkpoint import parse_count
from messages.documents import is_digest
from messages.errors import HsmfleetError
from messages.merkle import MerkleError
from transport import credentials
from transport.httpguard import HttpRefusal, Limits, application, refusal_kind
from transport.parties import COSIGNER as COSIGNER_ROLE

MAX_ENTRIES = 256
MAX_REQUEST_BYTES = 64 * 1024
MAX_PROOF_LINES = 63
LIMITS = Limits(max_body=MAX_REQUEST_BYTES, handler_s=10.0)

COSIGNER = web.AppKey("cosigner", Cosigner)
NATS_SERVICE = web.AppKey("nats_service", NatsService)
HTTP_REJECTS = web.AppKey("http_rejects", Counter)

log = structlog.get_logger("hsmfleet.cosigner.http")


class BadQuery(HsmfleetError):
    """A query parameter is missing, not a number, or out of range."""

    kind = "bad_query"


class NotFound(HsmfleetError):
    """Nothing is logged under this digest or index."""

    kind = "not_found"


_WITNESS_STATUS: dict[type[WitnessError], int] = {
    MalformedWitnessRequest: 400,
    BadWitnessCheckpoint: 403,
    UnknownLog: 404,
    BadWitnessProof: 422,
}


def _count(request: web.Request, query: str, *, default: int | None = None) -> int:
    raw = request.query.get(query)
    if raw is None:
        if default is None:
            raise BadQuery(f"{query} is required")
        return default
    value = parse_count(raw)
    if value is None:
        raise BadQuery(f"{query} must be a decimal count", value=raw)
    return value


def _error(request: web.Request, exc: HsmfleetError, status: int) -> web.Response:
    return _refused(request, status, exc.kind, str(exc))


def _refused(request: web.Request, status: int, kind: str, reason: str) -> web.Response:
    request.app[HTTP_REJECTS][kind] += 1
    return web.json_response({"kind": kind, "reason": reason}, status=status)


@web.middleware
async def _refusals(
    request: web.Request, handler: Callable[[web.Request], Any]
) -> web.StreamResponse:
    """Typed errors become JSON answers with their kind; nothing else changes."""
    try:
        return await handler(request)
    except (NotFound, MerkleError) as exc:
        status = 404 if isinstance(exc, NotFound) else 400
        return _error(request, exc, status)
    except HttpRefusal as exc:
        return _error(request, exc, exc.status)
    except HsmfleetError as exc:
        return _error(request, exc, 400)
    except web.HTTPException as exc:
        # aiohttp's own refusals (no such route, method not allowed) are counted too.
        if exc.status < 400:
            raise
        return _refused(request, exc.status, refusal_kind(exc), exc.reason)


routes = web.RouteTableDef()


@routes.get("/checkpoint")
async def checkpoint(request: web.Request) -> web.Response:
    note = request.app[COSIGNER].notary.checkpoint()
    return web.Response(text=note, content_type="text/plain", charset="utf-8")


@routes.get("/entries")
async def entries(request: web.Request) -> web.Response:
    notary = request.app[COSIGNER].notary
    start = _count(request, "start")
    end = _count(request, "end", default=min(start + MAX_ENTRIES, notary.size))
    if not start <= end <= notary.size or end - start > MAX_ENTRIES:
        raise BadQuery(
            f"range must lie inside the log and hold at most {MAX_ENTRIES} entries",
            start=start,
            end=end,
            size=notary.size,
        )
    rows = await asyncio.to_thread(notary.entries, start, end)
    return web.json_response({"start": start, "entries": [b64(row) for row in rows]})


def _against(request: web.Request) -> tuple[int, str | None]:
    """The tree size a proof is asked against, and the latest checkpoint when none is given."""
    size, note = request.app[COSIGNER].notary.head()
    if "size" in request.query:
        return _count(request, "size"), None
    return size, note


@routes.get("/inclusion")
async def inclusion(request: web.Request) -> web.Response:
    notary = request.app[COSIGNER].notary
    size, note = _against(request)
    if "digest" in request.query:
        digest = request.query["digest"]
        if not is_digest(digest):
            raise BadQuery("digest must be 64 lowercase hex digits")
        index = notary.index_of(digest)
        if index is None:
            raise NotFound("no logged document has this digest", digest=digest)
    else:
        index = _count(request, "index")
    proof = await asyncio.to_thread(notary.inclusion_proof, index, size)
    body = {"index": index, "size": size, "proof": [b64(h) for h in proof], "checkpoint": note}
    return web.json_response(body)


@routes.get("/consistency")
async def consistency(request: web.Request) -> web.Response:
    notary = request.app[COSIGNER].notary
    size, note = _against(request)
    old = _count(request, "old")
    proof = await asyncio.to_thread(notary.consistency_proof, old, size)
    body = {"old_size": old, "size": size, "proof": [b64(h) for h in proof], "checkpoint": note}
    return web.json_response(body)


@routes.get("/receipt")
async def receipt(request: web.Request) -> web.Response:
    digest = request.query.get("digest", "")
    if not is_digest(digest):
        raise BadQuery("digest must be 64 lowercase hex digits")
    try:
        answer = await request.app[COSIGNER].receipt(digest)
    except HsmfleetError as exc:
        raise NotFound(str(exc), digest=digest) from exc
    return web.json_response(answer.to_json())


@routes.get("/witnessed")
async def witnessed(request: web.Request) -> web.Response:
    origin = request.query.get("origin", "")
    witness = request.app[COSIGNER].witness
    history = await asyncio.to_thread(witness.history, origin)
    forks = await asyncio.to_thread(witness.equivocations, origin)
    return web.json_response(
        {
            "origin": origin,
            "checkpoints": [{"size": s.size, "note": s.note} for s in history],
            "equivocations": [{"size": s.size, "note": s.note} for s in forks],
        }
    )


@routes.get("/stats")
async def stats(request: web.Request) -> web.Response:
    out = request.app[COSIGNER].stats()
    service = request.app.get(NATS_SERVICE)
    out["message_rejects"] = service.rejects() if service is not None else {}
    out["http_rejects"] = dict(request.app[HTTP_REJECTS])
    return web.json_response(out)


def parse_add_checkpoint(body: str) -> tuple[int, list[bytes], str]:
    """Split a C2SP add-checkpoint body into old size, consistency proof and checkpoint note."""
    head, sep, note = body.partition("\n\n")
    lines = head.split("\n")
    if not sep or not lines[0].startswith("old "):
        raise MalformedWitnessRequest("body must start with an old size line and a blank line")
    size = parse_count(lines[0][4:])
    if size is None:
        raise MalformedWitnessRequest("old size must be decimal without leading zeros")
    if len(lines) - 1 > MAX_PROOF_LINES:
        raise MalformedWitnessRequest("too many consistency proof lines")
    try:
        proof = [unb64(line) for line in lines[1:]]
    except ValueError as exc:
        raise MalformedWitnessRequest("consistency proof lines must be base64") from exc
    return size, proof, note


@routes.post("/add-checkpoint")
async def add_checkpoint(request: web.Request) -> web.Response:
    cosigner = request.app[COSIGNER]
    try:
        body = (await request.read()).decode("utf-8")
    except UnicodeDecodeError:
        return _error(request, MalformedWitnessRequest("the body is not UTF-8"), 400)
    try:
        old, proof, note = parse_add_checkpoint(body)
        answer = await cosigner.cosign(old, proof, note)
    except WitnessError as exc:
        return _error(request, exc, _WITNESS_STATUS.get(type(exc), 400))
    if answer.cosignature is None:
        request.app[HTTP_REJECTS]["witness_conflict"] += 1
        return web.Response(status=409, text=f"{answer.size}\n", content_type="text/x.tlog.size")
    return web.Response(text=answer.cosignature, content_type="text/plain", charset="utf-8")


def make_app(
    state: Path,
    nats_url: str | None = None,
    clock_ms: Callable[[], int] = wall_clock_ms,
    limits: Limits = LIMITS,
    *,
    nats_seed: Path | None = None,
    nats_ca: Path | None = None,
) -> web.Application:
    """The cosigner whose state lives in ``state``, served over HTTP and, given ``nats_url``,
    over NATS (connected as the party ``cosigner-<id>`` with ``nats_seed`` and ``nats_ca`` when
    the servers are secured), held to ``limits``. Opened when the app starts, closed when it
    stops."""
    app = application(limits, _refusals)
    app[HTTP_REJECTS] = Counter()

    async def lifetime(app: web.Application) -> AsyncIterator[None]:
        cosigner = await asyncio.to_thread(Cosigner.open, state, clock_ms)
        app[COSIGNER] = cosigner
        cosigner.start_refresh()
        nc = None
        try:
            if nats_url is not None:
                party = credentials.party_options(COSIGNER_ROLE, cosigner.id, nats_seed, nats_ca)
                nc = await credentials.connect(nats_url, party)
                app[NATS_SERVICE] = NatsService(nc, cosigner)
                await app[NATS_SERVICE].start()
            log.info(
                "cosigner started", id=cosigner.id, name=cosigner.name, size=cosigner.notary.size
            )
            yield
        finally:
            if nc is not None:
                await app[NATS_SERVICE].stop()
                await nc.drain()
            await cosigner.close()
            log.info("cosigner stopped", id=cosigner.id)

    app.cleanup_ctx.append(lifetime)
    app.add_routes(routes)
    return app


class Server:
    """A running cosigner app on a TCP port (0: any free port)."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self._runner = web.AppRunner(app, access_log=None)
        self.url = ""

    @property
    def cosigner(self) -> Cosigner:
        return self.app[COSIGNER]

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        self.url = f"http://{host}:{self._runner.addresses[0][1]}"
        return self.url

    async def stop(self) -> None:
        await self._runner.cleanup()
