"""AES-256-GCM as hsmfleet seals with it: a random 12-byte nonce, then ciphertext and tag; and
the keys it derives for one use from a shared secret (HKDF-SHA256, no salt, a label as info).
The vault's answers, released secrets and the client's stored secret, and the HSM backends'
sealed data all take this form."""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from messages.errors import HsmfleetError

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16


class SealedDataError(HsmfleetError):
    """Sealed data is truncated, or does not open under this key and associated data."""

    kind = "sealed_data"


def derive_key(secret: bytes, info: bytes) -> bytes:
    """The 32-byte key for the one use ``info`` names, derived from ``secret``."""
    return HKDF(hashes.SHA256(), KEY_BYTES, salt=None, info=info).derive(secret)


def seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """``plaintext`` sealed under ``key`` and bound to ``aad``: nonce || ciphertext || tag."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def open_sealed(key: bytes, sealed: bytes, aad: bytes) -> bytes:
    """The plaintext :func:`seal` sealed; raises :class:`SealedDataError`."""
    if len(sealed) < NONCE_BYTES + TAG_BYTES:
        raise SealedDataError("sealed data is truncated", bytes=len(sealed))
    try:
        return AESGCM(key).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], aad)
    except (InvalidTag, ValueError):
        raise SealedDataError("sealed data does not open under this key and aad") from None
