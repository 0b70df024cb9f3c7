"""The orchestrator keys a node trusts, pinned in a file the operator hands it.

The file is JSON: one object or a list of objects ``{"owner", "alg", "public_key"}`` with the
public key in base64 (raw Ed25519, or an X9.62 uncompressed P-256 point). ``owner`` is the
``source`` the orchestrator puts on its messages.
"""

from __future__ import annotations

import json
from pathlib import Path

from messages.canonical import b64, unb64
from messages.errors import HsmfleetError
from messages.signing import ALGORITHMS, Signer, TrustedKey, TrustStore

ORCHESTRATOR_ROLE = "orchestrator"


class PinError(HsmfleetError):
    """The pinned-keys file is missing or malformed."""

    kind = "pins"


def write_pin(path: Path, owner: str, signer: Signer) -> None:
    """Pin ``signer``'s public key as the orchestrator ``owner``'s, in ``path``."""
    pin = {"owner": owner, "alg": signer.alg, "public_key": b64(signer.public_key)}
    path.write_text(json.dumps([pin], indent=2) + "\n")


def read_pins(path: Path) -> TrustStore:
    """A trust store holding the orchestrator keys pinned in ``path``."""
    try:
        raw = json.loads(path.read_text())
        entries = raw if isinstance(raw, list) else [raw]
        keys = [
            TrustedKey(
                owner=e["owner"],
                alg=e["alg"],
                public_key=unb64(e["public_key"]),
                roles=frozenset({ORCHESTRATOR_ROLE}),
            )
            for e in entries
        ]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PinError(f"cannot read pinned orchestrator keys: {exc}", file=str(path)) from exc
    if not keys or any(k.alg not in ALGORITHMS or not isinstance(k.owner, str) for k in keys):
        raise PinError("pinned orchestrator keys are empty or of unknown algorithm", file=str(path))
    return TrustStore(keys)
