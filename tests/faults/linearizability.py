"""A linearizability checker in the style of Wing & Gong, with Lowe's memoisation (as Knossos
and Porcupine do it).

A history is a list of :class:`Operation`: each has the time it was called and the time it
returned. An operation whose outcome is unknown (a timeout, a crash) returns at infinity with
output :data:`UNKNOWN`: it may take effect at any time after its call, or never. The checker
looks for an order of the operations that respects real time (an operation that returned before
another was called comes first) and that a sequential model accepts, output by output.

Models are nondeterministic where the system is: ``step(state, input, output)`` returns every
state that may follow when ``input`` gives ``output`` (an empty list: impossible). Checking
is exponential in the worst case; histories are checked per record (linearizability is
compositional), which keeps each one small.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol


class _Unknown:
    def __repr__(self) -> str:
        return "UNKNOWN"


UNKNOWN: Any = _Unknown()


@dataclass(frozen=True)
class Operation:
    """One call: who made it, what it asked, what it got, and when it was called and returned."""

    client: int
    input: Hashable
    output: Hashable
    call: float
    ret: float = math.inf

    @property
    def pending(self) -> bool:
        return self.ret == math.inf


class Model(Protocol):
    """A sequential specification."""

    def init(self) -> Hashable: ...

    def step(self, state: Hashable, input: Hashable, output: Hashable) -> Iterable[Hashable]: ...


@dataclass
class Result:
    """Whether the history is linearizable; if so, one order that shows it."""

    ok: bool
    order: list[Operation] = field(default_factory=list)
    explored: int = 0


class _Entries:
    """Calls and returns in time order as a doubly linked list that can lift and restore ops."""

    def __init__(self, history: list[Operation]) -> None:
        events = []
        for i, op in enumerate(history):
            events.append((op.call, 0, i))
            events.append((op.ret, 1, i))
        events.sort()  # calls before returns at equal times: such ops overlap
        n = len(events)
        self.op = [e[2] for e in events]
        self.is_call = [e[1] == 0 for e in events]
        self.next = [*range(1, n), -1]
        self.prev = [-1, *range(n - 1)]
        self.head = 0 if n else -1
        self.ret_of = [0] * len(history)
        for pos, (_, kind, i) in enumerate(events):
            if kind == 1:
                self.ret_of[i] = pos

    def _unlink(self, pos: int) -> None:
        p, n = self.prev[pos], self.next[pos]
        if p == -1:
            self.head = n
        else:
            self.next[p] = n
        if n != -1:
            self.prev[n] = p

    def _relink(self, pos: int) -> None:
        p, n = self.prev[pos], self.next[pos]
        if p == -1:
            self.head = pos
        else:
            self.next[p] = pos
        if n != -1:
            self.prev[n] = pos

    def lift(self, call: int) -> None:
        self._unlink(call)
        self._unlink(self.ret_of[self.op[call]])

    def restore(self, call: int) -> None:
        self._relink(self.ret_of[self.op[call]])
        self._relink(call)


_NONE: Any = object()


def _first_new(successors: Iterable[Hashable], linearized: int, cache: set) -> Hashable:
    """The first successor state not yet explored with this set of linearized operations."""
    for nxt in successors:
        key = (linearized, nxt)
        if key not in cache:
            cache.add(key)
            return nxt
    return _NONE


def check(model: Model, history: list[Operation], *, budget: int = 2_000_000) -> Result:
    """Check ``history`` against ``model``; raises ``RuntimeError`` past ``budget`` steps."""
    entries = _Entries(history)
    settled = sum(1 for op in history if not op.pending)  # ops that must be linearized
    state = model.init()
    linearized = 0
    cache: set = set()
    stack: list[tuple[int, Hashable, Iterator[Hashable]]] = []
    pos = entries.head
    explored = 0
    while settled:
        explored += 1
        if explored > budget:
            raise RuntimeError("linearizability check ran out of budget")
        if pos != -1 and entries.is_call[pos]:
            call = pos
            i = entries.op[call]
            successors = iter(model.step(state, history[i].input, history[i].output))
        else:
            # A return came before its call could be linearized: undo the latest choice.
            if not stack:
                return Result(False, explored=explored)
            call, state, successors = stack.pop()
            i = entries.op[call]
            entries.restore(call)
            linearized &= ~(1 << i)
            settled += 0 if history[i].pending else 1
        nxt = _first_new(successors, linearized | (1 << i), cache)
        if nxt is _NONE:
            pos = entries.next[call]
            continue
        stack.append((call, state, successors))
        entries.lift(call)
        linearized |= 1 << i
        settled -= 0 if history[i].pending else 1
        state = nxt
        pos = entries.head
    return Result(True, [history[entries.op[call]] for call, _, _ in stack], explored)
