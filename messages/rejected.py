"""The answer to a refused request: a protocol message every party sends the same way."""

from __future__ import annotations

from dataclasses import dataclass

from messages.schema import Body, message


@message
@dataclass(frozen=True)
class Rejected(Body):
    """The answer to a request that was refused: the error's kind and what was wrong."""

    TYPE = "rejected"
    kind: str
    reason: str

    def __post_init__(self) -> None:
        # A reason may quote the refused message, lone surrogates included; the answer must
        # still have canonical bytes, or the refusal could not be sent at all.
        for name in ("kind", "reason"):
            text = getattr(self, name)
            if not text.isascii():
                object.__setattr__(self, name, text.encode("utf-8", "backslashreplace").decode())
