"""The device protocol: frames, the operation and error registries, and dispatch.

A frame is a 4-byte big-endian length, then that many bytes (at most :data:`MAX_FRAME`) of one
UTF-8 JSON object. A request is ``{"v": 1, "id": <int>, "op": <name>, "args": {...}}``; its
answer carries the same id: ``{"id": .., "ok": true, "result": {...}}``, or ``{"id": .., "ok":
false, "kind": .., "message": .., "detail": {...}}``. An answer to a frame whose id cannot be
read carries ``"id": null``.

Arguments and results are typed bodies (:class:`messages.schema.Body`, bytes as base64) declared
per operation with :func:`operation`; they decode strictly: a field the body does not declare is
refused like a missing or mistyped one. Errors travel as their ``kind`` and are raised again on
the caller's side as their class, found in the error registry (:func:`register_error`): every
error of :mod:`node.hsm.base` and of this module is registered; other packages (the device's
applets) register their operations and errors the same way.
"""

from __future__ import annotations

import json
import math
import socket
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, TypeVar

from messages.canonical import b64, loads_strict
from messages.errors import HsmfleetError, SchemaViolation
from messages.schema import Body
from node.hsm import base
from node.hsm.base import HsmError

VERSION = 1
MAX_FRAME = 4 * 1024 * 1024
_LENGTH = struct.Struct(">I")
_REQUEST_KEYS = frozenset({"v", "id", "op", "args"})

E = TypeVar("E", bound=type[HsmfleetError])
Handler = Callable[[Any], Body]
"""Runs one operation: takes its request body, returns its result body."""


@dataclass(frozen=True)
class Operation:
    """One operation of the device: its name, and the bodies it takes and answers."""

    name: str
    request: type[Body]
    result: type[Body]


_OPERATIONS: dict[str, Operation] = {}
_ERRORS: dict[str, type[HsmfleetError]] = {}


def operation(name: str, request: type[Body], result: type[Body]) -> Operation:
    """Declare the operation ``name``; raises ``TypeError`` if the name is taken."""
    if name in _OPERATIONS:
        raise TypeError(f"device operation {name!r} is declared twice")
    made = _OPERATIONS[name] = Operation(name, request, result)
    return made


def declared(name: str) -> Operation:
    """The operation declared as ``name``; raises :class:`UnknownOperation`."""
    try:
        return _OPERATIONS[name]
    except KeyError:
        raise UnknownOperation("no device operation of this name", op=name) from None


def checked(op: str, request: Body) -> Operation:
    """The operation ``op``, once ``request`` is its declared body; raises
    :class:`UnknownOperation` or :class:`BadArguments`."""
    declared_op = declared(op)
    if type(request) is not declared_op.request:
        raise BadArguments(
            f"{op} takes {declared_op.request.__name__}", op=op, got=type(request).__name__
        )
    return declared_op


def register_error(cls: E) -> E:
    """Class decorator: raise ``cls`` on the caller's side for answers of its ``kind``.

    The class is rebuilt as ``cls(message, **detail)``; raises ``TypeError`` if another class
    has the kind already.
    """
    known = _ERRORS.setdefault(cls.kind, cls)
    if known is not cls:
        raise TypeError(f"error kind {cls.kind!r} is registered twice")
    return cls


def error_class(kind: str) -> type[HsmfleetError] | None:
    """The error class registered for ``kind``, if any."""
    return _ERRORS.get(kind)


for _error in vars(base).values():
    if isinstance(_error, type) and issubclass(_error, HsmError):
        register_error(_error)


@register_error
class DeviceProtocolError(HsmError):
    """A frame, request or answer does not follow the device protocol."""

    kind = "device_protocol"


@register_error
class MalformedFrame(DeviceProtocolError):
    """The frame is not a JSON object, or a request field is missing or of the wrong type."""

    kind = "device_malformed_frame"


@register_error
class FrameTooLarge(DeviceProtocolError):
    """The frame is longer than the protocol allows."""

    kind = "device_frame_too_large"


@register_error
class UnsupportedProtocol(DeviceProtocolError):
    """The request speaks a protocol version this device does not."""

    kind = "device_unsupported_version"


