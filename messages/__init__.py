"""The hsmfleet wire protocol, shared by every party.

- :mod:`messages.envelope`: the envelope and its canonical, signed bytes;
- :mod:`messages.schema`: typed bodies, open-world decoding, upcasters;
- :mod:`messages.signing`: signers, trusted keys, verification;
- :mod:`messages.subjects`: the subjects each message travels on;
- :mod:`messages.errors`: the one error hierarchy.
"""

from messages.envelope import Envelope, Signature
from messages.errors import HsmfleetError, MessageError
from messages.schema import REGISTRY, Body, Registry, message, upcaster
from messages.signing import Ed25519Signer, Signer, TrustedKey, TrustStore

__all__ = [
    "REGISTRY",
    "Body",
    "Ed25519Signer",
    "Envelope",
    "HsmfleetError",
    "MessageError",
    "Registry",
    "Signature",
    "Signer",
    "TrustStore",
    "TrustedKey",
    "message",
    "upcaster",
]
