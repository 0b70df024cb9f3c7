"""One error root for everything hsmfleet rejects.

Every error names what was wrong in its message and carries a short, stable ``kind`` that
metrics count rejects by. Handlers never see a message that raised one of these.
"""

from __future__ import annotations


class HsmfleetError(Exception):
    """Root of every error hsmfleet raises on purpose."""

    kind = "error"

    def __init__(self, message: str, **detail: object) -> None:
        super().__init__(message)
        self.detail = detail

    def __str__(self) -> str:
        base = super().__str__()
        if not self.detail:
            return base
        extra = ", ".join(f"{k}={v!r}" for k, v in sorted(self.detail.items()))
        return f"{base} ({extra})"


class MessageError(HsmfleetError):
    """A message was refused before it reached a handler."""

    kind = "message"


class MalformedMessage(MessageError):
    """The bytes are not a well-formed envelope: not JSON, not an object, a missing field."""

    kind = "malformed"


class UnknownMessageType(MessageError):
    """No schema is registered for the envelope's ``type``."""

    kind = "unknown_type"


class UnsupportedVersion(MessageError):
    """The envelope's ``v`` is newer than this build knows, or no upcaster chain reaches it."""

    kind = "unsupported_version"


class SchemaViolation(MessageError):
    """The body does not fit the schema of its type and version."""

    kind = "schema"


class MissingSignature(MessageError):
    """A message that must be signed carries no ``sig``."""

    kind = "unsigned"


class UnknownSigner(MessageError):
    """The signature names a key that the receiver does not trust for this role."""

    kind = "unknown_signer"


class BadSignature(MessageError):
    """The signature does not verify over the message's canonical bytes."""

    kind = "bad_signature"


class ReplayedMessage(MessageError):
    """The message id was already accepted inside the replay window."""

    kind = "replayed"


class StaleMessage(MessageError):
    """The message's ``at`` lies outside the accepted window around the receiver's clock."""

    kind = "stale"


class BadSubject(HsmfleetError):
    """A subject token is empty or holds characters NATS gives meaning to."""

    kind = "bad_subject"


class CanonicalizationError(HsmfleetError):
    """A value cannot be canonicalized (RFC 8785): floats out of range, non-string keys, bytes."""

    kind = "canonical"