@register_error
class UnknownOperation(DeviceProtocolError):
    """The device offers no operation of this name."""

    kind = "device_unknown_op"


@register_error
class BadArguments(DeviceProtocolError):
    """The request's arguments do not fit the operation's schema."""

    kind = "device_bad_arguments"


@register_error
class DeviceFailed(HsmError):
    """The device failed while carrying out the operation (its log says why)."""

    kind = "device_failed"


@dataclass(frozen=True)
class Empty(Body):
    """No arguments, or no result."""


@dataclass(frozen=True)
class Hello(Body):
    """Who the device is: the protocol it speaks, its backend, the operations it offers."""

    protocol: int
    kind: str
    operations: tuple[str, ...] = ()


HELLO = operation("hello", Empty, Hello)


def checked_handlers(handlers: Mapping[str, Handler]) -> dict[str, Handler]:
    """A copy of ``handlers``; raises ``TypeError`` unless each names a declared operation and
    ``hello`` is among them."""
    unknown = sorted(set(handlers) - set(_OPERATIONS))
    if unknown:
        raise TypeError(f"handlers for undeclared device operations: {unknown}")
    if HELLO.name not in handlers:
        raise TypeError("a device answers hello")
    return dict(handlers)


def dispatch(handlers: Mapping[str, Handler], op: str, request: Body) -> Body:
    """Run ``op`` on ``request`` with its handler in ``handlers``.

    Raises :class:`UnknownOperation` when the table has no such operation and
    :class:`BadArguments` when ``request`` is not the operation's body. ``hello`` lists the
    table's operations: a table knows them, its handlers do not.
    """
    handler = handlers.get(op)
    if handler is None:
        raise UnknownOperation("the device offers no such operation", op=op)
    declared_op = checked(op, request)
    result = handler(request)
    if isinstance(result, Hello):
        result = replace(result, operations=tuple(sorted(handlers)))
    if type(result) is not declared_op.result:
        raise DeviceFailed("the operation answered another body than declared", op=op)
    return result


# -- frames ------------------------------------------------------------------------------------


def send_frame(sock: socket.socket, payload: bytes) -> None:
    """Send ``payload`` as one frame; raises :class:`FrameTooLarge`, sending nothing."""
    if len(payload) > MAX_FRAME:
        raise FrameTooLarge(
            "frame exceeds the protocol's limit", bytes=len(payload), limit=MAX_FRAME
        )
    sock.sendall(_LENGTH.pack(len(payload)) + payload)


def recv_frame(sock: socket.socket) -> bytes | None:
    """The next frame's payload; ``None`` when the peer closed between frames.

    Raises :class:`FrameTooLarge` (its payload unread) and ``ConnectionError`` when the peer
    closed inside a frame.
    """
    head = _recv_exactly(sock, _LENGTH.size, at_boundary=True)
    if head is None:
        return None
    (length,) = _LENGTH.unpack(head)
    if length > MAX_FRAME:
        raise FrameTooLarge("frame exceeds the protocol's limit", bytes=length, limit=MAX_FRAME)
    payload = _recv_exactly(sock, length, at_boundary=False)
    assert payload is not None
    return payload


def _recv_exactly(sock: socket.socket, size: int, at_boundary: bool) -> bytes | None:
    chunks, missing = [], size
    while missing:
        chunk = sock.recv(min(missing, 1 << 16))
        if not chunk:
            if at_boundary and missing == size:
                return None
            raise ConnectionError("the peer closed the connection inside a frame")
        chunks.append(chunk)
        missing -= len(chunk)
    return b"".join(chunks)


# -- requests ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """A request as read from a frame (its arguments not decoded yet)."""

    id: int
    op: str
    args: dict[str, Any]


def encode_request(request_id: int, op: str, body: Body) -> bytes:
    return _dumps({"v": VERSION, "id": request_id, "op": op, "args": body.to_json()})


