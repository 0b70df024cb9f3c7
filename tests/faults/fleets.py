"""Fleets for tests: members set up by :class:`node.quorum.localfleet.LocalFleet`, run in-process.

Every fleet gets its own id, so fleets of different tests never hear each other on the shared
session server.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from nats.aio.client import Client as NATS

from messages.vault_authorization import Authorization
from node.quorum.localfleet import LocalFleet
from node.quorum.member import Member
from transport.vault_client import VaultClient

_ids = itertools.count(1)

# Short timeouts keep tests that lose a quorum quick.
FAST = {"phase_timeout": 0.3, "deadline": 2.0}


def fleet_id(prefix: str = "t") -> str:
    return f"{prefix}{next(_ids)}"


@dataclass
class RunningFleet:
    """A local fleet with some of its members running in this process."""

    local: LocalFleet
    running: dict[str, Member] = field(default_factory=dict)

    @property
    def fleet(self) -> str:
        return self.local.fleet

    def __getitem__(self, member: str) -> Member:
        return self.running[member]

    async def start(self, member: str, *, new: bool = False, wait: bool = True) -> Member:
        """Start ``member`` (its state from an earlier run is kept unless it had none)."""
        running = Member(self.local.settings(member), new=new)
        await running.start()
        self.running[member] = running
        if wait:
            await running.replica.wait_voting(10)
        return running

    async def stop(self, member: str) -> None:
        await self.running.pop(member).stop()

    async def stop_all(self) -> None:
        for member in list(self.running):
            await self.stop(member)

    def client(self, nc: NATS, timeout: float = 5.0) -> VaultClient:
        """A vault client of the fleet, its requests authorized by the fleet's authority."""
        return VaultClient(nc, self.local.vault_keys, self.authorize, timeout=timeout)

    def authorize(self, user: str, op: str, request: str) -> Authorization:
        return self.local.authorize(user, op, request, time.time_ns() // 1_000_000)


@asynccontextmanager
async def running_fleet(
    root: Path, nats_url: str, size: int = 3, *, start: int | None = None, **options: object
) -> AsyncIterator[RunningFleet]:
    """A new fleet of ``size`` members, the first ``start`` (default all) running and voting."""
    local = LocalFleet.create(root, fleet_id(), size, [nats_url], **{**FAST, **options})
    fleet = RunningFleet(local)
    chosen = local.members[: size if start is None else start]
    try:
        await asyncio.gather(*(fleet.start(m, new=True, wait=False) for m in chosen))
        await asyncio.gather(*(fleet[m].replica.wait_voting(10) for m in chosen))
        yield fleet
    finally:
        await fleet.stop_all()
