"""A member step of a rollout as the shell carries it out: the node command it is sent as. Each
stage defines the steps it opens, with their commands, beside the code that opens them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from messages.schema import Body
from orchestrator.core.rollout.state import Rollout, RolloutMember
from orchestrator.core.state import State


@dataclass(frozen=True)
class Step:
    """``verb``: the node command subject it is sent on (``fleet.node.<id>.cmd.<verb>``);
    ``command``: the command's body for a member at this step."""

    verb: str
    command: Callable[[State, Rollout, RolloutMember], Body]
