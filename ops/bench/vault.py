"""Vault registrations and recoveries through the HSM device boundary, against the same
operations with the vault applet in the member's process, in one run.

``python -m ops.bench.vault`` lays out a fleet of 3 members (:class:`LocalFleet`) twice:

- ``device``: each member's HSM and vault applet run in a device process of their own
  (``hsmfleet hsm serve``), reached over a Unix socket, as a node daemon runs them;
- ``in-process``: the applet runs in the member's process, on the same software HSM.

The members and the clients run in this process in both layouts. Writers (1, then 8), each with
one operation outstanding, run two workloads through the fleet's NATS subjects:

- ``register``: a new user each time (registration start, then the registration's commit);
- ``recover``: each writer recovers its own user with the right PIN (the attempt's commit, the
  evaluation, the success's commit and the release).

Throughput alone would flatter the device layout: its HSM work runs in three more processes,
on the machine's other core. So each cell also reports the CPU time an operation costs, this
process's and (device layout) the device processes', and the cost of the boundary is given both
ways: ``device / in-process`` operations per second, median latency and CPU per operation. The
floor both share is the bare OPAQUE exchange (client and server of opaque-ke in this process, no
fleet, no network), as ``opaque``: its Argon2id client side dominates every operation. The cost
of transition checking is measured in the in-process layout: the CPU every member's applet
spends in :meth:`FleetVault.check` (recomputing a change from the client's request and
verifying its predecessor's commit proof), per operation and as a share of the operation's CPU.
Every cell runs ``--rounds`` times, the layouts alternating; ratios are taken within a round
and the medians over rounds reported.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import nats
import opaque_ke_py as opaque
from nats.aio.client import Client as NATS

from node.quorum.localfleet import LocalFleet, await_device
from node.quorum.member import Member
from node.vault.applet import FleetVault
from ops.bench.load import Operation, Window, measure, quantiles_ms
from ops.natsserver import NatsServer
from transport import logs
from transport.vault_client import VaultClient

PIN = b"2468"
SECRET = b"s" * 32
LAYOUTS = ("device", "in-process")
WORKLOADS = ("register", "recover")
_TICK_S = 1 / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Sample:
    """One run of one cell: what the writers did, and the CPU it cost."""

    window: Window
    cpu_ms_per_op: float
    check_ms_per_op: float | None


@dataclass(frozen=True)
class Figures:
    """One cell, medians over its runs: the layout, how many writers, the workload."""

    layout: str
    writers: int
    workload: str
    ops_per_s: float
    p50_ms: float
    p99_ms: float
    cpu_ms_per_op: float
    check_ms_per_op: float | None


class CpuClock:
    """CPU seconds of this process, its checks (:meth:`FleetVault.check`, while installed),
    and of the ``pids`` given (device processes), between :meth:`open` and :meth:`close`."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.check_s = 0.0
        self._start = (0.0, 0.0, 0.0)
        self.spent = (0.0, 0.0)  # all the CPU, the checks' part

    def _now(self) -> tuple[float, float, float]:
        return time.process_time(), sum(_cpu_of(pid) for pid in self.pids), self.check_s

    def open(self) -> None:
        self._start = self._now()

    def close(self) -> None:
        own, others, checks = (b - a for a, b in zip(self._start, self._now(), strict=True))
        self.spent = (own + others, checks)

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        original = FleetVault.check

        def timed(vault: FleetVault, *args: object) -> None:
            started = time.thread_time()
            try:
                original(vault, *args)  # type: ignore[arg-type]
            finally:
                self.check_s += time.thread_time() - started

        FleetVault.check = timed  # type: ignore[method-assign]
        try:
            yield
        finally:
            FleetVault.check = original  # type: ignore[method-assign]


