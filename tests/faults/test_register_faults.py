"""Faults at the record level: proposers of every member write, read and compare-and-set the same
records while a nemesis delays and cuts members' links; every record's history must be
linearizable (checked against a compare-and-set register)."""

import asyncio
import random
import time
from collections import defaultdict

import pytest

from messages.errors import HsmfleetError
from messages.quorum import QuorumError
from node.quorum.localfleet import LocalFleet
from tests.faults.fleets import FAST, RunningFleet, fleet_id
from tests.faults.linearizability import UNKNOWN, Operation, check
from tests.faults.models import CasRegister
from tests.faults.netproxy import NetProxy

pytestmark = pytest.mark.faults

KEYS = ("x", "y", "z")
DURATION = 8.0


class CasFailed(HsmfleetError):
    kind = "cas_failed"


def compare_and_set(expected: bytes | None, new: bytes):
    def change(old: bytes | None) -> bytes:
        if old != expected:
            raise CasFailed("the record holds another value")
        return new

    return change


async def perform(proposer, key: str, input: tuple):
    """Run one register operation through ``proposer``; returns its output."""
    if input[0] == "write":
        await proposer.change(key, lambda _old: input[1])
        return "ok"
    if input[0] == "read":
        return (await proposer.read(key)).value
    try:
        await proposer.change(key, compare_and_set(input[1], input[2]))
    except CasFailed:
        return False
    return True


async def test_records_stay_linearizable_under_delays_and_cuts(tmp_path, nats_server):
    host, port = nats_server.url.removeprefix("nats://").split(":")
    local = LocalFleet.create(tmp_path, fleet_id("reg"), 3, [nats_server.url], **FAST)
    proxies = {}
    for member in local.members:
        proxies[member] = NetProxy(host, int(port))
        await proxies[member].start()
        local.write_settings(member, local.membership, nats=[proxies[member].url])
    fleet = RunningFleet(local)
    histories: dict[str, list[Operation]] = defaultdict(list)
    start = time.monotonic()

    async def client(c: int, until: float) -> None:
        rng = random.Random(c)
        proposer = fleet[local.members[c % 3]].replica.proposer
        seen: dict[str, bytes | None] = {}
        n = 0
        while time.monotonic() < until:
            key, n = rng.choice(KEYS), n + 1
            value = b"%d-%d" % (c, n)
            input = rng.choice([("write", value), ("read",), ("cas", seen.get(key), value)])
            called = time.monotonic() - start
            try:
                output = await perform(proposer, key, input)
            except QuorumError:
                output = UNKNOWN
            if input == ("read",) and output is not UNKNOWN:
                seen[key] = output
            returned = float("inf") if output is UNKNOWN else time.monotonic() - start
            histories[key].append(Operation(c, input, output, called, returned))

    async def nemesis(until: float) -> list[tuple[str, str]]:
        rng, applied = random.Random(1), []
        while time.monotonic() < until:
            member, kind = rng.choice(local.members), rng.choice(["delay", "cut"])
            applied.append((kind, member))
            if kind == "delay":
                proxies[member].delay = rng.uniform(0.05, 0.3)
            else:
                proxies[member].cut()
            await asyncio.sleep(rng.uniform(0.3, 1.0))
            proxies[member].heal()
            await asyncio.sleep(rng.uniform(0.2, 0.6))
        return applied

    try:
        await asyncio.gather(*(fleet.start(m, new=True, wait=False) for m in local.members))
        await asyncio.gather(*(fleet[m].replica.wait_voting(10) for m in local.members))
        until = time.monotonic() + DURATION
        *_, applied = await asyncio.gather(*(client(c, until) for c in range(6)), nemesis(until))
        for member in local.members:
            for key in KEYS:
                called = time.monotonic() - start
                value = (await fleet[member].replica.proposer.read(key)).value
                histories[key].append(
                    Operation(99, ("read",), value, called, time.monotonic() - start)
                )
    finally:
        await fleet.stop_all()
        for proxy in proxies.values():
            await proxy.stop()

    assert {kind for kind, _ in applied} == {"delay", "cut"}
    for key, history in histories.items():
        assert len(history) > 20
        result = check(CasRegister(), history)
        assert result.ok, f"history of {key} is not linearizable: {history}"
