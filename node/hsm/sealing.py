"""The software HSM's state at rest: one blob sealed with AES-256-GCM, and the operator's key.

Blob layout: ``MAGIC || hsm id (16) || generation (8, big-endian) || key check (8) || nonce (12) ||
AES-GCM(ciphertext || tag)``. Everything before the nonce is associated data, so a blob
authenticates only as the state of the HSM it names at the generation it names: it cannot be
passed off as another HSM's state, nor as another generation of its own (see
:mod:`node.hsm.sealed_state` for the counter that makes an older generation detectable).

The sealing key is HKDF-SHA256 of the operator's key with the HSM id as salt, so one operator key
sealing many HSMs still gives each HSM its own AES key, and the raw operator key is never used
as an AES key. Nonces are random: a state is rewritten only when keys change, far below the 2^32
seals per key that random 96-bit nonces allow. The key check, a hash of the operator key, tells
a wrong operator key from a tampered blob.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from node.hsm.base import HsmStateTampered, OperatorKeyError
from transport.files import write_file

MAGIC = b"hsmfleet-softhsm-v2\n"
KEY_ENV = "HSMFLEET_HSM_KEY"
KEY_BYTES = 32
HSM_ID_BYTES = 16
_GENERATION = 8
_CHECK = 8
_NONCE = 12
_TAG = 16
_AAD = len(MAGIC) + HSM_ID_BYTES + _GENERATION + _CHECK
_HEADER = _AAD + _NONCE
_SEALING_INFO = b"hsmfleet/v1/softhsm-state"


@dataclass(frozen=True)
class Unsealed:
    """An opened blob: whose state it is, which generation, and the state itself."""

    hsm_id: bytes
    generation: int
    plaintext: bytes


def new_operator_key() -> str:
    """A fresh operator sealing key, hex-encoded as key files and the environment hold it."""
    return os.urandom(KEY_BYTES).hex()


def create_operator_key(path: Path) -> None:
    """Write a fresh operator sealing key to a new file ``path`` (mode 0600); raises
    ``FileExistsError`` rather than replace one: a sealing key is never overwritten."""
    write_file(path, new_operator_key().encode() + b"\n", secret=True, replace=False)


def load_operator_key(path: Path | None = None, env: Mapping[str, str] = os.environ) -> bytes:
    """The operator's 32-byte key: hex text in ``path`` if given, else in ``$HSMFLEET_HSM_KEY``."""
    if path is not None:
        try:
            text, where = path.read_text().strip(), str(path)
        except OSError as exc:
            raise OperatorKeyError(f"cannot read the operator key file: {exc}") from exc
    elif KEY_ENV in env:
        text, where = env[KEY_ENV].strip(), KEY_ENV
    else:
        raise OperatorKeyError(f"no operator key: give a key file or set {KEY_ENV}")
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    check_operator_key(key, where)
    return key


def check_operator_key(key: bytes, where: str = "operator key") -> None:
    """Raise :class:`OperatorKeyError` unless ``key`` is an operator key of the right size."""
    if not isinstance(key, bytes) or len(key) != KEY_BYTES:
        raise OperatorKeyError(f"operator key must be {KEY_BYTES} bytes in hex", source=where)


def _key_check(key: bytes) -> bytes:
    return hashlib.sha256(b"hsmfleet/v1/softhsm-key-check\n" + key).digest()[:_CHECK]


def _sealing_key(operator_key: bytes, hsm_id: bytes) -> AESGCM:
    derived = HKDF(hashes.SHA256(), KEY_BYTES, salt=hsm_id, info=_SEALING_INFO).derive(operator_key)
    return AESGCM(derived)


def seal(operator_key: bytes, hsm_id: bytes, generation: int, plaintext: bytes) -> bytes:
    """``plaintext`` sealed as generation ``generation`` of HSM ``hsm_id``, with a fresh nonce."""
    if len(hsm_id) != HSM_ID_BYTES:
        raise ValueError(f"an HSM id is {HSM_ID_BYTES} bytes")
    aad = MAGIC + hsm_id + generation.to_bytes(_GENERATION, "big") + _key_check(operator_key)
    nonce = os.urandom(_NONCE)
    return aad + nonce + _sealing_key(operator_key, hsm_id).encrypt(nonce, plaintext, aad)


def unseal(operator_key: bytes, blob: bytes, where: str = "state") -> Unsealed:
    """Open ``blob``: the HSM it belongs to, its generation and the plaintext.

    Raises :class:`OperatorKeyError` when ``operator_key`` is not the sealing key and
    :class:`HsmStateTampered` when the blob is not intact.
    """
    if len(blob) < _HEADER + _TAG or not blob.startswith(MAGIC):
        raise HsmStateTampered(
            "sealed HSM state is truncated or not a sealed state (of this format version)",
            file=where,
        )
    aad = blob[:_AAD]
    hsm_id = aad[len(MAGIC) : len(MAGIC) + HSM_ID_BYTES]
    generation = int.from_bytes(aad[len(MAGIC) + HSM_ID_BYTES : _AAD - _CHECK], "big")
    if aad[-_CHECK:] != _key_check(operator_key):
        raise OperatorKeyError(
            "the operator key does not match the sealed state (wrong key, or its header altered)",
            file=where,
        )
    try:
        plaintext = _sealing_key(operator_key, hsm_id).decrypt(
            blob[_AAD:_HEADER], blob[_HEADER:], aad
        )
    except InvalidTag:
        raise HsmStateTampered(
            "sealed HSM state fails authentication: the file was altered", file=where
        ) from None
    return Unsealed(hsm_id, generation, plaintext)
