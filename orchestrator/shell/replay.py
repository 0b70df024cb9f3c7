"""Folding admitted log entries into state, re-running each recorded decision on the way.

A :class:`Replayer` is fed :class:`~orchestrator.shell.log.Record` s in log order. With
``check=True`` (auditors, ``hsmfleet replay``) it re-runs every :class:`Decision` through
:func:`decide` with the recorded input and context and requires the recorded events to be exactly
what decide emits now; the first difference is a :class:`ReplayDivergence` naming the entry. With
``check=False`` (an orchestrator catching up) it only folds, still requiring each decision to be
followed by all its events and every decision to be made under the lease in force.
"""

from __future__ import annotations

from collections import deque

from messages.envelope import Envelope
from messages.errors import HsmfleetError, MessageError
from messages.events import Decision, LogEntry
from messages.inputs import TakeLease
from messages.schema import REGISTRY, Body, Registry
from orchestrator.core.context import Context
from orchestrator.core.decisions import decide
from orchestrator.core.errors import Fenced, LogCorrupt, ReplayDivergence
from orchestrator.core.state import State, evolve
from orchestrator.shell.log import Record


def decision_input(decision: Decision, where: str, registry: Registry = REGISTRY) -> Body:
    """The typed input a decision recorded, upcast to this build's version of its type."""
    env = Envelope(
        type=decision.input_type,
        v=decision.input_v,
        id="input",
        at="1970-01-01T00:00:00.000Z",
        source="log",
        body=decision.input,
    )
    try:
        return registry.parse(env)
    except MessageError as exc:
        raise LogCorrupt(where, f"recorded input does not decode: {exc}") from None


def decision_context(decision: Decision) -> Context:
    return Context(decision.now_ms, decision.seed, decision.epoch, decision.holder)


class Replayer:
    """Folds records into :attr:`state`; see the module docstring for ``check``."""

    def __init__(
        self, state: State | None = None, *, check: bool = True, registry: Registry = REGISTRY
    ) -> None:
        self.state = state if state is not None else State()
        self.check = check
        self.registry = registry
        self.decisions = 0
        self.events = 0
        self._decision: Record | None = None
        self._expected: deque[LogEntry] = deque()
        self._missing = 0

    @property
    def in_decision(self) -> bool:
        """Whether the last decision still waits for some of its events."""
        return self._missing > 0

    def apply(self, record: Record) -> None:
        """Fold one record; raises :class:`ReplayDivergence`, :class:`LogCorrupt` or
        :class:`Fenced` without changing the state."""
        entry = record.entry
        if isinstance(entry, Decision):
            if self._missing:
                raise LogCorrupt(
                    record.where,
                    f"a new decision starts while {self._missing} event(s) of the one before "
                    "are missing",
                )
            self._open(record, entry)
        else:
            if not self._missing or self._decision is None:
                raise LogCorrupt(record.where, "event is not preceded by its decision")
            if record.envelope.causation != self._decision.envelope.id:
                raise LogCorrupt(record.where, "event names another decision as its cause")
            if self.check:
                self._compare(record, self._expected.popleft())
            self._missing -= 1
            self.events += 1
        self.state = evolve(self.state, entry)

    def finish(self, where: str) -> State:
        """The final state; a log must not end in the middle of a decision."""
        if self._missing:
            raise LogCorrupt(where, f"log ends with {self._missing} event(s) of a decision missing")
        return self.state

    def _open(self, record: Record, decision: Decision) -> None:
        self._fence(record.where, decision)
        if self.check:
            command = decision_input(decision, record.where, self.registry)
            try:
                expected = decide(self.state, command, decision_context(decision))
            except HsmfleetError as exc:
                raise ReplayDivergence(
                    record.where, f"decide now refuses the recorded {decision.input_type}: {exc}"
                ) from None
            if len(expected) != decision.emits:
                raise ReplayDivergence(
                    record.where,
                    f"recorded decision emitted {decision.emits} event(s), decide now emits "
                    f"{len(expected)}: {[e.TYPE for e in expected]}",
                )
            self._expected = deque(expected)
        self._decision = record
        self._missing = decision.emits
        self.decisions += 1

    def _fence(self, where: str, decision: Decision) -> None:
        lease = self.state.lease
        if decision.input_type == TakeLease.TYPE:
            if decision.epoch <= lease.epoch:
                raise Fenced(f"{where}: lease takeover with an epoch that is not newer")
        elif (decision.holder, decision.epoch) != (lease.holder, lease.epoch):
            raise Fenced(
                f"{where}: decision by {decision.holder} (epoch {decision.epoch}) while "
                f"{lease.holder or 'nobody'} (epoch {lease.epoch}) holds the lease"
            )

    def _compare(self, record: Record, expected: LogEntry) -> None:
        recorded = record.entry
        if type(recorded) is not type(expected):
            raise ReplayDivergence(
                record.where,
                f"recorded {recorded.TYPE}, decide now emits {expected.TYPE}",
                id=record.envelope.id,
            )
        mine, theirs = recorded.to_json(), expected.to_json()
        if mine != theirs:
            fields = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
            raise ReplayDivergence(
                record.where,
                f"recorded {recorded.TYPE} differs from what decide now emits in {fields}",
                id=record.envelope.id,
                recorded={k: mine.get(k) for k in fields},
                now={k: theirs.get(k) for k in fields},
            )
