"""Cosigning end to end over NATS and client verification, against same-run baselines.

``python -m ops.bench.cosign`` starts a nats-server and two cosigners (``hsmfleet cosigner run``
processes, or in this process with ``--inline``) in a temporary directory, then measures:

- stage bundles cosigned per second by one cosigner, the orchestrator's client waiting for each
  answer (a fleet's chain is sequential), and with ``--fleets`` chains in flight at once;
- the same with 2-of-2: both cosigners log each bundle and each cosigns the other's checkpoint;
- validation-bundle verifications per second by the client library.

Baselines measured in the same run: bare NATS request/reply per second (an echo responder, one
request at a time) for the cosigning rates, bare Ed25519 signature verifications per second for
the verifier. Every rate is printed with its ratio to its baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import nats
from nats.aio.client import Client as NATS

from cosigner.http import Server, make_app
from cosigner.testbed import init_cosigners, sample_artifact
from messages.bundle import Evidence, NodeRef, StageBundle
from messages.documents import hex_digest
from messages.ids import format_time
from messages.pins import OperatorPin, Pins
from messages.signing import ED25519, Ed25519Signer, verify_bytes
from messages.verifier_state import VerifierState
from messages.verify import verify_bundle
from ops.natsserver import NatsServer
from transport.cosign_client import CosigningClient, NatsTransport
from transport.outbox import Outbox

YEAR_MS = 365 * 24 * 3600 * 1000
IDS = ("cosigner-a", "cosigner-b")


async def rate(count: int, work: Callable[[], Awaitable[object]]) -> float:
    start = time.perf_counter()
    await work()
    return count / (time.perf_counter() - start)


def chain(fleet: str, count: int, now_ms: int) -> list[StageBundle]:
    """``count`` stage bundles of ``fleet``, each resting on five attestation digests."""
    out: list[StageBundle] = []
    for serial in range(1, count + 1):
        refs = tuple(
            NodeRef(f"node-{i}", hex_digest(f"{fleet}/{serial}/{i}".encode())) for i in range(5)
        )
        out.append(
            StageBundle(
                fleet=fleet,
                stage="enroll",
                serial=serial,
                prev=out[-1].digest if out else None,
                evidence=Evidence.of(attestations=refs),
                not_before=format_time(now_ms),
                not_after=format_time(now_ms + YEAR_MS),
            )
        )
    return out


async def nats_baseline(nc: NATS, count: int) -> float:
    async def echo(msg: nats.aio.msg.Msg) -> None:
        await msg.respond(msg.data)

    sub = await nc.subscribe("bench.echo", cb=echo)
    payload = b"x" * 512

    async def requests() -> None:
        for _ in range(count):
            await nc.request("bench.echo", payload, timeout=5)

    try:
        return await rate(count, requests)
    finally:
        await sub.unsubscribe()


def ed25519_baseline(count: int) -> float:
    signer = Ed25519Signer.generate()
    message = b"m" * 200
    signature = signer.sign(message)
    start = time.perf_counter()
    for _ in range(count):
        verify_bytes(ED25519, signer.public_key, signature, message)
    return count / (time.perf_counter() - start)


class Cosigners:
    """The two cosigners, as processes or in this process."""

    def __init__(self, root: Path, nats_url: str, inline: bool) -> None:
        self.root, self.nats_url, self.inline = root, nats_url, inline
        self.procs: list[asyncio.subprocess.Process] = []
        self.servers: list[Server] = []

    async def start(self) -> None:
        for cid in IDS:
            if self.inline:
                server = Server(make_app(self.root / cid, self.nats_url))
                await server.start()
                self.servers.append(server)
                continue
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "ops.cli", "--log-level", "warning", "cosigner", "run",
                "--state", str(self.root / cid), "--nats", self.nats_url,
                stdout=subprocess.PIPE,
            )  # fmt: skip
            self.procs.append(proc)
            assert proc.stdout is not None
            json.loads(await asyncio.wait_for(proc.stdout.readline(), 60))

    async def stop(self) -> None:
        for server in self.servers:
            await server.stop()
        for proc in self.procs:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 30)


async def run(bundles: int, fleets: int, verifies: int, inline: bool) -> dict[str, float]:
    """Every rate of the module doc, by name."""
    now = time.time_ns() // 1_000_000
    with tempfile.TemporaryDirectory(prefix="hsmfleet-bench-cosign-") as tmp:
        root = Path(tmp)
        server = NatsServer(root / "nats", name="bench")
        await server.start()
        orchestrator, operator = Ed25519Signer.generate(), Ed25519Signer.generate()
        peers = init_cosigners(
            root, orchestrator, [(cid, f"{cid}.bench/log", os.urandom(32)) for cid in IDS]
        )
        cosigners = Cosigners(root, server.url, inline)
        nc = await nats.connect(server.url, name="bench-orchestrator")
        try:
            await cosigners.start()
            results = {"bare NATS request/reply (baseline)": await nats_baseline(nc, bundles * 4)}
            transport = NatsTransport(nc, Outbox("orchestrator", orchestrator), timeout=30)
            one = CosigningClient(transport, peers[:1], operator, threshold=1)
            both = CosigningClient(transport, peers, operator, threshold=2)

            async def sequential(client: CosigningClient, fleet: str) -> None:
                for bundle in chain(fleet, bundles, now):
                    await client.log(bundle)

            async def parallel(client: CosigningClient, prefix: str) -> None:
                per_fleet = max(1, bundles // fleets)
                chains = [chain(f"{prefix}-{i}", per_fleet, now) for i in range(fleets)]

                async def one_chain(documents: list[StageBundle]) -> None:
                    for document in documents:
                        await client.log(document)

                await asyncio.gather(*(one_chain(c) for c in chains))

            in_flight = max(1, bundles // fleets) * fleets
            results["1 cosigner, one chain"] = await rate(bundles, lambda: sequential(one, "s1"))
            results[f"1 cosigner, {fleets} chains in flight"] = await rate(
                in_flight, lambda: parallel(one, "p1")
            )
            results["2-of-2 with witnessing, one chain"] = await rate(
                bundles, lambda: sequential(both, "s2")
            )
            results[f"2-of-2 with witnessing, {fleets} chains in flight"] = await rate(
                in_flight, lambda: parallel(both, "p2")
            )
            artifact = sample_artifact("bench-fleet", not_before=format_time(now))
            validation = await both.publish(artifact)
        finally:
            await nc.close()
            await cosigners.stop()
            await server.stop()
    pins = Pins(
        cosigners=tuple(p.pin for p in peers),
        threshold=2,
        operator=OperatorPin(operator.alg, operator.public_key),
    )
    results["bare Ed25519 verifications (baseline)"] = ed25519_baseline(verifies * 8)
    data = validation.to_bytes()
    start = time.perf_counter()
    for _ in range(verifies):
        verify_bundle(data, pins, VerifierState(), now + 1000)
    results["validation bundles verified (2-of-2)"] = verifies / (time.perf_counter() - start)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundles", type=int, default=300, help="bundles per measurement")
    parser.add_argument("--fleets", type=int, default=16, help="chains in flight at once")
    parser.add_argument("--verifies", type=int, default=2000, help="bundle verifications")
    parser.add_argument("--inline", action="store_true", help="cosigners in this process")
    args = parser.parse_args()
    results = asyncio.run(run(args.bundles, args.fleets, args.verifies, args.inline))
    where = "in this process" if args.inline else "as hsmfleet cosigner processes"
    print(f"two cosigners {where}; ratios are to the baseline of the same kind")
    nats_base = results["bare NATS request/reply (baseline)"]
    ed_base = results["bare Ed25519 verifications (baseline)"]
    for name, value in results.items():
        base = ed_base if "Ed25519" in name or "verified" in name else nats_base
        print(f"{name:44s} {value:10.0f} /s   ratio {value / base:7.4f}")


if __name__ == "__main__":
    main()
