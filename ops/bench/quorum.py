"""Committed quorum writes per second and their latency, against JetStream R3 in the same run.

``python -m ops.bench.quorum`` lays out fleets of 3 and 5 members (vote keys in software HSMs,
acceptors in SQLite with WAL and ``synchronous=FULL``: every answer waits for its fsync). Member
``m1`` runs in this process and proposes; the other members run as their own processes, so the
two cores are shared as they would be by separate hosts. Writers (1, then 32, each with one
outstanding write) change records through ``m1``'s proposer:

- ``own record``: each writer rewrites its own record, as a user's vault record is rewritten
  (after the first write the proposer holds the next ballot: one round trip, CASPaxos 2.2.1);
- ``new records``: each write creates a record never written before (prepare and accept).

The baseline is a JetStream stream with 3 replicas (file storage) on a 3-server nats-server
cluster on loopback, taking the same writes: each writer publishes to its own subject and waits
for the stream's acknowledgement. JetStream acknowledges once a majority of servers stored the
message; by default it does not fsync each message (it syncs every two minutes), while the
quorum's acceptors fsync before every answer. Like JetStream, the quorum commits with a
majority; its accepts go to just a majority while those members answer promptly (thrifty, see
:mod:`node.quorum.proposer`), so the other members lag until a catch-up or a later prepare.
Ratios are quorum / JetStream. Every cell runs ``--rounds`` times, each baseline run right
before the quorum runs it is compared with (the machine is shared: both should see the same
load); the figures are medians over the rounds.
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
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from pathlib import Path

import nats
from nats.js import JetStreamContext
from nats.js.api import StorageType, StreamConfig

from node.quorum.localfleet import LocalFleet
from node.quorum.member import Member
from node.quorum.proposer import Proposer
from ops.bench.load import Operation, Window, measure, quantiles_ms
from ops.natsserver import NatsCluster, NatsServer
from transport import logs

VALUE = b"v" * 100


@dataclass(frozen=True)
class Figures:
    """One measurement: who, how many writers, and what came out."""

    system: str
    members: int
    writers: int
    workload: str
    commits_per_s: float
    p50_ms: float
    p99_ms: float


def summarize(
    system: str, members: int, writers: int, workload: str, runs: list[Window]
) -> Figures:
    """The median over runs of commits/s, p50 and p99."""
    rates, p50s, p99s = [], [], []
    for run in runs:
        p50, p99 = quantiles_ms(run.latencies)
        rates.append(run.rate)
        p50s.append(p50)
        p99s.append(p99)
    return Figures(
        system,
        members,
        writers,
        workload,
        statistics.median(rates),
        statistics.median(p50s),
        statistics.median(p99s),
    )


@contextlib.asynccontextmanager
async def quorum_fleet(root: Path, size: int) -> AsyncIterator[Proposer]:
    """A fleet of ``size`` members: ``m1`` in this process (its proposer is yielded), the others
    as their own processes."""
    async with NatsServer(root / "nats", name=f"bench-q{size}") as server:
        fleet = LocalFleet.create(root / "fleet", f"bench{size}", size, [server.url])
        others = [fleet.spawn(m, new=True) for m in fleet.members[1:]]
        member = Member(fleet.settings("m1"), new=True)
        try:
            await member.start()
            await member.replica.wait_voting(30)
            yield member.replica.proposer
        finally:
            await member.stop()
            for proc in others:
                proc.terminate()
            for proc in others:
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()


@contextlib.asynccontextmanager
async def jetstream(root: Path) -> AsyncIterator[JetStreamContext]:
    """A stream with 3 replicas (file storage) on a 3-server cluster."""
    async with NatsCluster(root / "cluster") as cluster:
        nc = await nats.connect(servers=cluster.urls)
        try:
            js = nc.jetstream(timeout=5)
            config = StreamConfig(
                name="BENCH", subjects=["bench.>"], num_replicas=3, storage=StorageType.FILE
            )
            await js.add_stream(config)
            yield js
        finally:
            await nc.close()


def quorum_writes(proposer: Proposer, tag: str) -> dict[str, Operation]:
    """The two quorum workloads: each writer rewrites its own record, or writes new ones."""

    async def own(w: int, n: int) -> None:
        await proposer.change(f"own-{tag}-{w}", lambda _old: VALUE)

    async def new(w: int, n: int) -> None:
        await proposer.change(f"new-{tag}-{w}-{n}", lambda _old: VALUE)

    return {"own record": own, "new records": new}


def jetstream_write(js: JetStreamContext, tag: str) -> Operation:
    async def publish(w: int, n: int) -> None:
        await js.publish(f"bench.{tag}.{w}", VALUE)

    return publish


async def run(
    seconds: float, warmup: float, sizes: list[int], writer_counts: list[int], rounds: int
) -> dict:
    """Every cell ``rounds`` times; the baseline cell right before the quorum cells it is
    compared with, so that both see the same load on the machine. Medians are reported."""
    runs: dict[tuple, list[Window]] = defaultdict(list)
    with tempfile.TemporaryDirectory(prefix="hsmfleet-bench-") as tmp:
        root = Path(tmp)
        async with jetstream(root / "js") as js:
            for size in sizes:
                async with quorum_fleet(root / f"q{size}", size) as proposer:
                    for r, writers in itertools.product(range(rounds), writer_counts):
                        tag = f"{size}-{writers}-{r}"
                        base = await measure(jetstream_write(js, tag), writers, seconds, warmup)
                        runs[("jetstream-r3", 3, writers, "own subject")].append(base)
                        for workload, write in quorum_writes(proposer, tag).items():
                            ours = await measure(write, writers, seconds, warmup)
                            runs[("quorum", size, writers, workload)].append(ours)
    figures = [summarize(*cell, cell_runs) for cell, cell_runs in runs.items()]
    baseline = {f.writers: f for f in figures if f.system == "jetstream-r3"}
    return {
        "load_average": os.getloadavg(),
        "baseline": [asdict(f) for f in baseline.values()],
        "quorum": [
            {**asdict(f), "ratio": ratios(f, baseline[f.writers])}
            for f in figures
            if f.system == "quorum"
        ],
    }


def ratios(ours: Figures, base: Figures) -> dict[str, float]:
    return {
        "commits": ours.commits_per_s / base.commits_per_s,
        "p50": ours.p50_ms / base.p50_ms,
        "p99": ours.p99_ms / base.p99_ms,
    }


def report(result: dict) -> None:
    print("load average at the end: {:.2f} {:.2f} {:.2f}".format(*result["load_average"]))
    print(
        f"{'system':13} {'n':>2} {'writers':>7} {'workload':12} {'commits/s':>10} "
        f"{'p50 ms':>7} {'p99 ms':>7}   ratio commits  p50   p99"
    )
    for f in result["baseline"]:
        print(
            f"{f['system']:13} {f['members']:>2} {f['writers']:>7} {f['workload']:12} "
            f"{f['commits_per_s']:10.0f} {f['p50_ms']:7.2f} {f['p99_ms']:7.2f}"
        )
    for f in result["quorum"]:
        r = f["ratio"]
        print(
            f"{f['system']:13} {f['members']:>2} {f['writers']:>7} {f['workload']:12} "
            f"{f['commits_per_s']:10.0f} {f['p50_ms']:7.2f} {f['p99_ms']:7.2f}   "
            f"{r['commits']:13.2f} {r['p50']:5.2f} {r['p99']:5.2f}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.bench.quorum", description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per cell")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds per cell")
    parser.add_argument("--sizes", type=int, nargs="+", default=[3, 5], help="fleet sizes")
    parser.add_argument("--writers", type=int, nargs="+", default=[1, 32], help="writer counts")
    parser.add_argument("--rounds", type=int, default=2, help="runs of every cell (medians)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    logs.configure(json=True, level="error")
    result = asyncio.run(run(args.seconds, args.warmup, args.sizes, args.writers, args.rounds))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        report(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
