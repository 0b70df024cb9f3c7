"""The measurement of the node software: one hash over the files of the installed packages.

Every file under ``node/`` and ``messages/`` (bytecode caches aside) counts, in sorted order,
each with its path relative to the install root, so a changed, added, removed or renamed file
changes the measurement. The orchestrator admits only measurements on its allow-list.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

MEASURED_PACKAGES = ("messages", "node")
PREFIX = "sha256:"
INSTALL_ROOT = Path(__file__).resolve().parent.parent


def measured_files(root: Path = INSTALL_ROOT) -> list[Path]:
    """The files a measurement covers, as paths relative to ``root``, sorted."""
    files = []
    for package in MEASURED_PACKAGES:
        for path in (root / package).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                files.append(path.relative_to(root))
    return sorted(files, key=lambda p: p.as_posix())


def measure(root: Path = INSTALL_ROOT) -> str:
    """``sha256:<hex>`` over each measured file's relative path and content digest."""
    outer = hashlib.sha256(b"hsmfleet/v1/measurement\n")
    for rel in measured_files(root):
        name = rel.as_posix().encode()
        content = hashlib.sha256((root / rel).read_bytes()).digest()
        outer.update(len(name).to_bytes(4, "big") + name + content)
    return PREFIX + outer.hexdigest()
