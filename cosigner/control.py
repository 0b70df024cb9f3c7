"""A running cosigner's local control channel: its own party asks it to act on its state.

``hsmfleet cosigner rotate-key`` run while the cosigner serves cannot open the state (the log is
the running process's), so it asks the process instead, over a Unix socket in the state
directory (``control.sock``, owner-only: whoever may use it may read the state directory anyway,
and nothing on the network reaches it). One request per connection, one JSON line each way:
``{"command": "rotate-key"}`` is answered ``{"ok": true, "rotation": {...}}`` or
``{"ok": false, "error": KIND, "message": ...}``. A request that is not one of the commands is
refused and changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import structlog

from cosigner.engine import Cosigner
from messages.canonical import canonical
from messages.documents import load_json
from messages.errors import HsmfleetError
from messages.rotation import KeyRotation

log = structlog.get_logger("hsmfleet.cosigner")

SOCKET = "control.sock"
ROTATE_KEY = "rotate-key"
MAX_LINE = 4096
READ_S = 5.0
# A key rotation logs a statement and fsyncs several files; it must not be cut off by the asker.
ANSWER_S = 60.0


# A socket address holds about a hundred bytes. A longer state path is reached through the
# directory's descriptor (Linux's /proc/self/fd), so the socket stays in the state directory.
MAX_ADDRESS = 100


@contextlib.contextmanager
def _address(state: Path) -> Iterator[str]:
    """An address for binding or connecting to the control socket of ``state``."""
    path = Path(state) / SOCKET
    if len(os.fsencode(path)) <= MAX_ADDRESS or not Path("/proc/self/fd").is_dir():
        yield str(path)
        return
    fd = os.open(state, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{SOCKET}"
    finally:
        os.close(fd)


class ControlRefused(HsmfleetError):
    """The running cosigner refused a control request, or the request was malformed."""

    kind = "control_refused"


class ControlOutcomeUnknown(HsmfleetError):
    """The request reached the running cosigner but no readable answer came back: what it asked
    for may have happened (``hsmfleet cosigner pin`` shows the key version in force)."""

    kind = "control_outcome_unknown"


class Control:
    """The control socket of ``cosigner``, whose state directory is ``state``."""

    def __init__(self, cosigner: Cosigner, state: Path) -> None:
        self.cosigner = cosigner
        self.state = Path(state)
        self.path = self.state / SOCKET
        self._server: asyncio.Server | None = None

    async def start(self) -> bool:
        """Listen on the socket; False (logged) when the system cannot make it here."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        umask = os.umask(0o077)  # owner-only from the moment it is bound; nothing awaits here
        try:
            # A socket left by a process that died: this process holds the state, so it is stale.
            self.path.unlink(missing_ok=True)
            with _address(self.state) as address:
                sock.bind(address)
        except OSError as exc:
            sock.close()
            log.warning(
                "no control socket: rotate the key with the cosigner stopped", error=str(exc)
            )
            return False
        finally:
            os.umask(umask)
        self._server = await asyncio.start_unix_server(self._serve, sock=sock, limit=MAX_LINE)
        return True

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
            self.path.unlink(missing_ok=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            answer = await self._answer(reader)
            writer.write(canonical(answer) + b"\n")
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the asker went away; a rotation it started is complete or not begun
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader) -> dict[str, Any]:
        try:
            try:
                line = await asyncio.wait_for(reader.readline(), READ_S)
            except (TimeoutError, ValueError) as exc:  # ValueError: a line over the limit
                raise ControlRefused("no complete request line", error=type(exc).__name__) from None
            request = load_json(line)
            if not isinstance(request, dict) or request.get("command") != ROTATE_KEY:
                raise ControlRefused("unknown control command", known=[ROTATE_KEY])
            rotation = await self.cosigner.rotate_key()
        except HsmfleetError as exc:
            log.warning("control request refused", kind=exc.kind, reason=str(exc))
            return {"ok": False, "error": exc.kind, "message": str(exc)}
        except Exception:
            log.exception("control request failed")
            return {"ok": False, "error": "internal", "message": "the cosigner failed; see its log"}
        log.info("log key rotated on request", version=rotation.version)
        return {"ok": True, "rotation": rotation.to_json()}


async def rotate_running(state: Path) -> KeyRotation | None:
    """Have the cosigner serving ``state`` rotate its key; None when no cosigner serves it.

    Raises :class:`ControlRefused` when the running cosigner refuses (or cannot be reached),
    and :class:`ControlOutcomeUnknown` when the request went out but no readable answer came
    back: the rotation may have happened.
    """
    try:
        with _address(Path(state)) as address:
            reader, writer = await asyncio.open_unix_connection(address, limit=1 << 20)
    except (FileNotFoundError, ConnectionRefusedError):
        return None
    except OSError as exc:
        raise ControlRefused(f"cannot reach the running cosigner: {exc}") from None
    try:
        writer.write(canonical({"command": ROTATE_KEY}) + b"\n")
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), ANSWER_S)
    except (TimeoutError, OSError, ValueError) as exc:
        raise ControlOutcomeUnknown(
            f"no answer from the running cosigner ({type(exc).__name__})", seconds=ANSWER_S
        ) from None
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    try:
        answer = load_json(line)
        if answer["ok"]:
            return KeyRotation.from_json(answer["rotation"])
        kind, message = str(answer["error"]), str(answer["message"])
    except (HsmfleetError, KeyError, TypeError) as exc:
        raise ControlOutcomeUnknown(
            f"an unreadable answer from the running cosigner: {exc}"
        ) from None
    raise ControlRefused(f"the running cosigner refused: {message}", kind=kind)