def frame_object(frame: bytes) -> dict[str, Any]:
    """The JSON object a frame holds; raises :class:`MalformedFrame`."""
    try:
        value = loads_strict(frame.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise MalformedFrame(f"frame is not UTF-8 JSON: {exc}") from None
    if type(value) is not dict:
        raise MalformedFrame("frame is not a JSON object")
    return value


def frame_id(message: dict[str, Any]) -> int | None:
    """The request id ``message`` carries, if it is one."""
    value = message.get("id")
    return value if type(value) is int else None


def parse_request(message: dict[str, Any]) -> Request:
    """Check a request's envelope; raises :class:`MalformedFrame` or
    :class:`UnsupportedProtocol`."""
    if set(message) != _REQUEST_KEYS:
        raise MalformedFrame(
            "a request has exactly the fields v, id, op and args",
            missing=sorted(_REQUEST_KEYS - set(message)),
            unknown=sorted(set(message) - _REQUEST_KEYS),
        )
    version, request_id, op, args = (message[k] for k in ("v", "id", "op", "args"))
    if type(version) is not int:
        raise MalformedFrame("v must be an integer")
    if version != VERSION:
        raise UnsupportedProtocol(
            "the device does not speak this protocol version", got=version, supported=[VERSION]
        )
    if type(request_id) is not int or type(op) is not str or type(args) is not dict:
        raise MalformedFrame("id must be an integer, op a string and args an object")
    return Request(request_id, op, args)


def decode_body(cls: type[Body], raw: Any, path: str) -> Body:
    """``raw`` as a ``cls`` body, strictly; raises :class:`SchemaViolation`."""
    body = cls.from_json(raw, path)
    _refuse_extra(body, path)
    return body


def _refuse_extra(body: Body, path: str) -> None:
    if body.extra:
        raise SchemaViolation(
            f"{path} has fields its schema does not declare: {sorted(body.extra)}"
        )
    for f in fields(body):
        value = getattr(body, f.name)
        for i, item in enumerate(value if isinstance(value, tuple) else (value,)):
            if isinstance(item, Body):
                _refuse_extra(item, f"{path}.{f.name}[{i}]")


# -- answers -----------------------------------------------------------------------------------


def encode_result(request_id: int, result: Body) -> bytes:
    return _dumps({"id": request_id, "ok": True, "result": result.to_json()})


def encode_error(request_id: int | None, error: HsmfleetError) -> bytes:
    message = str(error.args[0]) if error.args else error.kind
    return _dumps(
        {
            "id": request_id,
            "ok": False,
            "kind": error.kind,
            "message": message,
            "detail": _plain(error.detail),
        }
    )


def parse_answer(frame: bytes, result: type[Body]) -> tuple[int | None, Body | HsmfleetError]:
    """The id an answer carries, and its result body or the error to raise.

    Raises :class:`DeviceProtocolError` when the answer does not follow the protocol.
    """
    message = frame_object(frame)
    answer_id = message.get("id")
    if answer_id is not None and type(answer_id) is not int:
        raise DeviceProtocolError("the device's answer carries no usable id")
    if message.get("ok") is True and set(message) == {"id", "ok", "result"}:
        try:
            return answer_id, decode_body(result, message["result"], "result")
        except SchemaViolation as exc:
            raise DeviceProtocolError(
                f"the device's result does not fit its schema: {exc}"
            ) from None
    if message.get("ok") is False:
        return answer_id, _error(message)
    raise DeviceProtocolError("the device's answer is neither a result nor an error")


def _error(message: dict[str, Any]) -> HsmfleetError:
    """The typed error an error answer stands for."""
    kind, text, detail = message.get("kind"), message.get("message"), message.get("detail")
    if type(kind) is not str or type(text) is not str or type(detail) is not dict:
        raise DeviceProtocolError("the device's error answer is malformed")
    if not all(k.isidentifier() and k != "message" for k in detail):
        raise DeviceProtocolError("the device's error detail is malformed")
    cls = error_class(kind)
    if cls is None:
        return HsmError(text, **{**detail, "kind": kind})
    return cls(text, **detail)


def _dumps(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _plain(value: Any) -> Any:
    """``value`` as JSON can carry it: bytes as base64, what JSON has no word for as its repr."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, bytes):
        return b64(value)
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return repr(value)
