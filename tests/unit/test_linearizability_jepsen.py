"""The linearizability checker against another checker's verdicts: ten Jepsen histories of etcd
(from Porcupine's test data, see ``tests/data/jepsen/README.md``), four not linearizable and six
linearizable, each judged as Porcupine judges it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.faults.linearizability import UNKNOWN, Operation, check
from tests.faults.models import CasRegister

DATA = Path(__file__).parent.parent / "data" / "jepsen"
VERDICTS = {
    "etcd_000.log": False,
    "etcd_001.log": False,
    "etcd_002.log": True,
    "etcd_003.log": False,
    "etcd_004.log": False,
    "etcd_005.log": True,
    "etcd_007.log": True,
    "etcd_018.log": True,
    "etcd_025.log": True,
    "etcd_031.log": True,
}
LINE = re.compile(
    r"^INFO\s+jepsen\.util\s+-\s+(\d+)\s+:(invoke|ok|fail|info)\s+:(read|write|cas)\s+(.*)$"
)


def jepsen_history(text: str) -> list[Operation]:
    """The operations of a Jepsen log, timed by line: ``:info`` and calls never completed are
    pending (they may take effect or not), a timed-out read returns an unknown value."""
    calls: dict[int, tuple[tuple, int]] = {}
    history = []
    for time, line in enumerate(text.splitlines()):
        m = LINE.match(line)
        if m is None:
            continue
        process, kind, f, value = int(m[1]), m[2], m[3], m[4].strip()
        if kind == "invoke":
            calls[process] = (_input(f, value), time)
            continue
        input, call = calls.pop(process)
        if kind == "info":
            history.append(Operation(process, input, UNKNOWN, call))
        else:
            history.append(Operation(process, input, _output(f, kind, value), call, time))
    history += [Operation(p, input, UNKNOWN, call) for p, (input, call) in calls.items()]
    return history


def _input(f: str, value: str) -> tuple:
    if f == "read":
        return ("read",)
    if f == "write":
        return ("write", int(value))
    old, new = value.strip("[]").split()
    return ("cas", int(old), int(new))


def _output(f: str, kind: str, value: str) -> object:
    if f == "read":
        return UNKNOWN if value == ":timed-out" else None if value == "nil" else int(value)
    if f == "write":
        return "ok"
    return kind == "ok"


@pytest.mark.parametrize(("name", "linearizable"), sorted(VERDICTS.items()))
def test_jepsen_etcd_histories_get_porcupines_verdict(name: str, linearizable: bool) -> None:
    history = jepsen_history((DATA / name).read_text())
    assert len(history) > 70
    assert check(CasRegister(), history).ok is linearizable


def test_every_history_in_the_data_has_a_verdict() -> None:
    assert {p.name for p in DATA.glob("*.log")} == set(VERDICTS)
