"""The device's socket: a handler table served on a Unix socket, one thread per connection.

The socket is created owner-only (0600), in a directory created owner-only (0700) if missing.
Every frame gets an answer: a request that cannot be carried out (malformed, oversize, of an
unknown version or operation, arguments that do not fit, a refusal of the backend) gets its typed
error, counted by kind in :attr:`DeviceServer.refused`; a failure of the device itself is logged
here and answered as :class:`~node.hsm.device.protocol.DeviceFailed`, never as a traceback. Only
an oversize frame ends its connection (its payload is not read), after the answer.
"""

from __future__ import annotations

import contextlib
import os
import socket
import socketserver
import stat
import threading
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import structlog

from messages.errors import HsmfleetError, SchemaViolation
from node.hsm.base import HsmError
from node.hsm.device.protocol import (
    MAX_FRAME,
    BadArguments,
    DeviceFailed,
    FrameTooLarge,
    Handler,
    UnknownOperation,
    checked_handlers,
    declared,
    decode_body,
    dispatch,
    encode_error,
    encode_result,
    frame_id,
    frame_object,
    parse_request,
    recv_frame,
    send_frame,
)

log = structlog.get_logger("hsmfleet.hsm.device")
_STOP_POLL_S = 0.1
"""How often the accepting thread looks whether it is to stop."""


class DeviceSocketError(HsmError):
    """The device cannot listen on its socket: another device serves it, the path is taken by
    something that is not a socket, or it cannot be made."""

    kind = "device_socket"


class DeviceServer:
    """Serves ``handlers`` on the Unix socket ``socket_path``."""

    def __init__(self, socket_path: Path, handlers: Mapping[str, Handler]) -> None:
        self.socket_path = Path(socket_path)
        self.handlers = checked_handlers(handlers)
        self.refused: Counter[str] = Counter()
        """Requests answered with an error, by the error's kind."""
        self._counting = threading.Lock()
        self._listener: _Listener | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self._stopping = False

    def start(self) -> None:
        """Listen; returns once connections are accepted. Raises :class:`DeviceSocketError`."""
        directory = self.socket_path.parent
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._clear_stale()
            # The umask, not a chmod after bind, so the socket is never open to others.
            umask = os.umask(0o177)
            try:
                self._listener = _Listener(str(self.socket_path), self)
            finally:
                os.umask(umask)
        except OSError as exc:
            raise DeviceSocketError(
                f"cannot listen on the device socket: {exc}", socket=str(self.socket_path)
            ) from exc
        self._stopping = False
        self._thread = threading.Thread(
            target=self._listener.serve_forever,
            kwargs={"poll_interval": _STOP_POLL_S},
            name="hsm-device",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop listening, end the open connections, and remove the socket."""
        listener, self._listener = self._listener, None
        if listener is None:
            return
        listener.shutdown()
        with self._counting:
            self._stopping = True
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        listener.server_close()
        if self._thread is not None:
            self._thread.join()
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()

    def __enter__(self) -> DeviceServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def answer(self, frame: bytes) -> bytes:
        """The answer to one frame's request (an error answer if it cannot be carried out)."""
        request_id = None
        try:
            message = frame_object(frame)
            request_id = frame_id(message)
            request = parse_request(message)
            if request.op not in self.handlers:
                raise UnknownOperation("the device offers no such operation", op=request.op)
            operation = declared(request.op)
            try:
                args = decode_body(operation.request, request.args, "args")
            except SchemaViolation as exc:
                raise BadArguments(str(exc), op=request.op) from None
            answer = encode_result(request_id, dispatch(self.handlers, request.op, args))
            if len(answer) > MAX_FRAME:
                raise FrameTooLarge("the answer exceeds the protocol's limit", bytes=len(answer))
            return answer
        except HsmfleetError as exc:
            return self._refuse(request_id, exc)
        except Exception:
            log.exception("device operation failed", id=request_id)
            return self._refuse(request_id, DeviceFailed("the device failed; see its log"))

    def serve_connection(self, conn: socket.socket) -> None:
        """Answer the frames of one connection until the caller hangs up."""
        with self._counting:
            if self._stopping:
                return
            self._connections.add(conn)
        try:
            while True:
                try:
                    frame = recv_frame(conn)
                except FrameTooLarge as exc:
                    send_frame(conn, self._refuse(None, exc))
                    return
                if frame is None:
                    return
                send_frame(conn, self.answer(frame))
        except OSError:
            return  # the caller went away mid-frame, or the device is stopping
        finally:
            with self._counting:
                self._connections.discard(conn)

    def _refuse(self, request_id: int | None, error: HsmfleetError) -> bytes:
        with self._counting:
            self.refused[error.kind] += 1
        log.debug("device request refused", id=request_id, error=error.kind)
        return encode_error(request_id, error)

    def _clear_stale(self) -> None:
        """Remove a socket left by a device that is gone; refuse one a device still serves,
        and a path that is not a socket."""
        try:
            mode = self.socket_path.lstat().st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(mode):
            raise DeviceSocketError("the socket path is taken", socket=str(self.socket_path))
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(self.socket_path))
        except ConnectionRefusedError:
            self.socket_path.unlink()
            return
        finally:
            probe.close()
        raise DeviceSocketError("another device serves this socket", socket=str(self.socket_path))


class _Listener(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str, device: DeviceServer) -> None:
        self.device = device
        super().__init__(path, _Connection)


class _Connection(socketserver.BaseRequestHandler):
    server: _Listener

    def handle(self) -> None:
        self.server.device.serve_connection(self.request)
