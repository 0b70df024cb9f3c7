"""Replay speed of the orchestrator's log, against the raw rate of an ordered JetStream consumer.

``python -m ops.bench.replay [--events N]`` (default 1,000,000) records a log with the pure core:
real node identities in software HSMs announce and enroll with real attestations, then the nodes
keep re-announcing software updates (the bulk of the log). It fills a JetStream stream on an
embedded nats-server with it and writes it as JSON lines, then measures in one run:

- ``raw``: an ordered consumer reading the stream and doing nothing (before and after the rest);
- ``jetstream``: the same consumer rebuilding state: decode, chain check, a signature every
  ``--verify-every`` entries and at the end, fold;
- ``jsonl``: the same rebuild from the JSON lines file;
- ``audit``: replay re-running every recorded decision, on the first ``--audit-events`` entries.

Each is reported in entries per second; rebuilds also as a ratio of the raw rate.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import nats

from messages.attestation import AttestRequest, NodeAnnounce
from messages.inputs import AttestationAnswer, EnrollNode, SetPolicy
from node.attest import attest
from node.daemon import NodeDaemon
from node.hsm.soft import SoftHsm
from node.vendor import VendorCA, provision
from ops.natsserver import NatsServer
from orchestrator.shell.keys import trust_for
from orchestrator.shell.log import GENESIS, LogReader
from orchestrator.shell.logfile import Header, replay_files
from orchestrator.shell.recorder import Recorder
from orchestrator.shell.replay import Replayer
from orchestrator.shell.store import EventStore
from transport import logs

MEASUREMENTS = ("sha256:" + "a1" * 32, "sha256:" + "b2" * 32)
T0 = 1_800_000_000_000


def record_log(events: int, nodes: int, workdir: Path) -> Recorder:
    """A log of exactly ``events`` entries (rounded down to whole decisions)."""
    vendor = VendorCA.init(workdir / "vendor", datetime.fromtimestamp(T0 / 1000 - 3600, UTC))
    recorder = Recorder()
    now = T0
    recorder.take_lease(1, now)
    policy = SetPolicy(
        vendor_roots=(vendor.root_der,),
        allowed_measurements=MEASUREMENTS,
        nonce_ttl_ms=30_000,
        auto_enroll=False,
    )
    recorder.decide(policy, now)
    daemons = []
    for i in range(nodes):
        hsm = SoftHsm(workdir / f"node{i}" / "hsm", os.urandom(32))
        provision(hsm, vendor, datetime.fromtimestamp(T0 / 1000 - 60, UTC))
        daemons.append(
            NodeDaemon(hsm, workdir / f"node{i}", f"dc-{i % 3}", trust_for(recorder.signer))
        )
    for daemon in daemons:
        now += 5
        announce = NodeAnnounce(
            node_id=daemon.node_id, domain=daemon.domain, hsm="soft", measurement=MEASUREMENTS[0]
        )
        recorder.decide(announce, now)
        (issued,) = recorder.decide(EnrollNode(node_id=daemon.node_id, requested_by="bench"), now)
        request = AttestRequest(nonce=issued.nonce, expires_ms=issued.expires_ms)
        answer = attest(daemon.node, daemon.hsm, MEASUREMENTS[0], request)
        reply = daemon.outbox.envelope(answer).encode()
        command = AttestationAnswer(
            enrollment_id=issued.enrollment_id, node_id=daemon.node_id, reply=reply
        )
        recorder.decide(command, now + 2)
    update = 0
    while len(recorder.entries) + 2 <= events:
        daemon = daemons[update % nodes]
        update += 1
        now += 1
        announce = NodeAnnounce(
            node_id=daemon.node_id,
            domain=daemon.domain,
            hsm="soft",
            measurement=MEASUREMENTS[(update // nodes) % 2],
        )
        recorder.decide(announce, now)
    return recorder


async def fill_stream(store: EventStore, entries: list[bytes]) -> None:
    """Publish every entry in order, acknowledged, a window at a time (setting up, not what is
    measured: appends through the store are one atomic batch per decision)."""
    await store.ensure()
    js = store.js
    for seq, data in enumerate(entries, start=1):
        headers = {"Nats-Msg-Id": str(seq)}
        await js.publish_async("fleet.evt.orchestrator.bench", data, headers=headers)
    await asyncio.wait_for(js.publish_async_completed(), 300)
    if await store.last_seq() != len(entries):
        raise RuntimeError("the stream did not take every entry")


async def raw_rate(store: EventStore, last: int) -> float:
    start = time.perf_counter()
    count = await store.scan(1, last, lambda seq, data: None)
    return count / (time.perf_counter() - start)


async def rebuild_rate(store: EventStore, recorder: Recorder, last: int, every: int) -> float:
    reader = LogReader(recorder.trust(), verify_every=every)
    replayer = Replayer(check=False)

    def fold(seq: int, data: bytes) -> None:
        replayer.apply(reader.admit(data, f"seq {seq}"))

    start = time.perf_counter()
    count = await store.scan(1, last, fold)
    reader.settle()
    state = replayer.finish(f"seq {last}")
    elapsed = time.perf_counter() - start
    if state != recorder.state:
        raise RuntimeError("the rebuilt state differs from the recorded one")
    return count / elapsed


def write_jsonl(path: Path, entries: list[bytes]) -> None:
    with path.open("wb") as f:
        f.write(Header("FLEET_EVENTS", 1, GENESIS).encode() + b"\n")
        for data in entries:
            f.write(data + b"\n")


async def run(args: argparse.Namespace) -> dict[str, float | int]:
    with tempfile.TemporaryDirectory(prefix="hsmfleet-bench-replay-") as tmp:
        workdir = Path(tmp)
        started = time.perf_counter()
        recorder = record_log(args.events, args.nodes, workdir)
        entries = recorder.entries
        print(
            f"recorded {len(entries)} entries in {time.perf_counter() - started:.1f}s",
            file=sys.stderr,
        )
        log_file = workdir / "log.jsonl"
        write_jsonl(log_file, entries)
        audit_n = min(args.audit_events, len(entries)) // 2 * 2
        audit_file = workdir / "audit.jsonl"
        write_jsonl(audit_file, entries[:audit_n])
        server = NatsServer(workdir / "nats", name="bench-replay")
        await server.start()
        nc = await nats.connect(server.url, name="bench-replay", pending_size=1 << 28)
        try:
            store = EventStore(nc, timeout=30)
            await fill_stream(store, entries)
            last = len(entries)
            raw_before = await raw_rate(store, last)
            jetstream = await rebuild_rate(store, recorder, last, args.verify_every)
            raw_after = await raw_rate(store, last)
        finally:
            await nc.close()
            await server.stop()
        trust = recorder.trust()
        jsonl = replay_files([log_file], trust, check=False, verify_every=args.verify_every)
        if jsonl.state != recorder.state:
            raise RuntimeError("the state rebuilt from JSON lines differs from the recorded one")
        audit = replay_files([audit_file], trust, check=True, verify_every=args.verify_every)
    raw = (raw_before + raw_after) / 2
    return {
        "entries": len(entries),
        "raw_ordered_consumer_per_s": round(raw),
        "raw_before_per_s": round(raw_before),
        "raw_after_per_s": round(raw_after),
        "jetstream_rebuild_per_s": round(jetstream),
        "jetstream_rebuild_ratio": round(jetstream / raw, 3),
        "jsonl_rebuild_per_s": round(jsonl.rate),
        "jsonl_rebuild_ratio": round(jsonl.rate / raw, 3),
        "audit_entries": audit.entries,
        "audit_replay_per_s": round(audit.rate),
        "audit_replay_ratio": round(audit.rate / raw, 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.bench.replay", description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000, help="log entries to replay")
    parser.add_argument("--nodes", type=int, default=20, help="node identities in the log")
    parser.add_argument("--verify-every", type=int, default=1000, help="verify every n-th sig")
    parser.add_argument("--audit-events", type=int, default=100_000, help="entries re-decided")
    args = parser.parse_args(argv)
    logs.configure(json=True, level="warning")
    result = asyncio.run(run(args))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
