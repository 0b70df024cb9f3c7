"""The shape every flow of the pure core has: how it moves on after each decision, and what the
passing of time does to it. A flow's inputs are decided by its own deciders (the core's table
maps each input type to one); between inputs, the core asks every flow, in a fixed order, for
the events the state now calls for."""

from __future__ import annotations

from typing import Protocol

from messages.events import LogEntry
from orchestrator.core.context import Context
from orchestrator.core.state import State


class Flow(Protocol):
    """A flow of the core (enrollment's key rotations, rollouts, fleet-key rotations,
    retirements): each is a module with these three functions."""

    def advance(self, state: State, ctx: Context) -> list[LogEntry]:
        """The events with which the flow moves on in ``state`` (after every decision, until
        no flow has any)."""
        ...

    def tick(self, state: State, ctx: Context) -> list[LogEntry]:
        """The events the passing of time to ``ctx.now_ms`` causes (deadlines, windows,
        schedules)."""
        ...

    def overdue(self, state: State, now_ms: int) -> bool:
        """Whether a tick at ``now_ms`` would cause any event."""
        ...
