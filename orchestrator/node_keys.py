"""Node identity-key rotation in the pure core (DESIGN 5.6): its deciders.

A node proves a new identity key with its old key and a fresh attestation; the orchestrator
records the new key. :data:`DECIDERS` maps each input of this flow to its decider and is merged
into :func:`orchestrator.core.decide`'s table.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

DECIDERS: dict[type, Callable[..., list[Any]]] = {}
