"""Helpers for integration tests that run orchestrators and node daemons on a real server."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import nats
from nats.aio.client import Client as NATS

from orchestrator.config import Settings
from orchestrator.keys import generate, load_signer
from orchestrator.service import Orchestrator

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


@contextlib.asynccontextmanager
async def running(config: Path) -> AsyncIterator[Orchestrator]:
    """An orchestrator from ``config`` running in this process on its own connection."""
    settings = Settings.load(config)
    nc: NATS = await nats.connect(settings.nats, name=settings.holder)
    orchestrator = Orchestrator(nc, settings, load_signer(settings.key_file))
    task = asyncio.create_task(orchestrator.run())
    try:
        yield orchestrator
    finally:
        orchestrator.stop()
        await asyncio.wait_for(task, 10)
        await nc.close()
