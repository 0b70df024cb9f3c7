"""The hsmfleet wire protocol, shared by every party.

- :mod:`messages.envelope`: the envelope and its canonical, signed bytes;
- :mod:`messages.schema`: typed bodies, open-world decoding, upcasters;
- :mod:`messages.signing`: signers, trusted keys, verification;
- :mod:`messages.gate`: the checks every inbound message passes;
- :mod:`messages.subjects`: NATS subjects; :mod:`messages.bus`: sending and serving over NATS;
- :mod:`messages.errors`: the one error hierarchy.
"""

from messages.envelope import Envelope, Signature
from messages.errors import HsmfleetError, MessageError
from messages.gate import Gate, Received
from messages.outbox import Outbox
from messages.schema import REGISTRY, Body, Registry, message, upcaster
from messages.signing import Ed25519Signer, Signer, TrustedKey, TrustStore

__all__ = [
    "REGISTRY",
    "Body",
    "Ed25519Signer",
    "Envelope",
    "Gate",
    "HsmfleetError",
    "MessageError",
    "Outbox",
    "Received",
    "Registry",
    "Signature",
    "Signer",
    "TrustStore",
    "TrustedKey",
    "message",
    "upcaster",
]
