"""Helpers for integration tests that run orchestrators and node daemons on a real server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import nats
from nats.aio.client import Client as NATS

from messages.envelope import Envelope
from messages.events import LogEntry
from messages.signing import TrustStore
from orchestrator.core.state import State
from orchestrator.shell.config import Settings
from orchestrator.shell.keys import generate, load_signer, operator_signer
from orchestrator.shell.log import LogReader
from orchestrator.shell.replay import Replayer
from orchestrator.shell.service import Orchestrator
from orchestrator.shell.store import EventStore

OPERATOR_TOKEN = "op-token-0123456789"
READ_TOKEN = "read-token-0123456789"


def write_config(
    directory: Path,
    nats_url: str,
    root_pem: Path,
    measurement: str,
    *,
    holder: str = "orch-a",
    lease_ttl_s: float = 1.0,
    nonce_ttl_ms: int = 20_000,
    listen: str = "127.0.0.1:0",
    **extra: object,
) -> Path:
    """An orchestrator configuration (and its signing key, shared by all holders) in
    ``directory``; returns the config file."""
    directory.mkdir(parents=True, exist_ok=True)
    key = directory / "orchestrator.key"
    if not key.exists():
        generate(key, directory / "orchestrator.pub")
    config = {
        "holder": holder,
        "key_file": "orchestrator.key",
        "vendor_roots": [str(root_pem)],
        "allowed_measurements": [measurement],
        "nats": nats_url,
        "nonce_ttl_ms": nonce_ttl_ms,
        "lease_ttl_s": lease_ttl_s,
        "listen": listen,
        "tokens": {OPERATOR_TOKEN: "operator", READ_TOKEN: "read"},
        **extra,
    }
    path = directory / f"{holder}.json"
    path.write_text(json.dumps(config, indent=2))
    return path


async def wait_for(predicate: Callable[[], bool], timeout: float = 15.0, what: str = "") -> None:
    """Poll ``predicate`` every 20 ms until it holds; fail after ``timeout`` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        await asyncio.sleep(0.02)


async def wait_for_health(
    api: str, predicate: Callable[[dict], bool], timeout: float = 20.0
) -> dict:
    """Poll an orchestrator's /health until ``predicate`` holds."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while True:
            async with http.get(f"{api}/health") as resp:
                health = await resp.json()
            if predicate(health):
                return health
            assert time.monotonic() < deadline, f"timed out; last health {health}"
            await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def running(config: Path, **options: Any) -> AsyncIterator[Orchestrator]:
    """An orchestrator from ``config`` running in this process on its own connection
    (``options`` go to :class:`Orchestrator`: a clock, a seed function)."""
    settings = Settings.load(config)
    nc: NATS = await nats.connect(settings.nats, name=settings.holder)
    orchestrator = Orchestrator(
        nc, settings, load_signer(settings.key_file), operator=operator_signer(settings), **options
    )
    task = asyncio.create_task(orchestrator.run())
    try:
        yield orchestrator
    finally:
        orchestrator.stop()
        await asyncio.wait_for(task, 10)
        await nc.close()


@dataclass
class AuditedLog:
    """A log read back from the stream, every signature checked and every decision re-run."""

    state: State
    envelopes: list[Envelope]

    def of_type(self, cls: type[LogEntry]) -> list[Envelope]:
        return [e for e in self.envelopes if e.type == cls.TYPE]


async def audit(nc: NATS, trust: TrustStore) -> AuditedLog:
    """Read the whole log from JetStream and replay it as an auditor would."""
    store = EventStore(nc)
    reader, replayer, envelopes = LogReader(trust), Replayer(check=True), []
    last = await store.last_seq()

    def fold(seq: int, data: bytes) -> None:
        record = reader.admit(data, f"seq {seq}")
        replayer.apply(record)
        envelopes.append(record.envelope)

    await store.scan(1, last, fold)
    return AuditedLog(replayer.finish(f"seq {last}"), envelopes)


HSMFLEET = [sys.executable, "-m", "ops.cli", "--log-json"]


class OrchestratorProcess:
    """``hsmfleet orchestrator --config FILE`` as a real process, to be killed or paused."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.proc: asyncio.subprocess.Process | None = None
        self.api = ""

    async def start(self) -> OrchestratorProcess:
        self.proc = await asyncio.create_subprocess_exec(
            *HSMFLEET,
            "orchestrator",
            "--config",
            str(self.config),
            stdout=asyncio.subprocess.PIPE,
            stderr=open(self.config.with_suffix(".log"), "ab"),  # noqa: ASYNC230, SIM115
        )
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), 30)
        if not line:
            raise AssertionError(
                f"orchestrator did not start; see {self.config.with_suffix('.log')}"
            )
        self.api = json.loads(line)["api"]
        return self

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def stop(self) -> int | None:
        """SIGTERM (after SIGCONT, in case it is paused) and wait; SIGKILL if it hangs."""
        if self.proc is None or self.proc.returncode is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGCONT)
        self.proc.terminate()
        try:
            return await asyncio.wait_for(self.proc.wait(), 15)
        except TimeoutError:
            self.proc.kill()
            return await self.proc.wait()
