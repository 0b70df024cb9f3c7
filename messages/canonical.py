"""Canonical bytes (RFC 8785 JSON Canonicalization Scheme) and the digests taken over them."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from typing import Any

import rfc8785

from messages.errors import CanonicalizationError

_SAFE_INT = 2**53
# Deeper JSON is refused on reading: the recursive code that later walks a value (canonical
# form, schema checks, repr in logs) would exhaust the interpreter's stack at a few hundred
# levels, and no hsmfleet message nests more than a dozen.
MAX_DEPTH = 64
# Python sorts keys by code point, RFC 8785 by UTF-16 code unit; the two orders differ only for
# characters at U+D800 and above.
_BEYOND_UTF16_AGREEMENT = re.compile("[\ud800-\U0010ffff]")


def canonical(value: Any) -> bytes:
    """Return the RFC 8785 canonical JSON bytes of ``value``.

    Values made only of objects with string keys, arrays, strings, booleans, null and integers
    in the IEEE-754 safe range, with no character at U+D800 or above, have the same canonical
    form as the C JSON encoder's sorted, compact output, which is several times faster than the
    general RFC 8785 serializer; every other value takes the general path.
    """
    try:
        if _plain(value):
            text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
            if text.isascii() or not _BEYOND_UTF16_AGREEMENT.search(text):
                return text.encode()
        return rfc8785.dumps(value)
    except (rfc8785.CanonicalizationError, TypeError, ValueError, RecursionError) as exc:
        raise CanonicalizationError(f"cannot canonicalize value: {exc}") from exc


def _plain(value: Any) -> bool:
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return True
    if kind is int:
        return bool(-_SAFE_INT < value < _SAFE_INT)
    if kind is dict:
        return all(type(k) is str and _plain(v) for k, v in value.items())
    if kind is list or kind is tuple:
        return all(_plain(v) for v in value)
    return False


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
    """Parse JSON, refusing duplicate keys and NaN or Infinity (they make signatures ambiguous),
    values nested deeper than :data:`MAX_DEPTH`, and lone surrogates; raises ``ValueError``."""
    try:
        value = json.loads(data, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except RecursionError:
        raise ValueError("JSON is nested too deeply") from None
    text_type = isinstance(data, str)
    if isinstance(data, str):
        opened = data.count("[") + data.count("{")
    else:
        opened = data.count(b"[") + data.count(b"{")
    if opened > MAX_DEPTH and _depth(value) > MAX_DEPTH:
        raise ValueError(f"JSON is nested deeper than {MAX_DEPTH} levels")
    if "\\u" in data if text_type else b"\\u" in data:
        # An escaped lone surrogate decodes to a string no UTF-8 (and no canonical form) can
        # hold; I-JSON (RFC 7493) refuses it, and so must every reader here.
        try:
            json.dumps(value, ensure_ascii=False).encode()
        except UnicodeEncodeError:
            raise ValueError("JSON holds a lone surrogate, which has no canonical form") from None
    return value


def _depth(value: Any) -> int:
    """How deeply ``value`` nests arrays and objects, walked without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        kind = type(item)
        if kind is dict or kind is list:
            deepest = max(deepest, level)
            children = item.values() if kind is dict else item
            stack.extend((child, level + 1) for child in children if type(child) in (dict, list))
    return deepest
