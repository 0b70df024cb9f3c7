"""The software HSM's state at rest: one file sealed with AES-256-GCM under the operator's key.

File layout: ``MAGIC || key check (8) || nonce (12) || AES-GCM(ciphertext || tag)``, with magic and
key check as associated data. The key check tells a wrong operator key from a tampered file.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from node.hsm.base import HsmStateTampered, OperatorKeyError

MAGIC = b"hsmfleet-softhsm-v1\n"
KEY_ENV = "HSMFLEET_HSM_KEY"
KEY_BYTES = 32
_CHECK = 8
_NONCE = 12
_HEADER = len(MAGIC) + _CHECK + _NONCE


def new_operator_key() -> str:
    """A fresh operator sealing key, hex-encoded as key files and the environment hold it."""
    return os.urandom(KEY_BYTES).hex()


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
    if len(key) != KEY_BYTES:
        raise OperatorKeyError(f"operator key must be {KEY_BYTES} bytes in hex", source=where)
    return key


def _key_check(key: bytes) -> bytes:
    return hashlib.sha256(b"hsmfleet/v1/softhsm-key-check\n" + key).digest()[:_CHECK]


def seal(key: bytes, plaintext: bytes) -> bytes:
    """``plaintext`` sealed under ``key`` with a fresh nonce."""
    check, nonce = _key_check(key), os.urandom(_NONCE)
    return MAGIC + check + nonce + AESGCM(key).encrypt(nonce, plaintext, MAGIC + check)


def unseal(key: bytes, blob: bytes, where: str = "state") -> bytes:
    """The plaintext sealed in ``blob``.

    Raises :class:`OperatorKeyError` when ``key`` is not the sealing key and
    :class:`HsmStateTampered` when the file is not intact.
    """
    if len(blob) < _HEADER + 16 or not blob.startswith(MAGIC):
        raise HsmStateTampered("sealed HSM state is truncated or not a sealed state", file=where)
    check = blob[len(MAGIC) : len(MAGIC) + _CHECK]
    nonce = blob[len(MAGIC) + _CHECK : _HEADER]
    if check != _key_check(key):
        raise OperatorKeyError(
            "the operator key does not match the sealed state (wrong key, or its header altered)",
            file=where,
        )
    try:
        return AESGCM(key).decrypt(nonce, blob[_HEADER:], MAGIC + check)
    except InvalidTag:
        raise HsmStateTampered(
            "sealed HSM state fails authentication: the file was altered", file=where
        ) from None


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so a crash leaves either the old file or the new one."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
