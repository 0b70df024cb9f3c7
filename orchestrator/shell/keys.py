"""The orchestrator's keys: its log-signing key on disk, the trust an auditor pins for it, and
the operator's countersigning key inside a software HSM.

A key file holds the 32-byte Ed25519 seed in hex; a public key file holds the 32-byte public
key in hex. Auditors replaying a log trust only the public key they were given. The
countersigning key never leaves its HSM: the orchestrator signs through ``hsm.signer(label)``.

The countersigning key rotates (:mod:`orchestrator.shell.signer_rotation`): version 1 has the
configured label (``operator_key_label``), version ``n`` the label ``<label>.v<n>``. The key in
force is the one the last logged operator rotation moved to: the chain of logged signer-key
rotation notices is kept beside the orchestrator's key file (:func:`rotation_chain_path`), and
it is what validation bundles carry (:func:`messages.validation.with_rotations`).
"""

from __future__ import annotations

import os
from pathlib import Path

from messages.canonical import canonical
from messages.documents import DocumentError, load_json
from messages.errors import HsmfleetError, MessageError
from messages.origin import OPERATOR
from messages.rotation import KeyRotation
from messages.signing import ED25519, Ed25519Signer, TrustedKey, TrustStore
from messages.validation import LoggedNotice
from node.hsm.base import HsmSigner, KeyNotFound
from node.hsm.sealing import load_operator_key
from node.hsm.soft import SoftHsm
from orchestrator.shell.config import Settings
from orchestrator.shell.log import ROLE, SOURCE
from transport.files import write_file, write_seed


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
    write_seed(key_path, seed)
    signer = Ed25519Signer.from_seed(seed)
    Path(public_path).write_text(signer.public_key.hex() + "\n")
    return signer


def operator_hsm(settings: Settings) -> SoftHsm | None:
    """The software HSM holding the operator's countersigning key, if one is configured."""
    if settings.operator_hsm is None:
        return None
    return SoftHsm(settings.operator_hsm, load_operator_key(settings.operator_hsm_key))


def make_operator_key(settings: Settings) -> HsmSigner:
    """The countersigning key in the operator's HSM, made there (Ed25519) if it is not yet."""
    hsm = operator_hsm(settings)
    if hsm is None:
        raise KeyFileError("the configuration names no operator_hsm")
    hsm.ensure(settings.operator_key_label, ED25519)
    return hsm.signer(settings.operator_key_label)


def operator_signer(settings: Settings) -> HsmSigner | None:
    """A signer over the countersigning key in force in the operator's HSM (None: none
    configured): the configured one, or the one the last logged rotation moved to."""
    hsm = operator_hsm(settings)
    if hsm is None:
        return None
    label = operator_label(settings, operator_version(load_rotation_chain(settings)))
    try:
        return hsm.signer(label)
    except KeyNotFound:
        raise KeyFileError(
            "the operator HSM holds no countersigning key: run hsmfleet orchestrator operator-key",
            label=label,
        ) from None


def operator_label(settings: Settings, version: int) -> str:
    """The HSM label of countersigning key ``version``."""
    base = settings.operator_key_label
    return base if version == 1 else f"{base}.v{version}"


def rotation_chain_path(settings: Settings) -> Path:
    """Where the logged signer-key rotation notices are kept: beside the orchestrator's key."""
    return settings.key_file.with_name("signer-rotations.json")


def load_rotation_chain(settings: Settings) -> list[LoggedNotice]:
    """The logged signer-key rotation notices (operator and cosigners), in logged order."""
    path = rotation_chain_path(settings)
    if not path.exists():
        return []
    try:
        raw = load_json(path.read_bytes())
        if not isinstance(raw, list):
            raise KeyFileError("the rotation chain must be a list", path=str(path))
        chain = [LoggedNotice.from_json(item) for item in raw]
    except (OSError, DocumentError, MessageError) as exc:
        raise KeyFileError(f"cannot read the rotation chain: {exc}", path=str(path)) from None
    if not all(isinstance(n.logged, KeyRotation) for n in chain):
        raise KeyFileError("the rotation chain holds something else", path=str(path))
    return chain


def save_rotation_chain(settings: Settings, chain: list[LoggedNotice]) -> None:
    """Write the chain whole or not at all."""
    write_file(rotation_chain_path(settings), canonical([n.to_json() for n in chain]) + b"\n")


def operator_version(chain: list[LoggedNotice]) -> int:
    """The version of the countersigning key in force: 1, or the last operator rotation's."""
    versions = [n.logged.version for n in chain if n.logged.signer == OPERATOR]
    return max(versions, default=1)
