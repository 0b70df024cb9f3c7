"""Vault registrations and recoveries per second through the HSM device boundary, against the
same operations with the vault applet in the member's process, in one run.

``python -m ops.bench.vault`` lays out a fleet of 3 members (:class:`LocalFleet`) twice:

- ``device``: each member's HSM and vault applet run in a device process of their own
  (``hsmfleet hsm serve``), reached over a Unix socket, as a node daemon runs them;
- ``in-process``: the applet runs in the member's process, on the same software HSM.

The members and the clients run in this process in both layouts. Writers (1, then 8), each with
one operation outstanding, run two workloads through the fleet's NATS subjects:

- ``register``: a new user each time (registration start, then the registration's commit);
- ``recover``: each writer recovers its own user with the right PIN (the attempt's commit, the
  evaluation, the success's commit and the release).

The ratio ``device / in-process`` is the cost of the boundary. The floor both share is the
bare OPAQUE exchange (client and server of opaque-ke in this process, no fleet, no network),
measured in the same run as ``opaque``: its Argon2id client side dominates every operation.
The cost of transition checking is measured in the in-process layout: the time every member's
applet spends in :meth:`FleetVault.check` (recomputing a change from the client's request and
verifying its predecessor's commit proof), per operation and as a share of the operation's
time. Every cell runs ``--rounds`` times, alternating the layouts; figures are medians.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import nats
import opaque_ke_py as opaque
from nats.aio.client import Client as NATS

from messages.vault_client import VaultClient
from node.quorum.localfleet import LocalFleet, await_device
from node.quorum.member import Member
from node.vault.applet import FleetVault
from ops import logs
from ops.bench.quorum import measure
from ops.natsserver import NatsServer

PIN = b"2468"
SECRET = b"s" * 32
LAYOUTS = ("device", "in-process")
WORKLOADS = ("register", "recover")
Operation = Callable[[int, int], Awaitable[None]]


@dataclass(frozen=True)
class Figures:
    """One cell: the layout, how many writers, the workload, and what came out."""

    layout: str
    writers: int
    workload: str
    ops_per_s: float
    p50_ms: float
    p99_ms: float
    check_ms_per_op: float | None = None


class CheckClock:
    """Total time spent in :meth:`FleetVault.check` in this process, while installed."""

    def __init__(self) -> None:
        self.seconds = 0.0

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        original = FleetVault.check

        def timed(vault: FleetVault, *args: object) -> None:
            started = time.perf_counter()
            try:
                original(vault, *args)  # type: ignore[arg-type]
            finally:
                self.seconds += time.perf_counter() - started

        FleetVault.check = timed  # type: ignore[method-assign]
        try:
            yield
        finally:
            FleetVault.check = original  # type: ignore[method-assign]


@contextlib.asynccontextmanager
async def vault_fleet(root: Path, nats_url: str, layout: str) -> AsyncIterator[LocalFleet]:
    """A fleet of 3 members running in this process, their applets laid out as ``layout``."""
    devices = layout == "device"
    fleet = LocalFleet.create(root, f"bench-{layout}", 3, [nats_url], devices=devices)
    processes: list[subprocess.Popen] = []
    members: list[Member] = []
    try:
        if devices:
            processes = [fleet.spawn_device(m) for m in fleet.members]
            for process in processes:
                await asyncio.to_thread(await_device, process)
        members = [Member(fleet.settings(m), new=True) for m in fleet.members]
        for member in members:
            await member.start()
        for member in members:
            await member.replica.wait_voting(30)
        yield fleet
    finally:
        for member in members:
            await member.stop()
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()


def client_of(fleet: LocalFleet, nc: NATS) -> VaultClient:
    """A vault client of ``fleet``, authorized by the fleet's account authority."""

    def authorize(user: str, op: str, request: str) -> object:
        return fleet.authorize(user, op, request, time.time_ns() // 1_000_000)

    return VaultClient(nc, fleet.vault_keys, authorize, timeout=60)  # type: ignore[arg-type]


async def fleet_operations(
    fleet: LocalFleet, nc: NATS, writers: int, tag: str
) -> dict[str, Operation]:
    """The two workloads on ``fleet``, one client per writer; the recovering users exist."""
    clients = [client_of(fleet, nc) for _ in range(writers)]
    for w, client in enumerate(clients):
        await client.register(f"r-{tag}-{w}", PIN, SECRET)

    async def register(w: int, n: int) -> None:
        await clients[w].register(f"n-{tag}-{w}-{n}", PIN, SECRET)

    async def recover(w: int, n: int) -> None:
        await clients[w].recover(f"r-{tag}-{w}", PIN)

    return {"register": register, "recover": recover}


def bare_operations() -> dict[str, Operation]:
    """The OPAQUE exchanges alone, client and server in this process (the client's side in a
    thread, as :class:`VaultClient` runs it)."""
    setup = opaque.server_setup()
    ident = b"bench-user"

    def enrol() -> bytes:
        start = opaque.client_registration_start(PIN)
        response = opaque.server_registration_start(setup, start.get_message(), ident)
        finish = opaque.client_registration_finish(PIN, start.get_state(), response.get_message())
        return opaque.server_registration_finish(finish.get_message()).get_password_file()

    password_file = enrol()

    def login() -> None:
        start = opaque.client_login_start(PIN)
        server = opaque.server_login_start(setup, password_file, start.get_message(), ident)
        finish = opaque.client_login_finish(PIN, start.get_state(), server.get_message())
        opaque.server_login_finish(server.get_state(), finish.get_message())

    async def register(w: int, n: int) -> None:
        await asyncio.to_thread(enrol)

    async def recover(w: int, n: int) -> None:
        await asyncio.to_thread(login)

    return {"register": register, "recover": recover}


def summarize(cell: tuple[str, int, str], runs: list[tuple[float, list, float | None]]) -> Figures:
    """The median over runs of operations/s, p50, p99 and check time per operation."""
    rates, p50s, p99s, checks = [], [], [], []
    for rate, latencies, check_ms in runs:
        cuts = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else latencies * 99
        rates.append(rate)
        p50s.append(cuts[49] * 1000)
        p99s.append(cuts[98] * 1000)
        if check_ms is not None:
            checks.append(check_ms)
    return Figures(
        *cell,
        statistics.median(rates),
        statistics.median(p50s),
        statistics.median(p99s),
        statistics.median(checks) if checks else None,
    )


async def run(seconds: float, warmup: float, writer_counts: list[int], rounds: int) -> dict:
    """Every cell ``rounds`` times, the layouts alternating so both see the same load."""
    runs: dict[tuple[str, int, str], list[tuple[float, list, float | None]]] = defaultdict(list)
    clock = CheckClock()
    with tempfile.TemporaryDirectory(prefix="hsmfleet-bench-") as tmp:
        root = Path(tmp)
        async with NatsServer(root / "nats", name="bench-vault") as server:
            nc = await nats.connect(server.url)
            try:
                async with (
                    vault_fleet(root / "device", server.url, "device") as device,
                    vault_fleet(root / "in-process", server.url, "in-process") as local,
                ):
                    fleets = {"device": device, "in-process": local}
                    for r, writers in itertools.product(range(rounds), writer_counts):
                        tag = f"{writers}-{r}"
                        bare = bare_operations()
                        for workload in WORKLOADS:
                            rate, lat = await measure(bare[workload], writers, seconds, warmup)
                            runs[("opaque", writers, workload)].append((rate, lat, None))
                        for layout in LAYOUTS if r % 2 == 0 else reversed(LAYOUTS):
                            ops = await fleet_operations(fleets[layout], nc, writers, tag)
                            for workload in WORKLOADS:
                                clock.seconds = 0.0
                                with clock.installed():
                                    rate, lat = await measure(
                                        ops[workload], writers, seconds, warmup
                                    )
                                # Only the in-process applets' checks run here to be timed;
                                # the clock ran through the warmup too, at the same rate.
                                done = len(lat) * (warmup + seconds) / seconds
                                check = (
                                    clock.seconds * 1000 / max(1.0, done)
                                    if layout == "in-process"
                                    else None
                                )
                                runs[(layout, writers, workload)].append((rate, lat, check))
            finally:
                await nc.close()
    figures = {cell: summarize(cell, cell_runs) for cell, cell_runs in runs.items()}
    cells = itertools.product(writer_counts, WORKLOADS)
    return {
        "load_average": os.getloadavg(),
        "figures": [asdict(f) for f in figures.values()],
        "ratios": [_ratios(figures, writers, workload) for writers, workload in cells],
    }


def _ratios(figures: dict, writers: int, workload: str) -> dict:
    return {
        "writers": writers,
        "workload": workload,
        "device_over_in_process": _ratio(figures, writers, workload),
        "in_process_over_opaque": _ratio(figures, writers, workload, "in-process", "opaque"),
        "check_share_of_operation": _check_share(figures[("in-process", writers, workload)]),
    }


def _ratio(
    figures: dict, writers: int, workload: str, ours: str = "device", base: str = "in-process"
) -> dict[str, float]:
    a, b = figures[(ours, writers, workload)], figures[(base, writers, workload)]
    return {
        "ops": a.ops_per_s / b.ops_per_s,
        "p50": a.p50_ms / b.p50_ms,
        "p99": a.p99_ms / b.p99_ms,
    }


def _check_share(figures: Figures) -> float:
    """The share of this process's time (members and clients share its one thread) that the
    members' transition checks took."""
    return (figures.check_ms_per_op or 0.0) * figures.ops_per_s / 1000


def report(result: dict) -> None:
    print("load average at the end: {:.2f} {:.2f} {:.2f}".format(*result["load_average"]))
    print(
        f"{'layout':11} {'writers':>7} {'workload':9} {'ops/s':>8} {'p50 ms':>8} {'p99 ms':>8}"
        f" {'check ms/op':>11}"
    )
    for f in result["figures"]:
        check = "" if f["check_ms_per_op"] is None else f"{f['check_ms_per_op']:11.2f}"
        print(
            f"{f['layout']:11} {f['writers']:>7} {f['workload']:9} {f['ops_per_s']:8.1f} "
            f"{f['p50_ms']:8.1f} {f['p99_ms']:8.1f} {check}"
        )
    print()
    print(
        f"{'writers':>7} {'workload':9}  device/in-process ops  p50   p99 "
        f"  in-process/opaque ops  check share"
    )
    for r in result["ratios"]:
        d, o = r["device_over_in_process"], r["in_process_over_opaque"]
        print(
            f"{r['writers']:>7} {r['workload']:9}  {d['ops']:21.2f} {d['p50']:5.2f} {d['p99']:5.2f}"
            f"   {o['ops']:20.2f}  {r['check_share_of_operation']:10.1%}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.bench.vault", description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per cell")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds per cell")
    parser.add_argument("--writers", type=int, nargs="+", default=[1, 8], help="writer counts")
    parser.add_argument("--rounds", type=int, default=2, help="runs of every cell (medians)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    logs.configure(json=True, level="error")
    result = asyncio.run(run(args.seconds, args.warmup, args.writers, args.rounds))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        report(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
