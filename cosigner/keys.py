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

import contextlib
import os
from pathlib import Path

from cosigner.config import KEY_FILE, ConfigError, load_key
from messages.signing import Ed25519Signer
from transport.files import fsync_directory, write_file, write_seed

NEXT_FILE = "key.next"
VERSION_FILE = "key.version"


def next_key(state: Path) -> Ed25519Signer:
    """The key a rotation moves to: ``key.next``, created (from a fresh random seed) if absent."""
    path = Path(state) / NEXT_FILE
    if not path.exists():
        with contextlib.suppress(FileExistsError):
            write_seed(path, os.urandom(32))
    return load_key(state, NEXT_FILE)


def available_keys(state: Path) -> list[Ed25519Signer]:
    """The private keys the cosigner holds: the one in force first, then ``key.next`` if any."""
    keys = [load_key(state)]
    if (Path(state) / NEXT_FILE).exists():
        keys.append(load_key(state, NEXT_FILE))
    return keys


def settle(state: Path, current: bytes) -> None:
    """Make ``key`` hold the key whose public half is ``current`` (the one the log says is in
    force): move ``key.next`` over it after a logged rotation; otherwise leave things be."""
    state = Path(state)
    if load_key(state).public_key == current:
        return
    nxt = state / NEXT_FILE
    if nxt.exists() and load_key(state, NEXT_FILE).public_key == current:
        nxt.replace(state / KEY_FILE)
        fsync_directory(state)
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
    write_file(Path(state) / VERSION_FILE, f"{version}\n".encode())
