"""The caller's side of a device: transports, and :class:`DeviceHsm`, the HSM interface over one.

A transport offers ``call(op, request) -> result``: :class:`DeviceClient` over the device's Unix
socket, or :class:`LocalDevice`, the same handler table called in this process (no socket: a
baseline for benchmarks, and unit tests of code written against the device). Either raises the
device's refusals as their typed errors.
"""

from __future__ import annotations

import itertools
import select
import socket
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

from messages.schema import Body
from node.hsm.base import Hsm, HsmError, HsmUnavailable, PublicKey, WrappedKey
from node.hsm.device import core
from node.hsm.device.protocol import (
    HELLO,
    VERSION,
    DeviceProtocolError,
    Empty,
    Handler,
    Hello,
    UnsupportedProtocol,
    checked,
    checked_handlers,
    dispatch,
    encode_request,
    parse_answer,
    recv_frame,
    send_frame,
)

if TYPE_CHECKING:
    from messages.attestation import Attestation

B = TypeVar("B", bound=Body)
DEFAULT_TIMEOUT = 10.0
_IDLE = 8


class NotOnDevice(HsmError):
    """The operation runs only inside the device process: its boundary does not offer it."""

    kind = "hsm_not_on_device"


class Transport(Protocol):
    """How a caller reaches a device's operations."""

    def call(self, op: str, request: Body) -> Body: ...

    def close(self) -> None: ...


class LocalDevice:
    """A device's handler table, called in this process."""

    def __init__(self, handlers: Mapping[str, Handler]) -> None:
        self.handlers = checked_handlers(handlers)

    def call(self, op: str, request: Body) -> Body:
        """Run ``op``; raises what its handler raises, and the protocol's typed errors."""
        return dispatch(self.handlers, op, request)

    def close(self) -> None:
        """Nothing to release: the handlers' backend belongs to whoever made them."""


