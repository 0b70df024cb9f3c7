"""Signer-key rotation: what walking a rotation chain costs a verifier.

``python -m ops.bench.rotation`` has two real cosigners (in this process) log a fleet's epoch 1,
the operator rotate its countersigning key twice and cosigner A its log key twice (each
rotation logged by both), then the epoch-2 artifact. It then verifies the epoch-2 bundle:

- with its chain of four rotation notices, from the state of a verifier pinned to the
  original keys (it walks every rotation: both signatures and the notice's log proofs);
- without the chain, from the state of a verifier that already walked it (the common case);

as verifications per second, and as ratios to the second and to bare Ed25519 verifications
measured in the same run (:func:`ops.bench.cosign.ed25519_baseline`).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import tempfile
import time
from pathlib import Path

from cosigner.testbed import DAY_MS, MEMBERS, Testbed, sample_artifact, sample_chain
from messages.ids import format_time
from messages.origin import OPERATOR
from messages.rotation import KeyRotation
from messages.signing import Ed25519Signer
from messages.validation import with_rotations
from messages.verifier_state import VerifierState
from messages.verify import ingest_rotations, verify_bundle
from ops.bench.cosign import ed25519_baseline


async def _world(directory: Path) -> tuple:
    bed = Testbed.create(directory)
    try:
        pins = bed.pins()
        artifact = sample_artifact(members=MEMBERS[:3])
        for bundle in sample_chain(artifact=artifact):
            await bed.client.log(bundle)
        now = bed.clock() + DAY_MS
        first = await bed.client.publish(artifact)
        pinned = verify_bundle(first, pins, VerifierState(), now).state
        chain = []
        for version in (2, 3):
            bed.clock.advance(1000)
            new = Ed25519Signer.generate()
            at = format_time(bed.clock())
            rotation = KeyRotation.make(OPERATOR, version, bed.client.operator, new, at)
            logged = await bed.client.log(rotation)
            bed.client.operator = new
            chain.append(bed.client.notice(logged))
            bed.clock.advance(1000)
            rotation = await bed.cosigner("cosigner-a").rotate_key()
            chain.append(bed.client.notice(await bed.client.log(rotation)))
        bed.clock.advance(1000)
        second = with_rotations(await bed.client.publish(sample_artifact(epoch=2)), chain)
        proofs = {
            (c.name, old, c.notary.size): c.notary.consistency_proof(old, c.notary.size)
            for c in bed.cosigners
            for old in range(1, c.notary.size)
        }
    finally:
        await bed.close()
    walked, _ = ingest_rotations(chain, pins, pinned, now)
    return pins, pinned, walked, second, proofs, now


def _rate(verify, seconds: float) -> float:
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        verify()
        count += 1
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hsmfleet-bench-rotation-") as tmp:
        pins, pinned, walked, second, proofs, now = asyncio.run(_world(Path(tmp)))
    bare = dataclasses.replace(second, extra={})
    baseline = ed25519_baseline(5000)
    walking = _rate(lambda: verify_bundle(second, pins, pinned, now, proofs), args.seconds)
    known = _rate(lambda: verify_bundle(bare, pins, walked, now, proofs), args.seconds)
    print(f"Ed25519 verify (baseline):        {baseline:9.0f}/s")
    print(f"bundle, keys already walked:      {known:9.0f}/s  ({baseline / known:.1f}x Ed25519)")
    print(
        f"bundle + 4-rotation chain walked: {walking:9.0f}/s  ({baseline / walking:.1f}x Ed25519,"
        f" {known / walking:.1f}x the walked case)"
    )


if __name__ == "__main__":
    main()
