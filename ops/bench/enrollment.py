"""Enrollments per second end to end over NATS, against bare X.509 chain verifications.

``python -m ops.bench.enrollment`` starts a real nats-server, a vendor CA and N node daemons with
software HSMs in this process, then runs the orchestrator's side of enrollment (a signed
challenge with a fresh nonce over request/reply, then :func:`verify_attestation`) with many
challenges in flight. In the same run it measures bare X.509 chain verifications (vendor root ->
device certificate), the cost that bounds an enrollment, and prints both rates and their ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import nats
from cryptography import x509
from cryptography.x509 import verification

from messages import Ed25519Signer, Outbox, TrustStore
from messages.attestation import request_attestation, verify_attestation
from node.daemon import NodeDaemon
from node.hsm.soft import SoftHsm
from node.measurement import measure
from node.pins import ORCHESTRATOR_ROLE
from node.vendor import VendorCA, provision
from ops import logs
from ops.natsserver import NatsServer


def chain_verifications_per_second(
    root: x509.Certificate, chain: tuple[bytes, ...], n: int
) -> float:
    """Bare chain verifications: parse the device certificate and verify it to ``root``."""
    now = datetime.now(UTC)
    start = time.perf_counter()
    for _ in range(n):
        device = x509.load_der_x509_certificate(chain[-1])
        verifier = (
            verification.PolicyBuilder()
            .store(verification.Store([root]))
            .time(now)
            .extension_policies(
                ca_policy=verification.ExtensionPolicy.webpki_defaults_ca(),
                ee_policy=verification.ExtensionPolicy.permit_all(),
            )
            .build_client_verifier()
        )
        verifier.verify(device, [])
    return n / (time.perf_counter() - start)


async def enrollments_per_second(
    nc: nats.NATS,
    outbox: Outbox,
    node_ids: list[str],
    root: x509.Certificate,
    total: int,
    concurrency: int,
) -> float:
    """Enroll ``total`` times round-robin over ``node_ids`` with ``concurrency`` in flight."""
    allowed = {measure()}
    todo = iter(range(total))

    async def worker() -> int:
        done = 0
        for i in todo:
            nonce = os.urandom(32)
            now = time.time_ns() // 1_000_000
            answer = await request_attestation(
                nc, outbox, node_ids[i % len(node_ids)], nonce, now + 10_000, timeout=10
            )
            verify_attestation(
                answer, nonce=nonce, vendor_roots=[root], allowed_measurements=allowed, now_ms=now
            )
            done += 1
        return done

    start = time.perf_counter()
    done = sum(await asyncio.gather(*(worker() for _ in range(concurrency))))
    return done / (time.perf_counter() - start)


async def run(nodes: int, total: int, concurrency: int, baseline: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="hsmfleet-bench-") as tmp:
        root_dir = Path(tmp)
        server = NatsServer(root_dir / "nats", name="bench")
        await server.start()
        vendor = VendorCA.init(root_dir / "vendor", datetime.now(UTC))
        orchestrator = Ed25519Signer.generate()
        pins = TrustStore()
        pins.trust("orchestrator", orchestrator, ORCHESTRATOR_ROLE)
        node_nc = await nats.connect(server.url, name="bench-nodes")
        orch_nc = await nats.connect(server.url, name="bench-orchestrator")
        daemons = []
        try:
            for i in range(nodes):
                hsm = SoftHsm(root_dir / f"node{i}" / "hsm", os.urandom(32))
                provision(hsm, vendor, datetime.now(UTC))
                daemon = NodeDaemon(hsm, root_dir / f"node{i}", f"dc{i % 3}", pins)
                await daemon.start(node_nc)
                daemons.append(daemon)
            outbox = Outbox("orchestrator", orchestrator)
            node_ids = [d.node_id for d in daemons]
            await enrollments_per_second(orch_nc, outbox, node_ids, vendor.root, 200, concurrency)
            chain = daemons[0].node.chain
            chains = chain_verifications_per_second(vendor.root, chain, baseline)
            enrollments = await enrollments_per_second(
                orch_nc, outbox, node_ids, vendor.root, total, concurrency
            )
        finally:
            for daemon in daemons:
                await daemon.stop()
            await node_nc.close()
            await orch_nc.close()
            await server.stop()
    return {"enrollments": enrollments, "chains": chains, "ratio": enrollments / chains}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=8, help="node daemons")
    parser.add_argument("--enrollments", type=int, default=4000, help="enrollments to time")
    parser.add_argument("--concurrency", type=int, default=64, help="challenges in flight")
    parser.add_argument("--baseline", type=int, default=4000, help="chain verifications to time")
    args = parser.parse_args()
    logs.configure(level="warning")
    result = asyncio.run(run(args.nodes, args.enrollments, args.concurrency, args.baseline))
    print(f"enrollments end to end over NATS: {result['enrollments']:9.0f} /s")
    print(f"bare X.509 chain verifications:   {result['chains']:9.0f} /s")
    print(f"ratio enrollments / chains:       {result['ratio']:9.3f}")


if __name__ == "__main__":
    main()
