"""Software HSMs behind a device socket, for the tests that run one behaviour both ways."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from node.hsm.base import Hsm
from node.hsm.device.client import DeviceClient, DeviceHsm
from node.hsm.device.core import core_handlers
from node.hsm.device.server import DeviceServer


@contextmanager
def served(hsm: Hsm, timeout: float = 5.0) -> Iterator[tuple[DeviceServer, DeviceHsm]]:
    """``hsm`` served by a :class:`DeviceServer` in this process, and a :class:`DeviceHsm`
    reaching it over the socket (in a short directory: socket paths are limited to 108 bytes)."""
    directory = Path(tempfile.mkdtemp(prefix="hsmdev-"))
    server = DeviceServer(directory / "run" / "hsm.sock", core_handlers(hsm))
    server.start()
    client = DeviceHsm(DeviceClient(server.socket_path, timeout=timeout))
    try:
        yield server, client
    finally:
        client.close()
        server.stop()
        shutil.rmtree(directory)
