"""The fault harness: members as real processes behind network proxies, a nemesis that kills,
pauses, delays and cuts a minority of them, and clients whose operations are recorded as
histories for the linearizability checker.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import random
import signal
import subprocess
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import nats
from nats.aio.client import Client as NATS

from messages.vault import (
    BudgetExhausted,
    NoRecord,
    RegistrationExists,
    StaleRegistration,
    WrongGuess,
)
from messages.vault_authorization import Authorization
from node.quorum.localfleet import LocalFleet
from node.quorum.member import JOURNAL_FILE
from node.vault.journal import EvaluationJournal
from tests.faults.fleets import fleet_id
from tests.faults.linearizability import UNKNOWN, Operation
from tests.faults.models import WRONG, pin, secret
from tests.faults.netproxy import NetProxy
from transport.vault_client import VaultClient

# Member timeouts: short, so that faults turn into answers quickly.
MEMBER_OPTIONS = {"phase_timeout": 0.3, "deadline": 2.0}


class ProcessFleet:
    """A local fleet whose members run as processes, each reaching NATS through its own proxy."""

    def __init__(self, root: Path, nats_url: str, size: int, *, limit: int) -> None:
        self.root = root
        self.nats_url = nats_url
        self.size = size
        self.limit = limit
        self.local: LocalFleet | None = None
        self.proxies: dict[str, NetProxy] = {}
        self.procs: dict[str, subprocess.Popen] = {}
        self.paused: set[str] = set()
        self._probes = itertools.count()

    @property
    def members(self) -> list[str]:
        return self.local.members

    async def start(self, nc: NATS) -> None:
        url = urlparse(self.nats_url)
        self.local = LocalFleet.create(
            self.root,
            fleet_id("faults"),
            self.size,
            [self.nats_url],
            limit=self.limit,
            **MEMBER_OPTIONS,
        )
        for member in self.members:
            proxy = NetProxy(url.hostname, url.port)
            await proxy.start()
            self.proxies[member] = proxy
            self.local.write_settings(member, self.local.membership, nats=[proxy.url])
        for member in self.members:
            self.procs[member] = self.local.spawn(member, new=True)
        await self.wait_serving(nc)

    def client(self, nc: NATS, timeout: float = 4.0) -> VaultClient:
        """A vault client of the fleet, its requests authorized by the fleet's authority."""
        return VaultClient(nc, self.local.vault_keys, self.authorize, timeout=timeout)

    def authorize(self, user: str, op: str, request: str) -> Authorization:
        return self.local.authorize(user, op, request, time.time_ns() // 1_000_000)

    async def wait_serving(self, nc: NATS, timeout: float = 30.0) -> None:
        """Wait until a registration commits (every member started and a quorum votes); each
        try registers a user of its own."""
        client = self.client(nc, timeout=2.0)
        deadline = time.monotonic() + timeout
        while True:
            try:
                await client.register(f"probe-{next(self._probes)}", b"probe", b"probe")
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)

    def kill(self, member: str) -> None:
        """SIGKILL: the member dies with whatever it had not written."""
        proc = self.procs[member]
        proc.send_signal(signal.SIGCONT)
        proc.kill()
        proc.wait()
        self.paused.discard(member)

    def restart(self, member: str) -> None:
        self.procs[member] = self.local.spawn(member)

    def pause(self, member: str) -> None:
        """SIGSTOP: the member hangs, its connection open, answering nothing."""
        self.procs[member].send_signal(signal.SIGSTOP)
        self.paused.add(member)

    def resume(self, member: str) -> None:
        self.procs[member].send_signal(signal.SIGCONT)
        self.paused.discard(member)

    async def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.terminate()
        for proc in self.procs.values():
            try:
                await asyncio.wait_for(asyncio.to_thread(proc.wait), 10)
            except TimeoutError:
                proc.kill()
                await asyncio.to_thread(proc.wait)
        for proxy in self.proxies.values():
            await proxy.stop()

    def answered(self, user: str) -> list[int]:
        """The attempts of ``user`` that any member's HSM answered (a guess evaluated), from
        their journals, with repeats: an attempt answered twice would be listed twice. Read
        once the members stopped. (A journal forgets the attempts up to the record's
        ``cleared`` when it answers the next one.)"""
        numbers = []
        for member in self.members:
            path = self.local.state_dir(member) / JOURNAL_FILE
            if not path.exists():
                continue
            journal = EvaluationJournal(path)
            try:
                numbers += journal.answered(self.local.fleet, user)
            finally:
                journal.close()
        return sorted(numbers)


