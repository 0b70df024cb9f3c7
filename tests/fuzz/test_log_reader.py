"""The orchestrator's other input, its event log: a mutated entry of a recorded log must be
refused with :class:`LogCorrupt` whatever the mutation, leaving the reader where it was.

``LogReader.admit`` requires each entry's bytes to be the canonical JSON they decode to, so a
duplicated key or another spelling of a signed entry cannot move the chain's head, and JSON nested
too deeply is corrupt, not a ``RecursionError``.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

from messages.envelope import Envelope
from messages.signing import Ed25519Signer
from ops.fuzz.mutate import Mutator, Seed
from orchestrator.core.errors import LogCorrupt
from orchestrator.shell.keys import load_trust
from orchestrator.shell.log import LogReader

DATA = Path(__file__).parent.parent / "data"
MUTANTS = 3000


def reader_at_entry_5(lines: list[bytes]) -> LogReader:
    reader = LogReader(load_trust(DATA / "orchestrator.pub"))
    for i, line in enumerate(lines[:5]):
        reader.admit(line, f"entry {i}")
    return reader


def test_mutated_log_entries_are_refused_as_corrupt():
    lines = (DATA / "rollout-active.v2.jsonl").read_bytes().splitlines()[1:]
    target = lines[5]
    seed = Seed(Envelope.decode(target))
    mutator = Mutator(random.Random(5), [Ed25519Signer.from_seed(bytes(32))])
    outcomes: Counter[str] = Counter()
    for _ in range(MUTANTS):
        how, data = mutator.candidate(seed)
        if data == target:
            continue  # the very entry that is due is rightly admitted
        reader = reader_at_entry_5(lines)
        try:
            reader.admit(data, "mutant")
        except LogCorrupt:
            outcomes["corrupt"] += 1
        except Exception as exc:  # what this test looks for: anything but LogCorrupt
            outcomes[f"{how} raised {type(exc).__name__}"] += 1
        else:
            outcomes[f"{how} admitted"] += 1
    assert set(outcomes) == {"corrupt"}, outcomes
    assert reader_at_entry_5(lines).admit(target, "entry 5").entry is not None
