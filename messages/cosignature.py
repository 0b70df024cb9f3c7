"""C2SP checkpoint cosignatures (c2sp.org/tlog-cosignature v1, Ed25519): a witness's statement
that, at a given time, the checkpoint is the largest consistent tree head it has seen of the log.

A cosignature is a signature line of signed-note type ``0x04`` on the checkpoint note::

    key_id    = SHA-256(name || 0x0A || 0x04 || 32-byte Ed25519 public key)[:4]
    signature = key_id || u64_be(timestamp) || Ed25519(message)        ; 4 + 8 + 64 bytes
    message   = "cosignature/v1\\n" "time " decimal(timestamp) "\\n" || checkpoint note text

The timestamp is POSIX seconds, at most 2**63 - 1, written in the message without leading zeros.
The message covers the whole checkpoint text, extension lines included. The cosigner's name is
not signed, so one Ed25519 key serves one cosigner name only.

A witness's known key is a :class:`CosignatureVerifier` (vkey type ``0x04``); pass it among the
witnesses of :func:`messages.checkpoint.open_checkpoint`, then read the verified cosignatures
with :func:`cosignatures`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from messages.checkpoint import Checkpoint, SignedCheckpoint
from messages.errors import HsmfleetError
from messages.note import (
    Ed25519Key,
    NoteSignature,
    NoteVerifier,
    require_ed25519,
)
from messages.signing import ED25519, Signer, verify_bytes

SIG_COSIGNATURE_V1 = 0x04
MAX_TIMESTAMP = 2**63 - 1
TIMESTAMP_SIZE = 8
SIGNATURE_SIZE = 64


class MalformedCosignature(HsmfleetError):
    """A cosignature is not a timestamp and an Ed25519 signature, or its time is out of range."""

    kind = "malformed_cosignature"


def _check_timestamp(timestamp: object) -> None:
    if isinstance(timestamp, bool) or not isinstance(timestamp, int):
        raise MalformedCosignature("timestamp must be an integer", timestamp=timestamp)
    if not 0 <= timestamp <= MAX_TIMESTAMP:
        raise MalformedCosignature("timestamp must be in [0, 2**63 - 1]", timestamp=timestamp)


def cosigned_message(text: str, timestamp: int) -> bytes:
    """The bytes a cosigner signs: header line, time line, then the checkpoint text."""
    _check_timestamp(timestamp)
    return f"cosignature/v1\ntime {timestamp}\n{text}".encode()


@dataclass(frozen=True)
class Cosignature:
    """A parsed cosignature: who (name and key ID), when, and the Ed25519 signature."""

    name: str
    key_id: bytes
    timestamp: int
    signature: bytes

    def __post_init__(self) -> None:
        _check_timestamp(self.timestamp)
        if len(self.signature) != SIGNATURE_SIZE:
            raise MalformedCosignature("Ed25519 signature must be 64 bytes")

    @classmethod
    def from_note_signature(cls, line: NoteSignature) -> Cosignature:
        """Split a type-``0x04`` signature line into its timestamp and signature."""
        raw = line.signature
        if len(raw) != TIMESTAMP_SIZE + SIGNATURE_SIZE:
            raise MalformedCosignature(
                "cosignature must be an 8-byte timestamp and a 64-byte signature",
                name=line.name,
                length=len(raw),
            )
        timestamp = int.from_bytes(raw[:TIMESTAMP_SIZE], "big")
        return cls(line.name, line.key_id, timestamp, raw[TIMESTAMP_SIZE:])

    def note_signature(self) -> NoteSignature:
        """The signature line carrying this cosignature."""
        stamp = self.timestamp.to_bytes(TIMESTAMP_SIZE, "big")
        return NoteSignature(self.name, self.key_id, stamp + self.signature)


@dataclass(frozen=True)
class CosignatureVerifier(Ed25519Key):
    """A witness's known key (vkey type ``0x04``); a :class:`messages.note.NoteVerifier`."""

    SIG_TYPE = SIG_COSIGNATURE_V1

    def verify(self, text: bytes, signature: bytes) -> bool:
        """True when ``signature`` is a well-formed cosignature of ``text`` by this key."""
        try:
            parsed = Cosignature.from_note_signature(
                NoteSignature(self.name, self.key_id, signature)
            )
            message = cosigned_message(text.decode(), parsed.timestamp)
        except (MalformedCosignature, UnicodeDecodeError):
            return False
        return verify_bytes(ED25519, self.public_key, parsed.signature, message)


class CosignatureSigner:
    """Cosigns checkpoints as witness ``name`` with an Ed25519 :class:`~messages.signing.Signer`.

    The caller supplies the time, so the signer reads no clock.
    """

    def __init__(self, name: str, key: Signer) -> None:
        require_ed25519(name, key)
        self.name = name
        self._key = key
        self.verifier = CosignatureVerifier(name, key.public_key)

    def cosign(self, checkpoint: Checkpoint, timestamp: int) -> NoteSignature:
        """The signature line cosigning ``checkpoint`` at POSIX time ``timestamp``."""
        signature = self._key.sign(cosigned_message(checkpoint.text(), timestamp))
        return Cosignature(self.name, self.verifier.key_id, timestamp, signature).note_signature()


def cosignatures(
    signed: SignedCheckpoint, witnesses: Iterable[NoteVerifier]
) -> tuple[Cosignature, ...]:
    """The cosignatures on ``signed`` that verified under one of ``witnesses``' keys.

    ``signed`` must come from :func:`messages.checkpoint.open_checkpoint` with these witnesses
    among its verifiers; a witness that did not sign is simply absent from the result.
    """
    chosen = {(w.name, w.key_id) for w in witnesses}
    return tuple(
        Cosignature.from_note_signature(line)
        for line in signed.note.verified
        if (line.name, line.key_id) in chosen
    )
