"""The files a party keeps: every one written whole or not at all, key files private and never
overwritten. One writer for all of them, so a crash, a concurrent reader or a second start
never sees a half-written key, configuration or state."""

from __future__ import annotations

import os
from pathlib import Path


def write_file(path: Path, data: bytes, *, secret: bool = False, replace: bool = True) -> None:
    """Put ``data`` at ``path`` whole or not at all.

    The bytes go to a file beside ``path`` (mode 0600 when ``secret``), are fsynced, and then
    take its place: renamed over whatever is there when ``replace``, else linked in as a new
    file, raising ``FileExistsError`` if one exists (a key is never overwritten). The directory
    is fsynced last, so the new name survives a crash too.
    """
    path = Path(path)
    aside = path.with_name(f".{path.name}.{os.urandom(6).hex()}")
    fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if secret else 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(aside, path)
        else:
            os.link(aside, path)
    finally:
        aside.unlink(missing_ok=True)
    fsync_directory(path.parent)


def write_seed(path: Path, seed: bytes) -> None:
    """Create the key file ``path`` holding ``seed`` as hex (mode 0600); ``FileExistsError``
    if one is there: a key file is never overwritten."""
    write_file(path, seed.hex().encode() + b"\n", secret=True, replace=False)


def fsync_directory(path: Path) -> None:
    """Make the entries of directory ``path`` (a file created, renamed) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
