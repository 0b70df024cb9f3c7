"""A message type private to the tests, with two upcasters, in a registry of its own."""

from __future__ import annotations

from dataclasses import dataclass

from messages import Body, Registry
from messages.rejected import Rejected

registry = Registry()
registry.register(Rejected)


@registry.register
@dataclass(frozen=True)
class Ping(Body):
    TYPE = "test.ping"
    VERSION = 3
    count: int
    label: str
    note: str | None = None


@registry.upcaster("test.ping", 1)
def _ping_v1_to_v2(body: dict) -> dict:
    """v1 called the count ``n``."""
    out = dict(body)
    out["count"] = out.pop("n")
    return out


@registry.upcaster("test.ping", 2)
def _ping_v2_to_v3(body: dict) -> dict:
    """v3 added a required ``label``; old pings are labelled ``legacy``."""
    return {**body, "label": "legacy"}
