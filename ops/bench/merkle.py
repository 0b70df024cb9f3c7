"""Audit-log appends and proofs per second, against plain SHA-256 leaf hashing of the same entries.

``python -m ops.bench.merkle`` fills a durable :class:`cosigner.log.AuditLog` in a temporary
directory with N random 32-byte entries (the size of a bundle digest), one fsynced append at a
time and in batches, then times inclusion and consistency proofs read from it, proof
verification, and the integrity check at open. In the same run it hashes the same entries as RFC
9162 leaves with nothing else (``SHA-256(0x00 || entry)``), the floor any log pays per entry, and
prints every rate with its ratio to that baseline.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cosigner.log import AuditLog
from messages.merkle import Tree, leaf_hash, verify_consistency, verify_inclusion


def rate(count: int, work: Callable[[], object]) -> float:
    """``count`` divided by the seconds ``work()`` took."""
    start = time.perf_counter()
    work()
    return count / (time.perf_counter() - start)


def baseline(entries: list[bytes]) -> float:
    def hash_all() -> None:
        for entry in entries:
            hashlib.sha256(b"\x00" + entry).digest()

    return rate(len(entries), hash_all)


def run(entries: int, single: int, batch: int, proofs: int, seed: int) -> dict[str, float]:
    picks = random.Random(seed)
    data = [os.urandom(32) for _ in range(entries)]
    results = {"sha256 leaf hashing (baseline)": baseline(data)}
    results["in-memory tree appends"] = rate(entries, lambda: Tree(data))
    with tempfile.TemporaryDirectory(prefix="hsmfleet-bench-") as tmp:
        path = Path(tmp) / "audit.db"
        with AuditLog.open(path) as log:

            def one_by_one() -> None:
                for entry in data[:single]:
                    log.append([entry], time.time_ns() // 1_000_000)

            def batched() -> None:
                for start in range(single, entries, batch):
                    log.append(data[start : start + batch], time.time_ns() // 1_000_000)

            results["durable appends, 1 per fsync"] = rate(single, one_by_one)
            results[f"durable appends, {batch} per fsync"] = rate(entries - single, batched)

            size = log.size
            indexes = [picks.randrange(size) for _ in range(proofs)]
            pairs = [sorted(picks.choices(range(1, size + 1), k=2)) for _ in range(proofs)]
            inclusions: list[tuple[int, list[bytes]]] = []
            consistencies: list[tuple[int, int, list[bytes]]] = []
            results["inclusion proofs from the log"] = rate(
                proofs, lambda: inclusions.extend((i, log.inclusion_proof(i)) for i in indexes)
            )
            results["consistency proofs from the log"] = rate(
                proofs,
                lambda: consistencies.extend((m, n, log.consistency_proof(m, n)) for m, n in pairs),
            )
            roots = {n: log.root(n) for pair in pairs for n in pair}
            root = log.root()

            def verify_inclusions() -> None:
                for i, proof in inclusions:
                    verify_inclusion(i, size, leaf_hash(data[i]), proof, root)

            def verify_consistencies() -> None:
                for m, n, proof in consistencies:
                    verify_consistency(m, n, roots[m], roots[n], proof)

            results["inclusion proof verifications"] = rate(proofs, verify_inclusions)
            results["consistency proof verifications"] = rate(proofs, verify_consistencies)
        results["entries checked at open"] = rate(entries, lambda: AuditLog.open(path).close())
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=50_000, help="entries to log")
    parser.add_argument("--single", type=int, default=500, help="appends of one entry each")
    parser.add_argument("--batch", type=int, default=100, help="entries per batched append")
    parser.add_argument("--proofs", type=int, default=2_000, help="proofs of each kind")
    parser.add_argument("--seed", type=int, default=1, help="seed for the indexes proved")
    args = parser.parse_args()
    single = min(args.single, args.entries)
    results = run(args.entries, single, args.batch, args.proofs, args.seed)
    base = results["sha256 leaf hashing (baseline)"]
    print(f"{args.entries} entries of 32 bytes; ratios are to the baseline")
    for name, value in results.items():
        print(f"{name:36s} {value:12.0f} /s   ratio {value / base:8.4f}")


if __name__ == "__main__":
    main()
