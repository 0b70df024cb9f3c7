"""Logs as JSON lines: what ``hsmfleet log export`` writes and ``hsmfleet replay`` reads.

The first line is a header naming the stream, the sequence of the first entry and the chain
digest before it; every other line is one entry's wire bytes, unchanged, so the chain checks
the same in a file as in the stream. Several files replay as one log when each continues the
chain of the one before.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from messages.canonical import b64, canonical, unb64
from messages.signing import TrustStore
from orchestrator.core.errors import LogCorrupt
from orchestrator.core.state import State
from orchestrator.shell.log import LogReader
from orchestrator.shell.replay import Replayer

FORMAT = "hsmfleet-log/1"


@dataclass(frozen=True)
class Header:
    """Where an exported log starts: stream, first sequence, chain digest before it."""

    stream: str
    from_seq: int
    head: bytes

    def encode(self) -> bytes:
        fields = {"format": FORMAT, "stream": self.stream, "from_seq": self.from_seq}
        return canonical({**fields, "head": b64(self.head)})

    @classmethod
    def decode(cls, line: bytes, where: str) -> Header:
        try:
            raw = json.loads(line)
            if raw.get("format") != FORMAT:
                raise ValueError(f"format is not {FORMAT!r}")
            header = cls(str(raw["stream"]), int(raw["from_seq"]), unb64(raw["head"]))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise LogCorrupt(where, f"not a log header: {exc}") from None
        if header.from_seq < 1 or len(header.head) != 32:
            raise LogCorrupt(where, "log header has a bad sequence or chain digest")
        return header


def entry_lines(path: Path) -> Iterator[tuple[str, bytes]]:
    """``(where, line)`` for each line of ``path``, without its newline.

    The last line must end with a newline: an entry cut off mid-write is refused here, before
    anything parses it.
    """
    with path.open("rb") as f:
        for number, line in enumerate(f, start=1):
            where = f"{path.name} line {number}"
            if not line.endswith(b"\n"):
                raise LogCorrupt(where, "line is truncated (no newline at its end)")
            yield where, line[:-1]


@dataclass(frozen=True)
class ReplayResult:
    """What a replay rebuilt and how much it read."""

    state: State
    entries: int
    decisions: int
    events: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.entries / self.seconds if self.seconds > 0 else float("inf")


def replay_files(
    paths: list[Path],
    trust: TrustStore,
    *,
    check: bool = True,
    verify_every: int = 1000,
    progress: Callable[[int], None] | None = None,
) -> ReplayResult:
    """Replay the logs in ``paths`` as one, from seq 1; raises on the first bad entry."""
    start = time.perf_counter()
    replayer = Replayer(check=check)
    reader = LogReader(trust, verify_every=verify_every)
    where = "start of log"
    next_seq = 1
    for path in paths:
        lines = entry_lines(path)
        first = next(lines, None)
        if first is None:
            raise LogCorrupt(f"{path.name} line 1", "file is empty: a log starts with its header")
        header = Header.decode(first[1], first[0])
        if header.from_seq != next_seq or header.head != reader.head:
            raise LogCorrupt(
                first[0],
                f"log starts at seq {header.from_seq} but the replay needs seq {next_seq} "
                "(with the chain digest of the entry before)",
            )
        for where, line in lines:
            replayer.apply(reader.admit(line, where))
            next_seq += 1
            if progress is not None and next_seq % 100_000 == 0:
                progress(next_seq - 1)
    reader.settle()
    state = replayer.finish(where)
    return ReplayResult(
        state, reader.admitted, replayer.decisions, replayer.events, time.perf_counter() - start
    )


def write_header(out: IO[bytes], header: Header) -> None:
    out.write(header.encode() + b"\n")


def write_entry(out: IO[bytes], data: bytes) -> None:
    out.write(data + b"\n")
