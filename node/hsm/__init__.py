"""HSM backends: one interface (:class:`Hsm`), a software HSM and a PKCS#11 backend; and the
device boundary that holds one in a process of its own (:mod:`node.hsm.device`)."""

from node.hsm.base import (
    BadCertificate,
    BadPublicKey,
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
    UnsealFailed,
    UnsupportedAlgorithm,
    UnwrapFailed,
    WrappedKey,
)
from node.hsm.soft import SoftHsm

__all__ = [
    "BadCertificate",
    "BadPublicKey",
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
    "UnsealFailed",
    "UnsupportedAlgorithm",
    "UnwrapFailed",
    "WrappedKey",
]
