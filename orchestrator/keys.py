"""The orchestrator's log-signing key on disk, and the trust an auditor pins for it.

A key file holds the 32-byte Ed25519 seed in hex; a public key file holds the 32-byte public
key in hex. Auditors replaying a log trust only the public key they were given.
"""

from __future__ import annotations

import os
from pathlib import Path

from messages.errors import HsmfleetError
from messages.signing import ED25519, Ed25519Signer, TrustedKey, TrustStore
from orchestrator.log import ROLE, SOURCE


class KeyFileError(HsmfleetError):
    """A key file is missing, unreadable or not 32 bytes of hex."""

    kind = "key_file"


def _read_hex32(path: Path, what: str) -> bytes:
    try:
        value = bytes.fromhex(Path(path).read_text().strip())
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"cannot read the {what}: {exc}", path=str(path)) from None
    if len(value) != 32:
        raise KeyFileError(f"the {what} must be 32 bytes of hex", path=str(path))
    return value


def load_signer(path: Path) -> Ed25519Signer:
    """The orchestrator's signing key from its seed file."""
    return Ed25519Signer.from_seed(_read_hex32(path, "signing key"))


def load_trust(path: Path) -> TrustStore:
    """A trust store holding the orchestrator's public key from ``path``, for its role."""
    key = TrustedKey(SOURCE, ED25519, _read_hex32(path, "public key"), frozenset({ROLE}))
    return TrustStore([key])


def trust_for(signer: Ed25519Signer) -> TrustStore:
    """A trust store holding ``signer``'s public key for the orchestrator's role."""
    store = TrustStore()
    store.trust(SOURCE, signer, ROLE)
    return store


def generate(key_path: Path, public_path: Path) -> Ed25519Signer:
    """Create a new signing key (file mode 0600) and its public key file."""
    seed = os.urandom(32)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(seed.hex() + "\n")
    signer = Ed25519Signer.from_seed(seed)
    Path(public_path).write_text(signer.public_key.hex() + "\n")
    return signer
