"""Who connects to NATS: the fleet layout that the security configuration is generated for.

A layout is a JSON object with one list per role::

    {
      "orchestrators": ["orch-a", "orch-b"],
      "nodes": [{"id": "n1", "fleets": ["f1"]}, {"id": "n2", "fleet": "f1"}],
      "cosigners": ["witness-1"],
      "clients": ["app"],
      "auditors": ["audit"],
      "operators": ["ops"]
    }

Every list is optional. Ids and fleet ids are subject tokens (they name subjects and inboxes);
an id appears at most once per role. Anything else is refused with :class:`LayoutError`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from messages import subjects
from messages.errors import BadSubject, HsmfleetError

ORCHESTRATOR = "orchestrator"
NODE = "node"
COSIGNER = "cosigner"
CLIENT = "client"
AUDITOR = "auditor"
OPERATOR = "operator"
ROLES = (ORCHESTRATOR, NODE, COSIGNER, CLIENT, AUDITOR, OPERATOR)
_KEYS = {f"{role}s": role for role in ROLES}


class LayoutError(HsmfleetError):
    """The fleet layout is not valid JSON of the expected shape."""

    kind = "nats_layout"


@dataclass(frozen=True)
class Party:
    """One NATS user: a role, its id, and (for a node) the fleets it is a member of."""

    role: str
    id: str
    fleets: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """``<role>-<id>``: unique in a layout; names the party's credential file."""
        return f"{self.role}-{self.id}"

    @property
    def inbox(self) -> str:
        """The party's private reply inbox prefix, ``_INBOX.<role>.<id>``."""
        return f"_INBOX.{self.role}.{self.id}"


@dataclass(frozen=True)
class Layout:
    """Every party that may connect, in layout order."""

    parties: tuple[Party, ...]

    def of(self, role: str) -> tuple[Party, ...]:
        """The parties of ``role``."""
        return tuple(p for p in self.parties if p.role == role)

    def party(self, role: str, party_id: str) -> Party:
        """The party ``role``/``party_id``; raises :class:`LayoutError` if there is none."""
        for p in self.parties:
            if p.role == role and p.id == party_id:
                return p
        raise LayoutError("no such party in the layout", role=role, id=party_id)

    def to_json(self) -> dict[str, list[Any]]:
        """The layout as :func:`parse_layout` reads it."""
        out: dict[str, list[Any]] = {}
        for key, role in _KEYS.items():
            parties = self.of(role)
            if not parties:
                continue
            if role == NODE:
                out[key] = [{"id": p.id, "fleets": list(p.fleets)} for p in parties]
            else:
                out[key] = [p.id for p in parties]
        return out


def _token(value: object, what: str) -> str:
    try:
        return subjects.token(value, what)
    except BadSubject:
        raise LayoutError(f"{what} is not a subject token", value=value) from None


def _node(entry: object) -> Party:
    if not isinstance(entry, dict):
        raise LayoutError("a node is an object with an id and its fleets", entry=entry)
    unknown = set(entry) - {"id", "fleet", "fleets"}
    if unknown:
        raise LayoutError("unknown node fields", fields=sorted(unknown))
    if "fleet" in entry and "fleets" in entry:
        raise LayoutError("give a node either fleet or fleets, not both", id=entry.get("id"))
    fleets = entry.get("fleets", [entry["fleet"]] if "fleet" in entry else [])
    if not isinstance(fleets, list):
        raise LayoutError("a node's fleets are a list", id=entry.get("id"))
    ids = tuple(_token(f, "fleet id") for f in fleets)
    if len(set(ids)) != len(ids):
        raise LayoutError("a node lists a fleet twice", id=entry.get("id"), fleets=ids)
    return Party(NODE, _token(entry.get("id"), "node id"), ids)


def parse_layout(data: object) -> Layout:
    """A :class:`Layout` from decoded JSON; raises :class:`LayoutError` on anything else."""
    if not isinstance(data, dict):
        raise LayoutError("a layout is a JSON object")
    unknown = set(data) - set(_KEYS)
    if unknown:
        raise LayoutError("unknown layout keys", keys=sorted(unknown), known=sorted(_KEYS))
    parties: list[Party] = []
    for key, role in _KEYS.items():
        entries = data.get(key, [])
        if not isinstance(entries, list):
            raise LayoutError(f"{key} is a list", value=entries)
        seen: set[str] = set()
        for entry in entries:
            party = _node(entry) if role == NODE else Party(role, _token(entry, f"{role} id"))
            if party.id in seen:
                raise LayoutError(f"{role} id appears twice", id=party.id)
            seen.add(party.id)
            parties.append(party)
    return Layout(tuple(parties))


def load_layout(path: Path) -> Layout:
    """Read and check the layout file at ``path``."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        error = exc.strerror
        raise LayoutError("cannot read the layout file", path=str(path), error=error) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LayoutError("the layout file is not JSON", path=str(path), error=str(exc)) from None
    return parse_layout(data)


# What ``hsmfleet nats up`` secures a development server for when given no layout: one of each
# role, a fleet of five nodes, two cosigners.
DEV_LAYOUT = parse_layout(
    {
        "orchestrators": ["orch-a"],
        "nodes": [{"id": f"node-{i}", "fleet": "dev-fleet"} for i in range(1, 6)],
        "cosigners": ["cosigner-a", "cosigner-b"],
        "clients": ["app"],
        "auditors": ["audit"],
        "operators": ["ops"],
    }
)
