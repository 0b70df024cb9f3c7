"""Seeded mutations of valid envelopes, and random bytes and random JSON.

Every candidate comes from one :class:`random.Random`, so a campaign is reproduced from its seed.
Most candidates are mutations of a valid, correctly signed envelope (a :class:`Seed`): bytes
flipped, cut or spliced; header or body fields deleted, duplicated, given another type, a huge
number, deep nesting or an unknown neighbour; the ``at`` moved far into the past or the future;
the envelope signed by a key the receiver does not trust, or by the trusted key for another owner;
or the seed replayed as it was. A JSON-level mutation is re-signed with the trusted key half of the
time, so that it gets past the signature check and reaches the schema and the handler.
"""

from __future__ import annotations

import functools
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from messages.envelope import Envelope
from messages.errors import HsmfleetError
from messages.ids import format_time, parse_time
from messages.schema import REGISTRY
from messages.signing import Signer, sign_envelope

HOUR_MS = 3_600_000
HUGE_NUMBERS: tuple[Any, ...] = (
    2**53,
    2**63,
    -(2**63) - 1,
    2**64 + 1,
    10**300,
    1e308,
    -1e-308,
    -0.0,
    0,
    -1,
)
# Strings that stress decoders: empty, control and NUL characters, a lone surrogate, non-BMP
# characters, subject wildcards, base64 look-alikes, very long ones.
ODD_STRINGS: tuple[str, ...] = (
    "",
    "\x00",
    "\ud800",
    "\U0001f600" * 3,
    "a.b.*.>",
    "AAAA",
    "AAA=",
    "====",
    "x" * 5000,
    "2026-13-45T99:99:99Z",
    "0001-01-01T00:00:00.000Z",
    "01ARZ3NDEKTSV4RRFFQ69G5FAV",
)


@dataclass(frozen=True)
class Seed:
    """A valid envelope the mutations start from.

    ``signer`` is the trusted key that signs re-signed mutants (None for unsigned subjects);
    ``deep`` says that the receiver refuses this message even once it passes the gate (its
    handler does), so mutants the gate would admit are refused too and may be sent.
    """

    env: Envelope
    signer: Signer | None = None
    deep: bool = False

    @functools.cached_property
    def data(self) -> bytes:
        return self.env.encode()

    def fresh_json(self) -> dict[str, Any]:
        """A copy of the envelope as JSON, free to mutate."""
        return json.loads(self.data)


Mutation = Callable[["Mutator", Seed], bytes]