class DeviceClient:
    """A device reached over its Unix socket; thread-safe.

    Each call borrows an idle connection (one that the device closed, when it restarted, is
    dropped and a new one made) or opens one, so calls from several threads run at once.
    """

    def __init__(self, socket_path: Path, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.socket_path = Path(socket_path)
        self.timeout = timeout
        self._idle: list[socket.socket] = []
        self._lock = threading.Lock()
        self._ids = itertools.count(1)

    def call(self, op: str, request: Body) -> Body:
        """Run ``op`` on the device and return its result.

        Raises :class:`~node.hsm.device.protocol.UnknownOperation` and
        :class:`~node.hsm.device.protocol.BadArguments`, sending nothing, for an operation not
        declared or a request that is not its body; the device's refusal as its typed error;
        :class:`HsmUnavailable` when the device is not there or does not answer within the
        timeout; and
        :class:`~node.hsm.device.protocol.DeviceProtocolError` for an answer that does not
        follow the protocol.
        """
        declared_op = checked(op, request)
        with self._lock:
            request_id = next(self._ids)
        frame = encode_request(request_id, op, request)
        conn = self._borrow()
        try:
            send_frame(conn, frame)
            answer = recv_frame(conn)
            if answer is None:
                raise ConnectionError("the device closed the connection")
            answer_id, outcome = parse_answer(answer, declared_op.result)
            if answer_id not in (request_id, None):
                raise DeviceProtocolError(
                    "the device answered another request", expected=request_id, got=answer_id
                )
        except OSError as exc:
            conn.close()
            raise HsmUnavailable(
                "the HSM device does not answer",
                socket=str(self.socket_path),
                error=type(exc).__name__,
            ) from exc
        except HsmError:
            conn.close()
            raise
        if answer_id is None:
            conn.close()  # the device answered a frame it could not read: it hangs up
        else:
            self._give_back(conn)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def close(self) -> None:
        """Close the idle connections (calls still under way close theirs when done)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def _borrow(self) -> socket.socket:
        with self._lock:
            while self._idle:
                conn = self._idle.pop()
                if _open(conn):
                    return conn
                conn.close()
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.settimeout(self.timeout)
        try:
            conn.connect(str(self.socket_path))
        except OSError as exc:
            conn.close()
            raise HsmUnavailable(
                "the HSM device is not there",
                socket=str(self.socket_path),
                error=type(exc).__name__,
            ) from exc
        return conn

    def _give_back(self, conn: socket.socket) -> None:
        with self._lock:
            if len(self._idle) < _IDLE:
                self._idle.append(conn)
                return
        conn.close()


def _open(conn: socket.socket) -> bool:
    """Whether an idle connection still leads to the device: nothing to read, not even EOF."""
    poller = select.poll()
    poller.register(conn, select.POLLIN)
    return not poller.poll(0)


class DeviceHsm(Hsm):
    """The HSM interface over a device transport: the keys are in the device's process.

    ``kind`` is the kind of the backend the device reports. The device-internal primitives
    (ECDH, sealing, OPAQUE setups) and storing certificates are not offered across the boundary
    and raise :class:`NotOnDevice`.
    """

    kind = "device"

    def __init__(self, device: Transport) -> None:
        """Greet ``device``; raises :class:`HsmUnavailable` if it is not there and
        :class:`UnsupportedProtocol` if it speaks another protocol version."""
        self.device = device
        """The transport: the device's other operations (its applets') are reached on it."""
        hello = device.call(HELLO.name, Empty())
        assert isinstance(hello, Hello)
        if hello.protocol != VERSION:
            raise UnsupportedProtocol(
                "the device speaks another protocol version", got=hello.protocol
            )
        self.kind = hello.kind  # the backend's, known once greeted
        self.operations = frozenset(hello.operations)

    def supports(self, alg: str) -> bool:
        return self._call(core.SUPPORTS.name, core.Algorithm(alg), core.Flag).value

    def generate(self, label: str, alg: str, *, wrappable: bool = False) -> PublicKey:
        return self._call(core.GENERATE.name, core.NewKey(label, alg, wrappable), core.Key).public()

    def public_key(self, label: str) -> PublicKey:
        return self._call(core.PUBLIC_KEY.name, core.Label(label), core.Key).public()

    def labels(self) -> list[str]:
        return list(self._call(core.LABELS.name, Empty(), core.Labels).labels)

    def sign(self, label: str, data: bytes) -> bytes:
        return self._call(core.SIGN.name, core.ToSign(label, data), core.Signature).signature

    def wrap(
        self,
        label: str,
        recipient: bytes,
        context: bytes,
        *,
        attestation: Attestation | None = None,
    ) -> WrappedKey:
        shown = None if attestation is None else attestation.to_json()
        request = core.ToWrap(label, recipient, context, shown)
        return self._call(core.WRAP.name, request, core.Wrapped).key()

    def unwrap(
        self, transport_label: str, wrapped: WrappedKey, label: str, context: bytes
    ) -> PublicKey:
        request = core.ToUnwrap(transport_label, core.Wrapped.of(wrapped), label, context)
        return self._call(core.UNWRAP.name, request, core.Key).public()

    def destroy(self, label: str) -> None:
        self._call(core.DESTROY.name, core.Label(label), Empty)

    def certificate(self, label: str) -> bytes | None:
        return self._call(core.CERTIFICATE.name, core.Label(label), core.Certificate).der

    def store_certificate(self, label: str, der: bytes) -> None:
        raise NotOnDevice("certificates are stored when the device is provisioned", label=label)

    def ecdh(self, label: str, peer_point: bytes) -> bytes:
        raise NotOnDevice("ECDH runs only inside the device", label=label)

    def seal(self, label: str, plaintext: bytes, aad: bytes) -> bytes:
        raise NotOnDevice("sealing runs only inside the device", label=label)

    def unseal(self, label: str, sealed: bytes, aad: bytes) -> bytes:
        raise NotOnDevice("unsealing runs only inside the device", label=label)

    def secret(self, label: str) -> bytes:
        raise NotOnDevice("OPAQUE setups stay inside the device", label=label)

    def open_hpke(self, label: str, sealed: bytes, info: bytes, aad: bytes = b"") -> bytes:
        raise NotOnDevice("HPKE opens only inside the device", label=label)

    def healthy(self) -> bool:
        try:
            return self._call(core.HEALTHY.name, Empty(), core.Flag).value
        except HsmError:
            return False

    def close(self) -> None:
        self.device.close()

    def _call(self, op: str, request: Body, result: type[B]) -> B:
        answer = self.device.call(op, request)
        assert isinstance(answer, result)
        return answer
