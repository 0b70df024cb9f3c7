"""Local SoftHSM2 tokens, for development fleets and the PKCS#11 tests.

SoftHSM2 reads its configuration (where tokens live) from ``$SOFTHSM2_CONF`` when the library
initializes; tokens are made with ``softhsm2-util``, a separate process, which is why the PKCS#11
backend starts the library over when it cannot see a token.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from node.hsm.base import HsmError

MODULE = "/usr/lib/softhsm/libsofthsm2.so"
CONF_ENV = "SOFTHSM2_CONF"


def available() -> bool:
    """Whether the SoftHSM2 library and its ``softhsm2-util`` are installed here."""
    return Path(MODULE).exists() and shutil.which("softhsm2-util") is not None


def configure(directory: Path) -> Path:
    """Keep this process's SoftHSM2 tokens under ``directory``; returns the config file."""
    tokens = directory / "tokens"
    tokens.mkdir(parents=True, exist_ok=True)
    conf = directory / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n"
    )
    os.environ[CONF_ENV] = str(conf)
    return conf


def init_token(label: str, pin: str, so_pin: str) -> None:
    """Initialize a fresh token ``label`` in the first free slot."""
    cmd = ["softhsm2-util", "--init-token", "--free", "--label", label]
    result = subprocess.run(
        [*cmd, "--pin", pin, "--so-pin", so_pin], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise HsmError("softhsm2-util could not make a token", label=label, error=result.stderr)
