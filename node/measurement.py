"""The measurement of the node software: one hash over the files of the installed distribution.

The node process runs more than ``node/``: the ``hsmfleet`` entry point is ``ops.cli``, which
imports every part's verbs. So every file of every package of the distribution counts (bytecode
caches aside), in sorted order, each with its path relative to the install root: a changed,
added, removed or renamed file changes the measurement. A sourceless ``.pyc`` beside the sources
counts too, since Python imports it. A symbolic link or other non-regular file makes the tree
unmeasurable (a linked directory would be importable without being walked), and the node refuses
to measure it.

What a measurement proves: which files were installed when the node started, as the node's own
host reports them. It catches an install that drifted from the allow-listed release. It does not
stop a host that runs other code and reports the allow-listed measurement (the software HSM's
device key is in that host's memory; a PKCS#11 token signs what the host asks), nor bytecode
planted in ``__pycache__`` with a matching source timestamp; measuring what actually runs needs a
measured boot or an enclave.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from messages.errors import HsmfleetError

# The distribution's top-level packages, as pyproject.toml's package list names them.
MEASURED_PACKAGES = ("cosigner", "messages", "node", "ops", "orchestrator")
PREFIX = "sha256:"
INSTALL_ROOT = Path(__file__).resolve().parent.parent
_CACHE = "__pycache__"


class UnmeasurableInstall(HsmfleetError):
    """The installed software holds a file that cannot be measured faithfully."""

    kind = "unmeasurable_install"


def measured_files(root: Path = INSTALL_ROOT) -> list[Path]:
    """The files a measurement covers, as paths relative to ``root``, sorted.

    Raises :class:`UnmeasurableInstall` for a symbolic link or a non-regular file in a package.
    """
    files = []
    for package in MEASURED_PACKAGES:
        for directory, subdirs, names in os.walk(root / package, onerror=_raise):
            subdirs[:] = [d for d in subdirs if d != _CACHE]
            for name in subdirs + names:
                path = Path(directory) / name
                mode = path.lstat().st_mode
                if stat.S_ISLNK(mode) or not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
                    raise UnmeasurableInstall(
                        "a package holds a symbolic link or a special file",
                        path=str(path.relative_to(root)),
                    )
                if stat.S_ISREG(mode):
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


def _raise(exc: OSError) -> None:
    raise UnmeasurableInstall(f"cannot read the installed software: {exc}") from exc
