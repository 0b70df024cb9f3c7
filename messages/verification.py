"""The root of a verifier's refusals, apart from :mod:`messages.verify` so that the documents a
verifier walks (key rotations) can raise refusals of their own without an import cycle."""

from __future__ import annotations

from messages.errors import HsmfleetError


class VerificationError(HsmfleetError):
    """A validation bundle (or a notice it rests on) was refused; ``kind`` says which check
    failed."""

    kind = "verification"
