"""The interface every HSM backend offers: keys are made and kept inside, addressed by label.

No method meant for callers outside the HSM returns private key material. A key leaves a backend
only wrapped to another HSM's transport key (:meth:`Hsm.wrap`), and only if it was generated as
``wrappable``. The device-internal primitives (:meth:`Hsm.ecdh`, :meth:`Hsm.seal`,
:meth:`Hsm.unseal`, :meth:`Hsm.secret`, :meth:`Hsm.open_hpke`) are for applets that run inside
the device process (:mod:`node.hsm.device`), which never offers them over its socket.

Key kinds: Ed25519 and ECDSA P-256 signing keys, ECDH P-256 transport keys, AES-256-GCM keys
(:data:`AES256_GCM`) and OPAQUE server setups (:data:`OPAQUE_SETUP`, ristretto255).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from messages.errors import HsmfleetError
from messages.signing import ECDH_P256, ECDSA_P256, ED25519, key_id

if TYPE_CHECKING:
    from messages.attestation import Attestation

AES256_GCM = "aes256-gcm"
"""A symmetric AEAD key; its public half is a key check value that reveals nothing of it."""
OPAQUE_SETUP = "opaque-ristretto255"
"""An OPAQUE server setup (the ``opaque-ke`` ristretto255 suite); its public half is the
server's public key."""
SIGNING_ALGORITHMS = (ED25519, ECDSA_P256)
AGREEMENT_ALGORITHMS = (ECDH_P256,)
SECRET_ALGORITHMS = (AES256_GCM, OPAQUE_SETUP)
KEY_ALGORITHMS = SIGNING_ALGORITHMS + AGREEMENT_ALGORITHMS + SECRET_ALGORITHMS


class HsmError(HsmfleetError):
    """An HSM backend refused or failed an operation."""

    kind = "hsm"


class KeyNotFound(HsmError):
    """No key has this label."""

    kind = "hsm_key_not_found"


class KeyExists(HsmError):
    """A key with this label exists already; labels are never reused silently."""

    kind = "hsm_key_exists"


class UnsupportedAlgorithm(HsmError):
    """The backend (or this token) cannot make or use keys of this algorithm for this use."""

    kind = "hsm_unsupported_algorithm"


class NotWrappable(HsmError):
    """The key was generated to never leave the HSM, even wrapped."""

    kind = "hsm_not_wrappable"


class UnwrapFailed(HsmError):
    """A wrapped key does not open under this transport key and context, or is not the key it
    claims."""

    kind = "hsm_unwrap_failed"


class UnsealFailed(HsmError):
    """Sealed data does not open: altered, truncated, or sealed under another key, for another
    context or other associated data."""

    kind = "hsm_unseal_failed"


class BadPublicKey(HsmError):
    """A public key given to the HSM (a recipient, a peer) is not a valid P-256 point."""

    kind = "hsm_bad_public_key"


class HsmStateTampered(HsmError):
    """The software HSM's sealed state does not authenticate: it was altered or truncated."""

    kind = "hsm_state_tampered"


class HsmStateRolledBack(HsmStateTampered):
    """The sealed state is intact but older than the last one this HSM wrote: a replaced file."""

    kind = "hsm_state_rolled_back"


class HsmStateConflict(HsmError):
    """Another process (or another handle in this one) wrote the state since this one read it."""

    kind = "hsm_state_conflict"


class OperatorKeyError(HsmError):
    """The operator's sealing key is missing, malformed, or not the state's sealing key."""

    kind = "hsm_operator_key"


class HsmLoginFailed(HsmError):
    """The token refused the PIN."""

    kind = "hsm_login"


class BadCertificate(HsmError):
    """What was to be kept as a certificate is not a DER X.509 certificate."""

    kind = "hsm_bad_certificate"


class HsmUnavailable(HsmError):
    """The HSM cannot be reached, even after logging in again."""

    kind = "hsm_unavailable"


@dataclass(frozen=True)
class PublicKey:
    """The public half of a key inside an HSM.

    Ed25519 keys are 32 raw bytes; P-256 keys (ECDSA and ECDH) X9.62 uncompressed points; an
    AES-256-GCM key its 32-byte key check value (HMAC-SHA256 of a fixed text under the key); an
    OPAQUE setup its 32-byte server public key.
    """

    label: str
    alg: str
    public_key: bytes

    @property
    def kid(self) -> str:
        return key_id(self.alg, self.public_key)


@dataclass(frozen=True)
class WrappedKey:
    """A key sealed to one HSM's ECDH P-256 transport key (see :mod:`node.hsm.keys`).

    HPKE (RFC 9180) base mode: ``ephemeral`` is the encapsulated key (``enc``, a P-256 point),
    ``ciphertext`` the sealed key material, opened only with the transport key and the context
    the key was wrapped for.
    """

    alg: str
    public_key: bytes
    ephemeral: bytes
    ciphertext: bytes


class HsmSigner:
    """A :class:`messages.signing.Signer` whose private key stays in an HSM."""

    def __init__(self, hsm: Hsm, key: PublicKey) -> None:
        if key.alg not in SIGNING_ALGORITHMS:
            raise UnsupportedAlgorithm("key cannot sign", label=key.label, alg=key.alg)
        self._hsm = hsm
        self.blocking = hsm.blocking
        self.label = key.label
        self.alg = key.alg
        self.public_key = key.public_key
        self.kid = key.kid

    def sign(self, data: bytes) -> bytes:
        return self._hsm.sign(self.label, data)


