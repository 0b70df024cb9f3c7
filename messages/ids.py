"""Message ids and timestamps.

Ids are ULIDs: 48 bits of milliseconds since the epoch and 80 bits of entropy, in Crockford
base32, so they sort by creation time. Both the time and the entropy are inputs, so the pure core
can be handed them and a replay reproduces the same ids; the shell's
:class:`transport.outbox.IdSource` reads the clock and the random source.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from messages.errors import MalformedMessage

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_DECODE = {c: i for i, c in enumerate(_ALPHABET)}
ID_LENGTH = 26
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def make_id(ms: int, entropy: bytes) -> str:
    """Build a ULID from a millisecond timestamp and 10 bytes of entropy."""
    if not 0 <= ms < 1 << 48:
        raise ValueError(f"timestamp {ms} ms does not fit in 48 bits")
    if len(entropy) != 10:
        raise ValueError(f"ULID entropy must be 10 bytes, got {len(entropy)}")
    value = (ms << 80) | int.from_bytes(entropy, "big")
    chars = []
    for _ in range(ID_LENGTH):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def id_time_ms(message_id: str) -> int:
    """The millisecond timestamp inside a ULID."""
    if len(message_id) != ID_LENGTH or any(c not in _DECODE for c in message_id):
        raise MalformedMessage("message id is not a ULID", id=message_id)
    value = 0
    for c in message_id:
        value = (value << 5) | _DECODE[c]
    return value >> 80


def format_time(ms: int) -> str:
    """RFC 3339 UTC timestamp with millisecond precision, the wire form of every ``at``."""
    dt = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def display_time(ms: int) -> str:
    """``ms`` for people to read (CLI output): :func:`format_time` to the whole second."""
    return format_time(ms)[:19] + "Z"


def parse_time(text: str) -> int:
    """Milliseconds since the epoch from an RFC 3339 timestamp as :func:`format_time` writes."""
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (ValueError, AttributeError) as exc:
        raise MalformedMessage("timestamp is not RFC 3339", at=text) from exc
    if dt.tzinfo is None:
        raise MalformedMessage("timestamp has no time zone", at=text)
    return (dt - _EPOCH) // timedelta(milliseconds=1)
