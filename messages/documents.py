"""Signed and logged documents: canonical JSON with a format tag and a SHA-256 digest.

Every document hsmfleet logs or signs (fleet-key artifact, stage bundle, cosigner statement,
validation bundle) follows the same rules, normative in ``messages/SPEC.md``:

- it is a JSON object whose ``format`` field names its kind and version
  (``hsmfleet/<kind>/v<n>``);
- every field its format declares is present (``null`` or ``[]`` when empty); fields it does
  not declare are kept, signed and logged (open world);
- values are objects, arrays, strings, booleans, null and integers in ``[-(2**53 - 1),
  2**53 - 1]``; no floating-point numbers; the document object is at depth 0, each member or
  element one deeper than what holds it, and no value is deeper than :data:`MAX_DEPTH`;
- its bytes are its RFC 8785 canonical form and its digest is ``SHA-256`` of those bytes, written
  as 64 lowercase hex digits; those bytes are at most :data:`MAX_DOCUMENT_BYTES`, while the text
  it is read from (any spelling: indented, say) may be up to :data:`MAX_INPUT_BYTES`;
- times are RFC 3339 UTC with milliseconds (``2026-01-02T03:04:05.678Z``), exactly as
  :func:`messages.ids.format_time` writes them.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import re
from typing import Any, ClassVar, Self

from messages.canonical import canonical, loads_strict
from messages.errors import CanonicalizationError, HsmfleetError, MessageError
from messages.ids import format_time, parse_time
from messages.schema import Body

MAX_DOCUMENT_BYTES = 256 * 1024
"""The largest canonical form of a document."""
MAX_INPUT_BYTES = 1024 * 1024
"""The largest JSON text a document (or a file of pins, state or notices) is read from."""
MAX_DEPTH = 16
MAX_SAFE_INTEGER = 2**53 - 1

_HEX_DIGEST = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_ROLE = re.compile(r"^[a-z][a-z0-9._-]{0,63}$")


class DocumentError(HsmfleetError):
    """A document was refused."""

    kind = "document"


class MalformedDocument(DocumentError):
    """Not a well-formed document: bad JSON, a missing or mistyped field, a value out of range."""

    kind = "malformed_document"


class UnknownFormat(DocumentError):
    """The ``format`` tag names no document this build knows where one was expected."""

    kind = "unknown_format"


def hex_digest(data: bytes) -> str:
    """SHA-256 of ``data`` as 64 lowercase hex digits."""
    return hashlib.sha256(data).hexdigest()


def is_digest(value: object) -> bool:
    """True for a document digest: 64 lowercase hex digits."""
    return isinstance(value, str) and _HEX_DIGEST.fullmatch(value) is not None


def is_name(value: object) -> bool:
    """True for a fleet, node or member id: 1-128 of ``A-Z a-z 0-9 _ -`` (a NATS subject token)."""
    return isinstance(value, str) and _NAME.fullmatch(value) is not None


def is_role(value: object) -> bool:
    """True for a key role, stage or algorithm name: lowercase, ``[a-z][a-z0-9._-]{0,63}``."""
    return isinstance(value, str) and _ROLE.fullmatch(value) is not None


def time_ms(value: str, what: str) -> int:
    """Milliseconds since the epoch of a document time, refusing any non-canonical spelling."""
    try:
        ms = parse_time(value)
    except MessageError as exc:
        raise MalformedDocument(f"{what} is not an RFC 3339 time", value=value) from exc
    if not 0 <= ms < 1 << 48 or format_time(ms) != value:
        raise MalformedDocument(f"{what} must be written as YYYY-MM-DDTHH:MM:SS.mmmZ", value=value)
    return ms


def require(condition: bool, message: str, **detail: object) -> None:
    """Raise :class:`MalformedDocument` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise MalformedDocument(message, **detail)


def check_json(value: Any, path: str = "document", depth: int = 0) -> None:
    """Refuse JSON values outside the document subset: floats, unsafe integers, deep nesting."""
    if depth > MAX_DEPTH:
        raise MalformedDocument("document is nested too deeply", path=path)
    if isinstance(value, dict):
        for key, item in value.items():
            check_json(item, f"{path}.{key}", depth + 1)
    elif isinstance(value, list):
        for position, item in enumerate(value):
            check_json(item, f"{path}[{position}]", depth + 1)
    elif isinstance(value, bool) or value is None or isinstance(value, str):
        return
    elif isinstance(value, int):
        require(abs(value) <= MAX_SAFE_INTEGER, "integer out of range", path=path)
    else:
        raise MalformedDocument("only objects, arrays, strings, integers, booleans", path=path)


