"""Canonical bytes (RFC 8785 JSON Canonicalization Scheme) and the digests taken over them."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import rfc8785

from messages.errors import CanonicalizationError


def canonical(value: Any) -> bytes:
    """Return the RFC 8785 canonical JSON bytes of ``value``."""
    try:
        return rfc8785.dumps(value)
    except (rfc8785.CanonicalizationError, TypeError, ValueError) as exc:
        raise CanonicalizationError(f"cannot canonicalize value: {exc}") from exc


def digest(value: Any) -> bytes:
    """SHA-256 over the canonical bytes of ``value``: the digest of anything hsmfleet logs."""
    return hashlib.sha256(canonical(value)).digest()


def b64(data: bytes) -> str:
    """Standard base64 with padding, the encoding every binary field on the wire uses."""
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    """Decode standard base64, refusing anything but the one canonical encoding of the bytes.

    Plain decoders ignore the unused low bits of the last character, so several strings decode
    to the same bytes; accepting them would make signed fields malleable.
    """
    data = base64.b64decode(text.encode("ascii"), validate=True)
    if b64(data) != text:
        raise ValueError("base64 is not in canonical form")
    return data


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def loads_strict(data: bytes | str) -> Any:
    """Parse JSON, refusing duplicate keys and NaN or Infinity: they make signatures ambiguous."""
    return json.loads(data, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
