"""OPAQUE server setups (``opaque-ke``, ristretto255), as HSM keys: made, checked, described.

A setup is 128 bytes (OPRF seed, server key pair and more); its public half is the server's
32-byte public key. The ``opaque_ke_py`` binding's ``get_public_key()`` returns the whole setup,
private keys included, so it is never called: the public key is read from the answer to a
registration with a throwaway client instead, where the server's public key sits after the
evaluated element.
"""

from __future__ import annotations

import opaque_ke_py

from messages.vault import SERVER_KEY

SETUP_BYTES = 128
_CHECK_CREDENTIAL = b"hsmfleet/key-check"


def new_setup() -> bytes:
    """A fresh server setup's bytes."""
    return bytes(opaque_ke_py.server_setup().to_bytes())


def setup_public(setup: bytes) -> bytes:
    """The server public key of ``setup``; raises ``ValueError`` if it is not a setup."""
    if len(setup) != SETUP_BYTES:
        raise ValueError(f"an OPAQUE setup is {SETUP_BYTES} bytes, not {len(setup)}")
    loaded = opaque_ke_py.ServerSetupData.from_bytes(setup)
    request = opaque_ke_py.client_registration_start(b"x").get_message()
    answer = opaque_ke_py.server_registration_start(loaded, request, _CHECK_CREDENTIAL)
    return bytes(answer.get_message()[SERVER_KEY])
