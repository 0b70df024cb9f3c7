"""Enrollments per second end to end over NATS, against bare X.509 chain verifications.

``python -m ops.bench.enrollment`` starts a real nats-server, a vendor CA and N node daemons with
software HSMs in this process, then runs the orchestrator's side of enrollment (a signed
challenge with a fresh nonce over request/reply, the answer's signature by the identity key it
attests, then :func:`verify_attestation`) with many challenges in flight. In the same run it
measures bare X.509 chain verifications (vendor root -> device certificate), the cost that bounds
an enrollment, and prints both rates and their ratio.

With ``--node-process`` the node daemons run in a second process, as they would beside real HSMs,
so the orchestrator's side and the nodes' side each get a core.
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
from cryptography import x509
from cryptography.x509 import verification

from messages import Ed25519Signer, subjects
from messages.attestation import (
    GARBLED,
    Attestation,
    AttestationRejected,
    AttestRequest,
    verify_answer_signature,
    verify_attestation,
)
from messages.errors import MessageError
from messages.replay import ReplayGuard
from messages.signing import TrustStore
from node.daemon import NodeDaemon
from node.hsm.soft import SoftHsm
from node.measurement import measure
from node.pins import read_pins, write_pin
from node.vendor import VendorCA, provision
from ops.natsserver import NatsServer
from transport import logs
from transport.bus import request
from transport.gate import Gate
from transport.outbox import Outbox

PINS = "orchestrator.json"


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


# The nonce makes an answer fresh; the node's clock (its envelope's ``at``) must not matter.
ANY_CLOCK_MS = 1 << 62


async def request_attestation(
    nc: nats.NATS,
    outbox: Outbox,
    node_id: str,
    nonce: bytes,
    expires_ms: int,
    *,
    timeout: float = 2.0,
) -> Attestation:
    """Ask ``node_id`` for its attestation as an orchestrator does, and check that the answer is
    signed by the identity key it attests (the rest is :func:`verify_attestation`'s to judge).

    The answer is not signed by a key the asker trusts yet, so it passes the gate whatever the
    node's clock says. An answer that does not decode, or is no attestation, raises
    :class:`AttestationRejected` (``garbled``); one not signed by its identity key
    ``bad_answer_signature``. No answer raises the bus's typed errors.
    """
    env = outbox.envelope(AttestRequest(nonce=nonce, expires_ms=expires_ms))
    gate = Gate(TrustStore(), replay=ReplayGuard(window_ms=ANY_CLOCK_MS))
    subject = subjects.node_command(node_id, "attest")
    try:
        received = await request(nc, subject, env, gate, None, timeout)
    except MessageError as exc:
        raise AttestationRejected(GARBLED, f"the answer does not decode: {exc}") from exc
    if not isinstance(received.body, Attestation):
        raise AttestationRejected(GARBLED, "the answer is not an attestation")
    verify_answer_signature(received.envelope, received.body)
    return received.body


async def enrollments_per_second(
    nc: nats.NATS,
    outbox: Outbox,
    node_ids: list[str],
    root: x509.Certificate,
    allowed: set[str],
    total: int,
    concurrency: int,
) -> float:
    """Enroll ``total`` times round-robin over ``node_ids`` with ``concurrency`` in flight."""
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


async def start_nodes(url: str, root_dir: Path, n: int) -> tuple[nats.NATS, list[NodeDaemon]]:
    """``n`` node daemons with software HSMs certified by the vendor CA in ``root_dir``."""
    vendor = VendorCA.open(root_dir / "vendor")
    pins = read_pins(root_dir / PINS)
    nc = await nats.connect(url, name="bench-nodes")
    daemons = []
    for i in range(n):
        hsm = SoftHsm(root_dir / f"node{i}" / "hsm", os.urandom(32))
        provision(hsm, vendor, datetime.now(UTC))
        daemon = NodeDaemon(hsm, root_dir / f"node{i}", f"dc{i % 3}", pins)
        await daemon.start(nc)
        daemons.append(daemon)
    return nc, daemons


async def stop_nodes(nc: nats.NATS, daemons: list[NodeDaemon]) -> None:
    """Stop the daemons and close their connection."""
    for daemon in daemons:
        await daemon.stop()
    await nc.close()


async def serve_nodes(url: str, root_dir: Path, n: int) -> None:
    """Child process: run the node daemons, print their ids, stop when stdin closes."""
    nc, daemons = await start_nodes(url, root_dir, n)
    print(json.dumps([d.node_id for d in daemons]), flush=True)
    await asyncio.to_thread(sys.stdin.read)
    await stop_nodes(nc, daemons)


async def run(
    nodes: int, total: int, concurrency: int, baseline: int, node_process: bool
) -> dict[str, float]:
    """Measure both rates; node daemons run in this process unless ``node_process``."""
    with tempfile.TemporaryDirectory(prefix="hsmfleet-bench-") as tmp:
        root_dir = Path(tmp)
        allowed = {measure()}
        server = NatsServer(root_dir / "nats", name="bench")
        await server.start()
        vendor = VendorCA.init(root_dir / "vendor", datetime.now(UTC))
        orchestrator = Ed25519Signer.generate()
        write_pin(root_dir / PINS, "orchestrator", orchestrator)
        orch_nc = await nats.connect(server.url, name="bench-orchestrator")
        child, node_nc, daemons = None, None, []
        try:
            if node_process:
                child = await asyncio.create_subprocess_exec(
                    *[sys.executable, "-m", "ops.bench.enrollment", "--serve-nodes", server.url],
                    *["--dir", str(root_dir), "--nodes", str(nodes)],
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                )
                assert child.stdout is not None
                node_ids = json.loads(await asyncio.wait_for(child.stdout.readline(), 60))
            else:
                node_nc, daemons = await start_nodes(server.url, root_dir, nodes)
                node_ids = [d.node_id for d in daemons]
            outbox = Outbox("orchestrator", orchestrator)
            warm_up = min(200, total)
            await enrollments_per_second(
                orch_nc, outbox, node_ids, vendor.root, allowed, warm_up, concurrency
            )
            chain = provision(
                SoftHsm(root_dir / "probe", os.urandom(32)), vendor, datetime.now(UTC)
            )
            chains = chain_verifications_per_second(vendor.root, chain, baseline)
            enrollments = await enrollments_per_second(
                orch_nc, outbox, node_ids, vendor.root, allowed, total, concurrency
            )
        finally:
            if child is not None:
                assert child.stdin is not None
                child.stdin.close()
                await asyncio.wait_for(child.wait(), 30)
            elif node_nc is not None:
                await stop_nodes(node_nc, daemons)
            await orch_nc.close()
            await server.stop()
    return {"enrollments": enrollments, "chains": chains, "ratio": enrollments / chains}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=8, help="node daemons")
    parser.add_argument("--enrollments", type=int, default=4000, help="enrollments to time")
    parser.add_argument("--concurrency", type=int, default=64, help="challenges in flight")
    parser.add_argument("--baseline", type=int, default=4000, help="chain verifications to time")
    parser.add_argument(
        "--node-process",
        action="store_true",
        help="run the node daemons in a second process, as beside real HSMs (uses both cores)",
    )
    parser.add_argument("--serve-nodes", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    logs.configure(level="warning")
    if args.serve_nodes:
        asyncio.run(serve_nodes(args.serve_nodes, args.dir, args.nodes))
        return
    result = asyncio.run(
        run(args.nodes, args.enrollments, args.concurrency, args.baseline, args.node_process)
    )
    where = "a second process" if args.node_process else "this process"
    print(f"{args.nodes} node daemons in {where}, {args.concurrency} challenges in flight")
    print(f"enrollments end to end over NATS: {result['enrollments']:9.0f} /s")
    print(f"bare X.509 chain verifications:   {result['chains']:9.0f} /s")
    print(f"ratio enrollments / chains:       {result['ratio']:9.3f}")


if __name__ == "__main__":
    main()