def _cpu_of(pid: int) -> float:
    """CPU seconds (user and system) process ``pid`` used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * _TICK_S


@contextlib.asynccontextmanager
async def vault_fleet(
    root: Path, nats_url: str, layout: str
) -> AsyncIterator[tuple[LocalFleet, list[int]]]:
    """A fleet of 3 members running in this process, their applets laid out as ``layout``;
    with the process ids of its device processes."""
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
        yield fleet, [p.pid for p in processes]
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


async def sample(
    operation: Operation, writers: int, seconds: float, warmup: float, clock: CpuClock
) -> Sample:
    """One measured run of ``operation`` with its CPU cost."""
    with clock.installed():
        window = await measure(
            operation, writers, seconds, warmup, opened=clock.open, closed=clock.close
        )
    done = max(1, len(window.latencies))
    cpu_s, check_s = clock.spent
    checked = check_s * 1000 / done if check_s else None
    return Sample(window, cpu_s * 1000 / done, checked)


async def run(seconds: float, warmup: float, writer_counts: list[int], rounds: int) -> dict:
    """Every cell ``rounds`` times, the layouts alternating so both see the same load."""
    runs: dict[tuple[str, int, str], list[Sample]] = defaultdict(list)
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
                            got = await sample(
                                bare[workload], writers, seconds, warmup, CpuClock([])
                            )
                            runs[("opaque", writers, workload)].append(got)
                        for layout in LAYOUTS if r % 2 == 0 else reversed(LAYOUTS):
                            fleet, pids = fleets[layout]
                            ops = await fleet_operations(fleet, nc, writers, tag)
                            for workload in WORKLOADS:
                                got = await sample(
                                    ops[workload], writers, seconds, warmup, CpuClock(pids)
                                )
                                runs[(layout, writers, workload)].append(got)
            finally:
                await nc.close()
    cells = list(itertools.product(writer_counts, WORKLOADS))
    return {
        "load_average": os.getloadavg(),
        "figures": [asdict(summarize(cell, samples)) for cell, samples in runs.items()],
        "ratios": [_ratios(runs, writers, workload) for writers, workload in cells],
    }


def summarize(cell: tuple[str, int, str], samples: list[Sample]) -> Figures:
    """The median over runs of each figure of ``cell``."""
    quantiles = [quantiles_ms(s.window.latencies) for s in samples]
    checks = [s.check_ms_per_op for s in samples if s.check_ms_per_op is not None]
    return Figures(
        *cell,
        statistics.median(s.window.rate for s in samples),
        statistics.median(q[0] for q in quantiles),
        statistics.median(q[1] for q in quantiles),
        statistics.median(s.cpu_ms_per_op for s in samples),
        statistics.median(checks) if checks else None,
    )


def _ratios(runs: dict, writers: int, workload: str) -> dict:
    """Per round, ``device / in-process`` and ``in-process / opaque`` (operations per second,
    median latency, CPU per operation) and the checks' share of an in-process operation's CPU;
    the medians over rounds."""
    device, local, bare = (
        runs[(name, writers, workload)] for name in ("device", "in-process", "opaque")
    )

    def paired(ours: list[Sample], base: list[Sample]) -> dict[str, float]:
        per_round = [
            {
                "ops": a.window.rate / b.window.rate,
                "p50": quantiles_ms(a.window.latencies)[0] / quantiles_ms(b.window.latencies)[0],
                "cpu": a.cpu_ms_per_op / b.cpu_ms_per_op,
            }
            for a, b in zip(ours, base, strict=True)
        ]
        return {k: statistics.median(r[k] for r in per_round) for k in ("ops", "p50", "cpu")}

    shares = [(s.check_ms_per_op or 0.0) / s.cpu_ms_per_op for s in local]
    return {
        "writers": writers,
        "workload": workload,
        "device_over_in_process": paired(device, local),
        "in_process_over_opaque": paired(local, bare),
        "check_share_of_cpu": statistics.median(shares),
    }


def report(result: dict) -> None:
    print("load average at the end: {:.2f} {:.2f} {:.2f}".format(*result["load_average"]))
    print(
        f"{'layout':11} {'writers':>7} {'workload':9} {'ops/s':>8} {'p50 ms':>8} {'p99 ms':>8}"
        f" {'CPU ms/op':>10} {'check ms/op':>11}"
    )
    for f in result["figures"]:
        check = "" if f["check_ms_per_op"] is None else f"{f['check_ms_per_op']:11.2f}"
        print(
            f"{f['layout']:11} {f['writers']:>7} {f['workload']:9} {f['ops_per_s']:8.1f} "
            f"{f['p50_ms']:8.1f} {f['p99_ms']:8.1f} {f['cpu_ms_per_op']:10.1f} {check}"
        )
    print()
    print(
        f"{'writers':>7} {'workload':9}  device/in-process: ops  p50   CPU"
        f"   in-process/opaque: ops   CPU   checks' share of CPU"
    )
    for r in result["ratios"]:
        d, o = r["device_over_in_process"], r["in_process_over_opaque"]
        print(
            f"{r['writers']:>7} {r['workload']:9}  {d['ops']:22.2f} {d['p50']:5.2f} {d['cpu']:5.2f}"
            f"   {o['ops']:22.2f} {o['cpu']:5.2f}   {r['check_share_of_cpu']:10.1%}"
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
        print(json.dumps(result, indent=2, default=lambda x: None if math.isnan(x) else x))
    else:
        report(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
