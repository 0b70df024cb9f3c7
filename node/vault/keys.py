"""The fleet's vault keys as one member holds them.

``session``: the P-256 key clients seal requests to (HPKE); ``storage``: the AES-256-GCM key that
seals registrations inside replicated records, so acceptors and their disks hold ciphertext only.
Both are fleet keys, the same at every member. The HSM interface (:mod:`node.hsm`) offers no
decryption or key agreement for callers, so these keys live in the member process, loaded from a
key file; they are the part of the vault that should move into the HSM next.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from messages.canonical import b64, unb64
from messages.vault import VaultError

STORAGE_KEY_BYTES = 32


class VaultKeyError(VaultError):
    """The vault key file is missing, malformed, or holds keys of the wrong kind."""

    kind = "vault_keys"


@dataclass(frozen=True)
class VaultKeys:
    """The session private key and the storage key of one fleet."""

    session: ec.EllipticCurvePrivateKey
    storage: bytes

    @classmethod
    def generate(cls) -> VaultKeys:
        return cls(ec.generate_private_key(ec.SECP256R1()), os.urandom(STORAGE_KEY_BYTES))

    @property
    def session_public(self) -> bytes:
        """The session public key, X9.62 uncompressed, as clients receive it."""
        return self.session.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )

    def save(self, path: Path) -> None:
        """Write the keys to ``path``, readable by the owner only."""
        raw = self.session.private_numbers().private_value.to_bytes(32, "big")
        data = json.dumps({"session": b64(raw), "storage": b64(self.storage)}).encode()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(data)

    @classmethod
    def load(cls, path: Path) -> VaultKeys:
        try:
            raw = json.loads(Path(path).read_bytes())
            session = ec.derive_private_key(
                int.from_bytes(unb64(raw["session"]), "big"), ec.SECP256R1()
            )
            storage = unb64(raw["storage"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise VaultKeyError(f"cannot read vault keys: {exc}", path=str(path)) from exc
        if len(storage) != STORAGE_KEY_BYTES:
            raise VaultKeyError("storage key must be 32 bytes", path=str(path))
        return cls(session, storage)
