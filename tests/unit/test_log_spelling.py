"""A log entry counts only in the bytes it was written in (its canonical JSON).

A reader that verifies every n-th signature checks the spelling of the entries it verifies; the
entries between are held to their bytes by the next entry's ``prev``. Either way a re-spelled
entry (here: a duplicated key that JSON parsers resolve to the same value) is corrupt.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.core.errors import LogCorrupt
from orchestrator.shell.keys import load_trust
from orchestrator.shell.log import LogReader

DATA = Path(__file__).parent.parent / "data"
LINES = (DATA / "rollout-active.v2.jsonl").read_bytes().splitlines()[1:]


def respelled(line: bytes) -> bytes:
    """The same entry with its ``type`` given twice, as json.loads reads it unchanged."""
    return line.replace(b'"type":', b'"type":"x","type":', 1)


def admit_all(lines: list[bytes], verify_every: int) -> LogReader:
    reader = LogReader(load_trust(DATA / "orchestrator.pub"), verify_every=verify_every)
    for i, line in enumerate(lines):
        reader.admit(line, f"entry {i}")
    reader.settle()
    return reader


@pytest.mark.parametrize("verify_every", [1, 4, 1000])
@pytest.mark.parametrize("position", [0, 5, len(LINES) - 1])
def test_a_respelled_entry_is_corrupt_wherever_it_is(verify_every, position):
    assert admit_all(LINES, verify_every).admitted == len(LINES)
    lines = list(LINES)
    lines[position] = respelled(lines[position])
    with pytest.raises(LogCorrupt):
        admit_all(lines, verify_every)
