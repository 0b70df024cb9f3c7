"""A cosigner's key files through a key rotation.

``<state>/key`` holds the Ed25519 seed in force (written by ``init``). A rotation first writes
the new key to ``<state>/key.next`` (mode 0600, fsynced, reused if a crashed rotation left it),
logs the rotation statement signed by both keys, then moves ``key.next`` over ``key``: the old
seed is gone, and its signatures stay good for the log up to the rotation. The log says which
key is in force, so a crash between logging and the move is finished when the cosigner opens
(:func:`settle`), and a ``key.next`` the log never adopted is kept for the next attempt.
``<state>/key.version`` says the version of the key in force (absent: 1), for its pin.
"""

from __future__ import annotations

import os
from pathlib import Path

from cosigner.config import KEY_FILE, ConfigError, load_key
from messages.signing import Ed25519Signer

NEXT_FILE = "key.next"
VERSION_FILE = "key.version"


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def next_key(state: Path) -> Ed25519Signer:
    """The key a rotation moves to: ``key.next``, created (from a fresh random seed) if absent."""
    path = Path(state) / NEXT_FILE
    if not path.exists():
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as f:
                f.write(os.urandom(32).hex() + "\n")
                f.flush()
                os.fsync(f.fileno())
            _fsync_directory(path.parent)
    return _load(path)


def _load(path: Path) -> Ed25519Signer:
    """The key in ``path``, checked as :func:`cosigner.config.load_key` checks ``key``."""
    try:
        seed = bytes.fromhex(path.read_text().strip())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the cosigner key: {exc}", path=str(path)) from None
    if len(seed) != 32:
        raise ConfigError("the cosigner key must be 32 bytes of hex", path=str(path))
    return Ed25519Signer.from_seed(seed)


def available_keys(state: Path) -> list[Ed25519Signer]:
    """The private keys the cosigner holds: the one in force first, then ``key.next`` if any."""
    keys = [load_key(state)]
    if (Path(state) / NEXT_FILE).exists():
        keys.append(_load(Path(state) / NEXT_FILE))
    return keys


def settle(state: Path, current: bytes) -> None:
    """Make ``key`` hold the key whose public half is ``current`` (the one the log says is in
    force): move ``key.next`` over it after a logged rotation; otherwise leave things be."""
    state = Path(state)
    if load_key(state).public_key == current:
        return
    nxt = state / NEXT_FILE
    if nxt.exists() and _load(nxt).public_key == current:
        nxt.replace(state / KEY_FILE)
        _fsync_directory(state)
        return
    raise ConfigError("the cosigner holds no private key for the key its log says is in force")


def key_version(state: Path) -> int:
    """The version of the key in force, as last recorded (1 if never rotated)."""
    path = Path(state) / VERSION_FILE
    try:
        return int(path.read_text().strip()) if path.exists() else 1
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the key version: {exc}", path=str(path)) from None


def record_version(state: Path, version: int) -> None:
    """Record the version of the key in force (what the log says), if it changed."""
    if key_version(state) == version:
        return
    path = Path(state) / VERSION_FILE
    tmp = path.with_name(VERSION_FILE + ".tmp")
    tmp.write_text(f"{version}\n")
    tmp.replace(path)
