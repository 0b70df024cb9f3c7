"""HSM backends: one interface (:class:`Hsm`), a software HSM and a PKCS#11 backend."""

from node.hsm.base import (
    BadCertificate,
    Hsm,
    HsmError,
    HsmLoginFailed,
    HsmSigner,
    HsmStateConflict,
    HsmStateRolledBack,
    HsmStateTampered,
    HsmUnavailable,
    KeyExists,
    KeyNotFound,
    NotWrappable,
    OperatorKeyError,
    PublicKey,
    UnsupportedAlgorithm,
    UnwrapFailed,
    WrappedKey,
)
from node.hsm.soft import SoftHsm

__all__ = [
    "BadCertificate",
    "Hsm",
    "HsmError",
    "HsmLoginFailed",
    "HsmSigner",
    "HsmStateConflict",
    "HsmStateRolledBack",
    "HsmStateTampered",
    "HsmUnavailable",
    "KeyExists",
    "KeyNotFound",
    "NotWrappable",
    "OperatorKeyError",
    "PublicKey",
    "SoftHsm",
    "UnsupportedAlgorithm",
    "UnwrapFailed",
    "WrappedKey",
]