def _declared(cls: type[Body]) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.name != "extra"]


class Document(Body):
    """Base of the logged and signed documents; subclasses are frozen dataclasses.

    Subclasses set :attr:`FORMAT` and declare a ``format`` field defaulting to it, so code
    builds documents without naming it; decoding still requires it, like every declared field
    but the :attr:`OPTIONAL` ones, which are left out when they hold ``None`` (a document
    without one reads as documents did before it existed). Nested parts are plain
    :class:`~messages.schema.Body` dataclasses with no defaults.
    """

    FORMAT: ClassVar[str] = ""
    OPTIONAL: ClassVar[frozenset[str]] = frozenset()

    def to_json(self) -> dict[str, Any]:
        out = super().to_json()
        for name in self.OPTIONAL:
            if out.get(name) is None:
                out.pop(name, None)
        return out

    def __post_init__(self) -> None:
        require(getattr(self, "format", None) == self.FORMAT, "wrong format tag", want=self.FORMAT)

    def to_bytes(self) -> bytes:
        """The document's canonical bytes (RFC 8785)."""
        return canonical(self.to_json())

    @classmethod
    def from_json(cls, raw: Any, path: str = "document") -> Self:
        """Decode ``raw``: every declared field present, the document subset of JSON, open
        world for undeclared fields; :class:`MalformedDocument` on any defect."""
        if not isinstance(raw, dict):
            raise MalformedDocument(f"{path} must be a JSON object")
        if raw.get("format") != cls.FORMAT:
            raise UnknownFormat(f"{path} is not a {cls.FORMAT}", format=raw.get("format"))
        check_json(raw, path)
        try:
            data = canonical(raw)
        except CanonicalizationError as exc:  # a string that is no Unicode text (a surrogate)
            raise MalformedDocument(f"{path} has no canonical form: {exc}") from exc
        # However it arrived (a file, a NATS body): a document larger than any reader accepts
        # would be logged, then refused by every audit and by the cosigner's own restart.
        require(len(data) <= MAX_DOCUMENT_BYTES, f"{path} is too large", size=len(data))
        missing = [name for name in _declared(cls) if name not in raw and name not in cls.OPTIONAL]
        require(not missing, f"{path} lacks fields", missing=missing)
        try:
            document = super().from_json(raw, path)
        except MessageError as exc:
            raise MalformedDocument(str(exc)) from exc
        # Decoding and re-encoding must give back the same bytes, or the digest of the typed
        # document would differ from the digest of what was received.
        require(canonical(document.to_json()) == data, f"{path} is not canonical")
        return document

    @classmethod
    def parse(cls, data: bytes | str) -> Self:
        """Decode a document from its JSON text (any spelling; its digest is of the canonical)."""
        return cls.from_json(load_json(data))


class Digested(Document):
    """A document others refer to by digest: stage bundles and fleet-key artifacts."""

    KIND: ClassVar[str] = ""

    @functools.cached_property
    def digest(self) -> str:
        """SHA-256 of the canonical bytes, in lowercase hex (computed once: documents are
        frozen)."""
        return hex_digest(self.to_bytes())


def load_json(data: bytes | str) -> Any:
    """Parse a document's JSON text: at most :data:`MAX_INPUT_BYTES` (whitespace included;
    a document's own limit is on its canonical bytes), no duplicate keys."""
    if len(data) > MAX_INPUT_BYTES:
        raise MalformedDocument("JSON text too large", size=len(data), limit=MAX_INPUT_BYTES)
    try:
        return loads_strict(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise MalformedDocument(f"document is not JSON: {exc}") from exc


def without_defaults(out: dict[str, Any], **defaults: Any) -> dict[str, Any]:
    """``out`` without the optional members that hold their default (files written before
    those members existed keep their bytes)."""
    for name, default in defaults.items():
        if name in out and out[name] == default:
            del out[name]
    return out
