"""The limits every hsmfleet HTTP app shares: body size, handler time, slow and idle clients.

:func:`application` builds an aiohttp app with the limits in force on every route, including
routes registered after it is built:

- **Body size.** A declared ``Content-Length`` above ``max_body`` is refused before the handler
  runs; a chunked body is cut off by aiohttp's ``client_max_size`` when it grows past it. Both
  are :class:`RequestTooLarge` (413).
- **Handler time.** Each request must be answered within ``handler_s``, reading its body
  included, or it gets :class:`HandlerTimeout` (503). A safe request (GET, HEAD, OPTIONS) is
  cancelled then. A command's body is read under the deadline and cancelled with it, but once
  its handler runs it is left to finish in the background: cancelling it half-way (say between
  appending to the event log and folding what it appended) would be worse than answering late,
  so the answer says that its outcome is unknown. A handler that starts streaming (server-sent
  events) has sent its answer's head in time; its deadline is lifted then.
- **Credentials first.** The app's own middlewares (authorization) run before a command's body
  is read: a request without credentials is refused from its head alone, never holding the
  server for a body of up to ``max_body`` bytes sent as slowly as the deadline allows.
- **Slow and idle clients.** aiohttp's keep-alive timer starts when a connection opens, and
  closes a connection that is idle or whose request head is still incomplete after ``idle_s``
  (so a client cannot hold a connection by sending its headers a byte at a time); the number
  and size of header lines are bounded.
- **Event streams.** At most ``max_streams`` long-lived answers are open at once
  (:func:`stream_slot`); one more is :class:`TooManyStreams` (503).

Refusals are :class:`HttpRefusal` errors carrying their HTTP status; each app's own error
middleware, which :func:`application` puts outermost, renders them in that app's JSON shape.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

import structlog
from aiohttp import web

from messages.errors import HsmfleetError

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

log = structlog.get_logger("hsmfleet.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Middleware = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Limits:
    """What one HTTP app accepts from a client."""

    max_body: int = 1024 * 1024
    """Largest request body, in bytes."""
    handler_s: float = 30.0
    """Longest time from a request's head to its answer's head, in seconds."""
    idle_s: float = 15.0
    """Longest a connection may stay idle, or take to send a request head, in seconds."""
    max_headers: int = 64
    max_header_bytes: int = 8190
    """Longest request line or header field, in bytes."""
    max_streams: int = 32
    """Most long-lived answers (event streams) open at once; more are refused (503)."""


class HttpRefusal(HsmfleetError):
    """A request refused by the limits; ``status`` is the HTTP status to answer with."""

    kind = "http_refusal"
    status = 400


class RequestTooLarge(HttpRefusal):
    """The request body is larger than the app accepts."""

    kind = "request_too_large"
    status = 413


class HandlerTimeout(HttpRefusal):
    """The request was not answered in time."""

    kind = "handler_timeout"
    status = 503


class TooManyStreams(HttpRefusal):
    """As many event streams are open as the app allows; try again later."""

    kind = "too_many_streams"
    status = 503


def refusal_kind(exc: web.HTTPException) -> str:
    """The kind an app counts one of aiohttp's own refusals by (``not_found``,
    ``method_not_allowed``, ...)."""
    return exc.reason.lower().replace(" ", "_")


class BadListenAddress(HsmfleetError):
    """An HTTP listen address that is not ``HOST:PORT``."""

    kind = "listen_address"


def listen_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (host optional, port 0 for any free one; an IPv6 host in brackets, as in
    ``[::1]:8080``) as a host and a port number."""
    host, _, port = text.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    if bracketed:
        host = host[1:-1]
    well_formed = port.isascii() and port.isdigit() and int(port) <= 65535
    if not well_formed or (":" in host and not bracketed):
        raise BadListenAddress("the HTTP address must be HOST:PORT", address=text)
    return host or "127.0.0.1", int(port)


@dataclass
class _Streams:
    open: int = 0


LIMITS = web.AppKey("http_limits", Limits)
_STREAMS = web.AppKey("http_streams", _Streams)
_DEADLINE = web.RequestKey("http_deadline", asyncio.Timeout)
_WORK = web.RequestKey("http_work", asyncio.Future)


def application(limits: Limits, errors: Middleware, *inner: Middleware) -> web.Application:
    """An app whose every route is held to ``limits``.

    ``errors`` is the app's own error middleware (outermost, so it renders refusals); ``inner``
    middlewares (such as authorization) run inside the limits, before a command's body is read.
    """
    app = web.Application(
        client_max_size=limits.max_body,
        middlewares=[errors, _guard, *inner, _command],
        handler_args={
            "keepalive_timeout": limits.idle_s,
            "max_headers": limits.max_headers,
            "max_line_size": limits.max_header_bytes,
            "max_field_size": limits.max_header_bytes,
        },
    )
    app[LIMITS] = limits
    app[_STREAMS] = _Streams()
    app.on_response_prepare.append(_streaming)
    return app


@contextlib.contextmanager
def stream_slot(request: web.Request) -> Iterator[None]:
    """Hold one of the app's ``max_streams`` slots while a long-lived answer (server-sent
    events) lasts; raise :class:`TooManyStreams` when none is free. Take it before the answer
    starts, so a refusal is still a whole answer."""
    streams, limit = request.app[_STREAMS], request.app[LIMITS].max_streams
    if streams.open >= limit:
        raise TooManyStreams("too many event streams are open; try again later", limit=limit)
    streams.open += 1
    try:
        yield
    finally:
        streams.open -= 1


@web.middleware
async def _guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    limits = request.app[LIMITS]
    declared = request.content_length
    if declared is not None and declared > limits.max_body:
        raise RequestTooLarge("the request body is too large", size=declared, limit=limits.max_body)
    deadline = asyncio.timeout(limits.handler_s)
    try:
        async with deadline:
            request[_DEADLINE] = deadline
            return await handler(request)
    except web.HTTPRequestEntityTooLarge:
        raise RequestTooLarge("the request body is too large", limit=limits.max_body) from None
    except TimeoutError:
        if not deadline.expired():
            raise  # the handler's own timeout, not the request's
        work = request.get(_WORK)
        if work is None:
            raise HandlerTimeout(
                "the request was not answered in time", limit=limits.handler_s
            ) from None
        work.add_done_callback(_settled)
        raise HandlerTimeout(
            "the command was not answered in time; it may still take effect, so read its state"
            " before trying again",
            limit=limits.handler_s,
        ) from None
    finally:
        request.pop(_DEADLINE, None)


@web.middleware
async def _command(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Innermost: read a command's body whole (under the deadline of :func:`_guard`), then run
    its handler shielded from that deadline (:func:`_guard` reports it as still running)."""
    if request.method in SAFE_METHODS:
        return await handler(request)
    await request.read()  # handlers read it again from aiohttp's cache
    work = asyncio.ensure_future(handler(request))
    request[_WORK] = work
    return await asyncio.shield(work)


async def _streaming(request: web.Request, response: web.StreamResponse) -> None:
    """A handler that starts streaming answered in time; the stream lasts as the client wants."""
    deadline = request.get(_DEADLINE)
    if deadline is not None and not deadline.expired():
        deadline.reschedule(None)


def _settled(work: asyncio.Future[web.StreamResponse]) -> None:
    """Log what a command that outlived its request's deadline ended with."""
    if work.cancelled():
        return
    exc = work.exception()
    if exc is not None and not isinstance(exc, HsmfleetError | web.HTTPException):
        log.error("command failed", exc_info=exc)