@dataclass
class Nemesis:
    """Faults on at most ``most`` members at a time, drawn from a seeded random source."""

    fleet: ProcessFleet
    rng: random.Random
    most: int
    applied: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)

    KINDS = ("kill", "pause", "delay", "cut")

    async def run(self, duration: float) -> None:
        """Break and heal in turns until ``duration`` is over; every kind of fault comes round."""
        deadline = time.monotonic() + duration
        turn = 0
        while time.monotonic() < deadline:
            victims = tuple(self.rng.sample(self.fleet.members, self.rng.randint(1, self.most)))
            kind = self.KINDS[turn % len(self.KINDS)]
            turn += 1
            self.applied.append((kind, victims))
            for member in victims:
                self._break(kind, member)
            await asyncio.sleep(self.rng.uniform(0.4, 1.5))
            for member in victims:
                self._heal(kind, member)
            await asyncio.sleep(self.rng.uniform(0.3, 1.0))

    def _break(self, kind: str, member: str) -> None:
        if kind == "kill":
            self.fleet.kill(member)
        elif kind == "pause":
            self.fleet.pause(member)
        elif kind == "delay":
            self.fleet.proxies[member].delay = self.rng.uniform(0.05, 0.4)
        else:
            self.fleet.proxies[member].cut()

    def _heal(self, kind: str, member: str) -> None:
        if kind == "kill":
            self.fleet.restart(member)
        elif kind == "pause":
            self.fleet.resume(member)
        else:
            self.fleet.proxies[member].heal()


class Recorder:
    """Histories of vault operations, per user, with monotonic call and return times."""

    def __init__(self) -> None:
        self.histories: dict[str, list[Operation]] = defaultdict(list)
        self.errors: Counter[str] = Counter()
        self.last_error: dict[str, str] = {}
        self._start = time.monotonic()

    async def call(
        self, user: str, client: int, input: Hashable, run: Callable[[], Awaitable[Hashable]]
    ) -> Hashable:
        called = time.monotonic() - self._start
        try:
            output = await run()
        except WrongGuess as exc:
            output = ("wrong_guess", exc.remaining)
        except NoRecord:
            output = "no_record"
        except BudgetExhausted:
            output = "budget_exhausted"
        except StaleRegistration:
            output = "stale_registration"
        except RegistrationExists:
            output = "registration_exists"
        except Exception as exc:  # timeouts, unavailability: it may or may not have happened
            self.errors[f"{type(exc).__name__}: {exc}"[:120]] += 1
            self.last_error[user] = f"{type(exc).__name__}: {exc}"
            output = UNKNOWN
        returned = math.inf if output is UNKNOWN else time.monotonic() - self._start
        self.histories[user].append(Operation(client, input, output, called, returned))
        return output

    async def register(
        self, vault: VaultClient, user: str, client: int, k: int, proof: int | None = None
    ) -> Hashable:
        """Register :func:`pin` ``(k)``; over a live record, proving :func:`pin` ``(proof)``."""

        async def run() -> str:
            current = None if proof is None else pin(proof)
            await vault.register(user, pin(k), secret(k), current_pin=current)
            return "ok"

        return await self.call(user, client, ("register", k, proof), run)

    async def recover(self, vault: VaultClient, user: str, client: int, k: int) -> Hashable:
        async def run() -> tuple[str, bytes]:
            return ("ok", (await vault.recover(user, pin(k) if k else WRONG)).secret)

        return await self.call(user, client, ("recover", k), run)


async def owner(recorder: Recorder, vault: VaultClient, user: str, client: int, until: float):
    """One user on one device: registers, recovers with the PIN, now and then registers anew
    with the PIN in force. After an unknown outcome the user tries the newest PIN it may have
    registered first, and falls back to the one before when that is a wrong guess. Returns the
    newest registration it made."""
    k = 1
    await recorder.register(vault, user, client, k)
    candidates = [k]  # the PINs that may be in force, newest last
    rng = random.Random(client)
    while time.monotonic() < until:
        if rng.random() < 0.25:
            k += 1
            got = await recorder.register(vault, user, client, k, proof=candidates[-1])
            if got == "ok":
                candidates = [k]
            elif got is UNKNOWN:
                candidates.append(k)
            elif _wrong_guess(got) and len(candidates) > 1:
                candidates.pop()
        else:
            got = await recorder.recover(vault, user, client, candidates[-1])
            if isinstance(got, tuple) and got[0] == "ok":
                candidates = [candidates[-1]]
            elif _wrong_guess(got) and len(candidates) > 1:
                candidates.pop()
    return k


def _wrong_guess(output: Hashable) -> bool:
    return isinstance(output, tuple) and output[0] == "wrong_guess"


async def attacker(
    recorder: Recorder, vault: VaultClient, users: list[str], client: int, until: float
) -> None:
    """Wrong guesses, one after another, at the user whose turn it is (turns of equal length)."""
    begin = time.monotonic()
    turn = (until - begin) / len(users)
    while (now := time.monotonic()) < until:
        user = users[min(int((now - begin) / turn), len(users) - 1)]
        await recorder.recover(vault, user, client, 0)
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def client_connection(url: str):
    nc = await nats.connect(url, max_reconnect_attempts=-1)
    try:
        yield nc
    finally:
        await nc.close()