class Hsm(abc.ABC):
    """One HSM: generate keys inside, sign, wrap and unwrap, export public keys only, destroy;
    and, for applets inside the device process, ECDH, AES-GCM sealing and OPAQUE setups."""

    kind: ClassVar[str]
    blocking: ClassVar[bool] = True
    """Whether calls may wait on a device: callers on an event loop run them in a thread."""

    @abc.abstractmethod
    def supports(self, alg: str) -> bool:
        """Whether this HSM can generate and use keys of ``alg``."""

    @abc.abstractmethod
    def generate(self, label: str, alg: str, *, wrappable: bool = False) -> PublicKey:
        """Make a new key inside the HSM under ``label``; raises :class:`KeyExists` if taken."""

    @abc.abstractmethod
    def public_key(self, label: str) -> PublicKey:
        """The public half of the key ``label``; raises :class:`KeyNotFound`."""

    @abc.abstractmethod
    def labels(self) -> list[str]:
        """The labels of every key inside, sorted."""

    @abc.abstractmethod
    def sign(self, label: str, data: bytes) -> bytes:
        """Sign ``data`` with key ``label`` (Ed25519, or ECDSA P-256 SHA-256 as DER)."""

    @abc.abstractmethod
    def wrap(
        self,
        label: str,
        recipient: bytes,
        context: bytes,
        *,
        attestation: Attestation | None = None,
    ) -> WrappedKey:
        """Key ``label`` sealed to the ECDH P-256 transport public key ``recipient`` for
        ``context`` (what the key is and whom it is for); raises :class:`NotWrappable`.

        ``attestation`` is the recipient's: a device boundary (:mod:`node.hsm.device`) wraps only
        to a transport key that an attestation chained to its vendor root vouches for; a backend
        in the caller's own process trusts its caller and does not look at it.
        """

    @abc.abstractmethod
    def unwrap(
        self, transport_label: str, wrapped: WrappedKey, label: str, context: bytes
    ) -> PublicKey:
        """Open ``wrapped`` with transport key ``transport_label`` for ``context`` and keep it as
        ``label`` (wrappable again); raises :class:`UnwrapFailed` when it does not open for this
        context or is not the key it claims to be, and changes nothing then."""

    @abc.abstractmethod
    def destroy(self, label: str) -> None:
        """Erase key ``label`` and the certificate under its label; raises :class:`KeyNotFound`."""

    @abc.abstractmethod
    def certificate(self, label: str) -> bytes | None:
        """The DER certificate stored under ``label``, if any."""

    @abc.abstractmethod
    def store_certificate(self, label: str, der: bytes) -> None:
        """Keep a certificate in the HSM under ``label`` (its key's, or a CA's of its own)."""

    @abc.abstractmethod
    def ecdh(self, label: str, peer_point: bytes) -> bytes:
        """The raw P-256 ECDH output of the ECDH key ``label`` with ``peer_point`` (device
        internal: HPKE decapsulation); raises :class:`UnsupportedAlgorithm` for other keys."""

    @abc.abstractmethod
    def seal(self, label: str, plaintext: bytes, aad: bytes) -> bytes:
        """``plaintext`` sealed with the AES-256-GCM key ``label`` (device internal):
        nonce (12, random) || ciphertext || tag (16), authenticating ``aad`` too."""

    @abc.abstractmethod
    def unseal(self, label: str, sealed: bytes, aad: bytes) -> bytes:
        """Open what :meth:`seal` made with key ``label`` and ``aad`` (device internal); raises
        :class:`UnsealFailed` on any defect."""

    @abc.abstractmethod
    def secret(self, label: str) -> bytes:
        """The setup bytes of the OPAQUE setup ``label`` (device internal: the OPAQUE server
        runs in the device process); raises :class:`UnsupportedAlgorithm` for other keys."""

    @abc.abstractmethod
    def healthy(self) -> bool:
        """Whether the HSM answers now (logging in again if it has to)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the backend's resources; the keys stay."""

    def open_hpke(self, label: str, sealed: bytes, info: bytes, aad: bytes = b"") -> bytes:
        """Open HPKE ``sealed`` (``enc || ciphertext``, base mode, see :mod:`node.hsm.hpke`) with
        the ECDH key ``label`` (device internal); raises :class:`UnsealFailed`."""
        # Imported here: node.hsm.hpke raises this module's errors.
        from node.hsm.hpke import open_sealed

        recipient = self.public_key(label)
        if recipient.alg != ECDH_P256:
            raise UnsupportedAlgorithm("key is not an ECDH key", label=label, alg=recipient.alg)
        return open_sealed(
            lambda point: self.ecdh(label, point), recipient.public_key, sealed, info, aad
        )

    def signer(self, label: str) -> HsmSigner:
        """A :class:`messages.signing.Signer` over the key ``label``."""
        return HsmSigner(self, self.public_key(label))

    def signing_alg(self) -> str:
        """Ed25519 where this HSM has it, ECDSA P-256 otherwise."""
        return ED25519 if self.supports(ED25519) else ECDSA_P256

    def ensure(self, label: str, alg: str) -> PublicKey:
        """The key ``label``, generated with ``alg`` if the HSM does not hold it yet."""
        try:
            return self.public_key(label)
        except KeyNotFound:
            return self.generate(label, alg)
