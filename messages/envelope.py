"""The envelope every hsmfleet message travels in.

An envelope is decoded open-world: top-level fields this build does not know are kept in
``extra``, are covered by the signature, and are written back unchanged on re-encoding.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from messages.canonical import b64, canonical, loads_strict, unb64
from messages.errors import CanonicalizationError, MalformedMessage

SIGNING_DOMAIN = b"hsmfleet/v1/"
MAX_MESSAGE_BYTES = 1024 * 1024

_REQUIRED = {"type": str, "v": int, "id": str, "at": str, "source": str, "body": dict}
_OPTIONAL = {"corr": str, "causation": str}
_FIELD_TYPES = {**_REQUIRED, **_OPTIONAL}
_KNOWN = {*_FIELD_TYPES, "sig"}


@dataclass(frozen=True)
class Signature:
    """A signature over an envelope's canonical bytes, naming the key that made it."""

    kid: str
    alg: str
    value: bytes

    def to_json(self) -> dict[str, str]:
        return {"alg": self.alg, "kid": self.kid, "value": b64(self.value)}

    @classmethod
    def from_json(cls, raw: Any) -> Signature:
        if not isinstance(raw, dict):
            raise MalformedMessage("sig must be an object")
        try:
            kid, alg, value = raw["kid"], raw["alg"], raw["value"]
        except KeyError as exc:
            raise MalformedMessage(f"sig lacks field {exc.args[0]!r}") from exc
        if not (isinstance(kid, str) and isinstance(alg, str) and isinstance(value, str)):
            raise MalformedMessage("sig fields must be strings")
        try:
            return cls(kid=kid, alg=alg, value=unb64(value))
        except ValueError as exc:
            raise MalformedMessage("sig value is not base64") from exc


@dataclass(frozen=True)
class Envelope:
    """A message: header fields, a JSON body, an optional signature and any unknown fields."""

    type: str
    v: int
    id: str
    at: str
    source: str
    body: dict[str, Any]
    corr: str | None = None
    causation: str | None = None
    sig: Signature | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def unsigned_json(self) -> dict[str, Any]:
        """Every field but ``sig``: what the signature covers."""
        out: dict[str, Any] = dict(self.extra)
        out.update(type=self.type, v=self.v, id=self.id, at=self.at, source=self.source)
        out["body"] = self.body
        if self.corr is not None:
            out["corr"] = self.corr
        if self.causation is not None:
            out["causation"] = self.causation
        return out

    def signing_bytes(self) -> bytes:
        """``b"hsmfleet/v1/" + type + b"\\n" + JCS(all fields but sig)``."""
        try:
            type_bytes = self.type.encode()
        except UnicodeEncodeError as exc:  # a lone surrogate, decoded from a JSON escape
            raise CanonicalizationError(f"message type is not UTF-8: {exc}") from None
        return SIGNING_DOMAIN + type_bytes + b"\n" + canonical(self.unsigned_json())

    def to_json(self) -> dict[str, Any]:
        out = self.unsigned_json()
        if self.sig is not None:
            out["sig"] = self.sig.to_json()
        return out

    def encode(self) -> bytes:
        """Wire bytes: the canonical JSON of the whole envelope."""
        return canonical(self.to_json())

    def with_signature(self, sig: Signature) -> Envelope:
        return replace(self, sig=sig)

    @classmethod
    def from_json(cls, raw: Any) -> Envelope:
        """Build an envelope from decoded JSON, checking header field types."""
        if type(raw) is not dict:
            raise MalformedMessage("envelope must be a JSON object")
        for name, kind in _FIELD_TYPES.items():
            value = raw.get(name)
            if type(value) is not kind and (value is not None or name in _REQUIRED):
                if name not in raw:
                    raise MalformedMessage(f"envelope lacks field {name!r}")
                raise MalformedMessage(f"envelope field {name!r} must be {kind.__name__}")
        if not raw["type"] or raw["v"] < 1:
            raise MalformedMessage("envelope type must be non-empty and v at least 1")
        sig = raw.get("sig")
        return cls(
            type=raw["type"],
            v=raw["v"],
            id=raw["id"],
            at=raw["at"],
            source=raw["source"],
            body=raw["body"],
            corr=raw.get("corr"),
            causation=raw.get("causation"),
            sig=None if sig is None else Signature.from_json(sig),
            extra={k: v for k, v in raw.items() if k not in _KNOWN},
        )

    @classmethod
    def decode(cls, data: bytes) -> Envelope:
        """Parse wire bytes into an envelope; any defect raises :class:`MalformedMessage`."""
        if len(data) > MAX_MESSAGE_BYTES:
            raise MalformedMessage("message too large", size=len(data))
        try:
            raw = loads_strict(data)
        except (UnicodeDecodeError, ValueError) as exc:
            raise MalformedMessage(f"message is not JSON: {exc}") from exc
        return cls.from_json(raw)
