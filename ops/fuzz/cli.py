"""The command line of the fuzzer (``python -m ops.fuzz``)."""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
from pathlib import Path

from ops.fuzz.run import fuzz

CI_MESSAGES = 100_000


def main(argv: list[str] | None = None) -> int:
    """Run one campaign and print its figures; exit 1 if any oracle failed."""
    parser = argparse.ArgumentParser(prog="python -m ops.fuzz", description=__doc__)
    parser.add_argument("--messages", type=int, default=CI_MESSAGES, help="messages in all")
    parser.add_argument("--seed", type=int, help="random seed (default: a new one, printed)")
    parser.add_argument("--dir", type=Path, help="working directory (default: a temporary one)")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    with tempfile.TemporaryDirectory(prefix="hsmfleet-fuzz-") as tmp:
        root = (args.dir or Path(tmp)) / "world"
        report = asyncio.run(fuzz(root, args.messages, seed))
    print(report.summary())
    return 0 if report.ok else 1