class Mutator:
    """Draws candidates from ``rng``; ``strangers`` are keys no receiver trusts."""

    def __init__(self, rng: random.Random, strangers: list[Signer]) -> None:
        self.rng = rng
        self.strangers = strangers
        self.types = REGISTRY.types()

    def candidate(self, seed: Seed) -> tuple[str, bytes]:
        """One candidate message derived from ``seed`` (or from nothing), and how it was made."""
        name, mutation = self.rng.choices(MUTATIONS, WEIGHTS)[0]
        return name, mutation(self, seed)

    # -- raw bytes ---------------------------------------------------------------------------

    def bit_flip(self, seed: Seed) -> bytes:
        return self.flip(seed.data)

    def truncate(self, seed: Seed) -> bytes:
        return self.cut(seed.data)

    def splice(self, seed: Seed) -> bytes:
        return self.splice_bytes(seed.data)

    def flip(self, data: bytes) -> bytes:
        """``data`` with one to eight bits flipped."""
        out = bytearray(data)
        for _ in range(self.rng.randint(1, 8) if out else 0):
            i = self.rng.randrange(len(out))
            out[i] ^= 1 << self.rng.randrange(8)
        return bytes(out)

    def cut(self, data: bytes) -> bytes:
        """A proper prefix of ``data``."""
        return data[: self.rng.randrange(len(data))] if data else data

    def splice_bytes(self, data: bytes) -> bytes:
        """``data`` with a slice cut out, repeated, or random bytes inserted."""
        i, j = sorted(self.rng.randrange(len(data) + 1) for _ in range(2))
        choice = self.rng.randrange(3)
        if choice == 0:
            return data[:i] + data[j:]
        if choice == 1:
            return data[:j] + data[i:j] + data[j:]
        return data[:i] + self.random_bytes_of(self.rng.randint(1, 16)) + data[i:]

    def random_bytes(self, seed: Seed) -> bytes:
        return self.random_bytes_of(self.rng.choice((0, 1, 2, 8, 64, 512, 4096)))

    def random_bytes_of(self, size: int) -> bytes:
        return self.rng.randbytes(size)

    # -- JSON --------------------------------------------------------------------------------

    def random_json(self, seed: Seed) -> bytes:
        if self.rng.random() < 0.5:
            value: Any = {k: self.json_value(2) for k in seed.fresh_json()}
        else:
            value = self.json_value(4)
        return _dump(value)

    def json_value(self, depth: int) -> Any:
        """A random JSON value at most ``depth`` levels deep."""
        kind = self.rng.randrange(8 if depth > 0 else 6)
        if kind == 0:
            return None
        if kind == 1:
            return self.rng.random() < 0.5
        if kind == 2:
            return self.rng.choice(HUGE_NUMBERS)
        if kind == 3:
            return self.rng.randint(-1000, 1000)
        if kind == 4:
            return self.rng.choice(ODD_STRINGS)
        if kind == 5:
            return "".join(
                chr(self.rng.randrange(32, 0x3000)) for _ in range(self.rng.randrange(9))
            )
        if kind == 6:
            return [self.json_value(depth - 1) for _ in range(self.rng.randrange(4))]
        return {
            self.rng.choice(ODD_STRINGS[:6]) + str(i): self.json_value(depth - 1) for i in range(3)
        }

    def field_mutation(self, seed: Seed) -> bytes:
        """A header or body field deleted, retyped, made huge or odd, or given a neighbour;
        re-signed with the trusted key half of the time."""
        raw = seed.fresh_json()
        target, key = self._pick_field(raw)
        choice = self.rng.randrange(6)
        if choice == 0:
            del target[key]
        elif choice == 1:
            target[key] = self.json_value(2)
        elif choice == 2:
            target[key] = self.rng.choice(HUGE_NUMBERS)
        elif choice == 3:
            target[key] = self.rng.choice(ODD_STRINGS)
        elif choice == 4:
            target["unknown_" + str(self.rng.randrange(100))] = self.json_value(2)
        else:
            raw["type"] = self.rng.choice(self.types)
        return self._maybe_resign(raw, seed)

    def duplicate_key(self, seed: Seed) -> bytes:
        """A key written twice (JSON text level): readers that keep the last would differ."""
        raw = seed.fresh_json()
        key = self.rng.choice(sorted(raw))
        text = _dump(raw).decode()
        dup = json.dumps(key) + ":" + json.dumps(self.json_value(1))
        return ("{" + dup + "," + text[1:]).encode()

    def deep_nesting(self, seed: Seed) -> bytes:
        """A body value nested from a little past the limit to far beyond the stack's depth."""
        depth = self.rng.choice((65, 300, 1000, 50_000))
        open_, close = ("[", "]") if self.rng.random() < 0.5 else ('{"a":', "}")
        raw = seed.fresh_json()
        raw["body"] = {**raw["body"], "nest": "@NEST@"}
        text = _dump(raw).decode()
        return text.replace('"@NEST@"', open_ * depth + "1" + close * depth).encode()

    def moved_time(self, seed: Seed) -> bytes:
        """The ``at`` an hour to decades away, correctly signed: stale, however well signed."""
        offset = self.rng.choice((HOUR_MS, 24 * HOUR_MS, 20 * 365 * 24 * HOUR_MS))
        sign = self.rng.choice((-1, 1))
        at_ms = max(0, parse_time(seed.env.at) + sign * offset)
        env = replace(seed.env, at=format_time(at_ms))
        return _sign(env, seed.signer) if seed.signer is not None else env.encode()

    def wrong_signer(self, seed: Seed) -> bytes:
        """Signed by a key the receiver does not trust, or by the trusted key for another owner."""
        if seed.signer is not None and self.rng.random() < 0.3:
            env = replace(seed.env, source=seed.env.source + "-other")
            return _sign(env, seed.signer)
        return _sign(seed.env, self.rng.choice(self.strangers))

    def replay(self, seed: Seed) -> bytes:
        return seed.data

    # -- helpers -----------------------------------------------------------------------------

    def _pick_field(self, raw: dict[str, Any]) -> tuple[dict[str, Any], str]:
        body = raw.get("body")
        if isinstance(body, dict) and body and self.rng.random() < 0.6:
            return body, self.rng.choice(sorted(body))
        return raw, self.rng.choice(sorted(raw))

    def _maybe_resign(self, raw: dict[str, Any], seed: Seed) -> bytes:
        if seed.signer is not None and self.rng.random() < 0.5:
            try:
                env = Envelope.from_json(raw)
                return _sign(env, seed.signer)
            except (HsmfleetError, UnicodeEncodeError):
                pass  # no longer an envelope that can be signed: send it as it is
        return _dump(raw)


def _sign(env: Envelope, signer: Signer) -> bytes:
    try:
        return sign_envelope(env, signer).encode()
    except (HsmfleetError, UnicodeEncodeError):
        return _dump(env.to_json())


def _dump(value: Any) -> bytes:
    """JSON text of ``value`` (not canonical: receivers must not need the canonical form)."""
    return json.dumps(value, separators=(",", ":")).encode()


MUTATIONS: tuple[tuple[str, Mutation], ...] = (
    ("bit_flip", Mutator.bit_flip),
    ("truncate", Mutator.truncate),
    ("splice", Mutator.splice),
    ("random_bytes", Mutator.random_bytes),
    ("random_json", Mutator.random_json),
    ("field", Mutator.field_mutation),
    ("duplicate_key", Mutator.duplicate_key),
    ("deep_nesting", Mutator.deep_nesting),
    ("moved_time", Mutator.moved_time),
    ("wrong_signer", Mutator.wrong_signer),
    ("replay", Mutator.replay),
)
WEIGHTS = (10, 8, 8, 5, 5, 35, 4, 2, 8, 8, 7)
