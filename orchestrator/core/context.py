"""What a decision of the pure core may depend on besides the state and its input: the time, a
seed for everything random, and the lease it is made under. The shell reads the clock and the
random source once per decision and records them, so a replay makes the same decisions."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from messages.ids import make_id

_DERIVE = b"hsmfleet/v1/decision\n"


@dataclass(frozen=True)
class Context:
    """What a decision may depend on besides the state and the input."""

    now_ms: int
    seed: bytes
    epoch: int
    holder: str

    def derive(self, label: str, index: int, size: int = 32) -> bytes:
        """Bytes drawn from the seed, distinct per ``label`` and ``index``."""
        data = _DERIVE + label.encode() + b"\n" + index.to_bytes(4, "big") + self.seed
        return hashlib.sha256(data).digest()[:size]

    def new_id(self, label: str, index: int) -> str:
        """A ULID at this decision's time, drawn from the seed."""
        return make_id(self.now_ms, self.derive(label, index, 10))
