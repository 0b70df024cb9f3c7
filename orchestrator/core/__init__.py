"""The orchestrator's pure core: :func:`decide` turns the state and one input into events,
:func:`evolve` folds one event into the state, and :class:`Context` carries the time, the seed
and the lease a decision is made under. Nothing here reads a clock, draws randomness, or does
I/O: the build checks it.
"""

from orchestrator.core.context import Context
from orchestrator.core.decisions import decide
from orchestrator.core.state import State, evolve

__all__ = ["Context", "State", "decide", "evolve"]
