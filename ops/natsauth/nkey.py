"""User nkeys: Ed25519 key pairs in the NATS encoding, made with the ``nkeys`` package.

A seed (``SU...``) is what a client keeps secret and signs the server's nonce with; the public
key (``U...``) is what the server configuration names. Both are base32 of a prefix byte, the key
bytes and a CRC-16 (the ``nkeys`` package implements the encoding).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import nkeys


@dataclass(frozen=True, repr=False)
class UserKey:
    """A user's seed (secret) and public key, both as ASCII text."""

    seed: str
    public: str

    def __repr__(self) -> str:
        return f"UserKey(public={self.public!r})"


def user_key(entropy: Callable[[int], bytes] = os.urandom) -> UserKey:
    """A new user nkey from 32 bytes of ``entropy``."""
    seed = nkeys.encode_seed(entropy(32), nkeys.PREFIX_BYTE_USER)
    pair = nkeys.from_seed(bytearray(seed))
    try:
        return UserKey(seed=seed.decode(), public=pair.public_key.decode())
    finally:
        pair.wipe()
