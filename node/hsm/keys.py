"""Key encodings, AES-GCM sealing and the key-wrapping scheme both backends share.

Wrapping: a key's material is sealed to the recipient's ECDH P-256 transport key with HPKE
(RFC 9180, base mode, DHKEM(P-256, HKDF-SHA256), HKDF-SHA256, AES-128-GCM, empty aad), with
``info = "hsmfleet/v1/key-wrap\\n" || context``: the context says what the key is and whom it is
for (for fleet keys :func:`messages.ceremony.wrap_context`), so a wrapped key opens only for the
context it was sealed for. The material is the PKCS#8 DER of an Ed25519 or P-256 private key,
the 32 raw bytes of an AES-256-GCM key, or the 128 bytes of an OPAQUE setup. Opening checks that
the material is of the algorithm it claims and that its public half is the one claimed.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from messages import aead
from messages.signing import ECDH_P256, ECDSA_P256, ED25519
from node.hsm import hpke, opaque
from node.hsm.base import (
    AES256_GCM,
    OPAQUE_SETUP,
    BadPublicKey,
    UnsealFailed,
    UnsupportedAlgorithm,
    UnwrapFailed,
    WrappedKey,
)

PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey
AES_KEY_BYTES = 32
WRAP_INFO = b"hsmfleet/v1/key-wrap\n"
_KEY_CHECK = b"hsmfleet/v1/key-check"


@dataclass(frozen=True)
class AesKey:
    """An AES-256-GCM key held in software."""

    raw: bytes = field(repr=False)


@dataclass(frozen=True)
class OpaqueSetup:
    """An OPAQUE server setup held in software."""

    raw: bytes = field(repr=False)


Secret = PrivateKey | AesKey | OpaqueSetup
"""A key's private part as software holds it."""


def p256_point(key: ec.EllipticCurvePublicKey) -> bytes:
    """X9.62 uncompressed point of a P-256 public key."""
    return key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )


def p256_public(point: bytes) -> ec.EllipticCurvePublicKey:
    """The P-256 public key at ``point``; raises :class:`BadPublicKey` if it is not on the
    curve."""
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    except ValueError as exc:
        raise BadPublicKey(f"not a P-256 public key: {exc}") from exc


def generate_private(alg: str) -> Secret:
    """A new software key for ``alg``."""
    if alg == ED25519:
        return ed25519.Ed25519PrivateKey.generate()
    if alg in (ECDSA_P256, ECDH_P256):
        return ec.generate_private_key(ec.SECP256R1())
    if alg == AES256_GCM:
        return AesKey(os.urandom(AES_KEY_BYTES))
    if alg == OPAQUE_SETUP:
        return OpaqueSetup(opaque.new_setup())
    raise UnsupportedAlgorithm("unknown key algorithm", alg=alg)


def is_of(key: object, alg: str) -> bool:
    """Whether ``key`` is a key of ``alg``: Ed25519, on the P-256 curve, AES or OPAQUE."""
    if alg == ED25519:
        return isinstance(key, ed25519.Ed25519PrivateKey)
    if alg == AES256_GCM:
        return isinstance(key, AesKey)
    if alg == OPAQUE_SETUP:
        return isinstance(key, OpaqueSetup)
    return (
        alg in (ECDSA_P256, ECDH_P256)
        and isinstance(key, ec.EllipticCurvePrivateKey)
        and isinstance(key.curve, ec.SECP256R1)
    )


def key_check(key: bytes) -> bytes:
    """The key check value of a symmetric key: HMAC-SHA256 of a fixed text, revealing nothing
    of the key, telling two keys apart."""
    return hmac.digest(key, _KEY_CHECK, "sha256")


def public_bytes(key: Secret) -> bytes:
    """The public half of ``key`` in the encoding :class:`PublicKey` uses."""
    if isinstance(key, AesKey):
        return key_check(key.raw)
    if isinstance(key, OpaqueSetup):
        return opaque.setup_public(key.raw)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.public_key().public_bytes_raw()
    return p256_point(key.public_key())


def software_sign(key: PrivateKey, data: bytes) -> bytes:
    """Ed25519, or ECDSA P-256 over SHA-256 as DER."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(data)
    return key.sign(data, ec.ECDSA(hashes.SHA256()))


def ecdsa_der(raw: bytes) -> bytes:
    """A PKCS#11 ECDSA signature (r || s, fixed width) as DER."""
    half = len(raw) // 2
    return encode_dss_signature(
        int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big")
    )


def prehash(data: bytes) -> bytes:
    """SHA-256 of ``data``: what raw CKM_ECDSA signs."""
    return hashlib.sha256(data).digest()


def pkcs8(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def material(key: Secret) -> bytes:
    """What a key is made of, as wrapped and as kept sealed at rest: PKCS#8 DER of a private
    key, the raw bytes of an AES key or an OPAQUE setup."""
    if isinstance(key, AesKey | OpaqueSetup):
        return key.raw
    return pkcs8(key)


def from_material(alg: str, data: bytes) -> Secret:
    """The key of ``alg`` made of ``data``; raises ``ValueError`` if ``data`` is not one."""
    if alg == AES256_GCM:
        if len(data) != AES_KEY_BYTES:
            raise ValueError(f"an AES-256 key is {AES_KEY_BYTES} bytes, not {len(data)}")
        key: Secret = AesKey(data)
    elif alg == OPAQUE_SETUP:
        opaque.setup_public(data)
        key = OpaqueSetup(data)
    else:
        loaded = serialization.load_der_private_key(data, None)
        if not isinstance(loaded, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey):
            raise ValueError("not an Ed25519 or elliptic-curve private key")
        key = loaded
    if not is_of(key, alg):
        raise ValueError(f"not a key of {alg}")
    return key


def wrap_info(context: bytes) -> bytes:
    """The HPKE ``info`` a key is wrapped under for ``context``."""
    return WRAP_INFO + context


def wrap(
    alg: str, public_key: bytes, key_material: bytes, recipient: bytes, context: bytes
) -> WrappedKey:
    """Seal the :func:`material` of a key to the P-256 transport key ``recipient`` for
    ``context``; raises :class:`BadPublicKey` if ``recipient`` is not a P-256 point."""
    p256_public(recipient)
    sealed = hpke.seal(recipient, key_material, wrap_info(context))
    return WrappedKey(
        alg=alg,
        public_key=public_key,
        ephemeral=sealed[: hpke.ENC_BYTES],
        ciphertext=sealed[hpke.ENC_BYTES :],
    )


def unwrap(
    open_hpke: Callable[[bytes, bytes], bytes], wrapped: WrappedKey, context: bytes
) -> Secret:
    """Open ``wrapped`` for ``context`` with ``open_hpke(sealed, info)`` (the transport key's
    HPKE open) and check it is the key it claims to be; raises :class:`UnwrapFailed`."""
    try:
        data = open_hpke(wrapped.ephemeral + wrapped.ciphertext, wrap_info(context))
    except UnsealFailed as exc:
        raise UnwrapFailed(
            "wrapped key does not open under this transport key for this context"
        ) from exc
    try:
        key = from_material(wrapped.alg, data)
    except ValueError as exc:
        raise UnwrapFailed(
            "wrapped key is not of the algorithm it claims", alg=wrapped.alg
        ) from exc
    if public_bytes(key) != wrapped.public_key:
        raise UnwrapFailed("wrapped key is not the key it claims to be")
    return key


def aead_open(key: bytes, sealed: bytes, aad: bytes) -> bytes:
    """Open what :func:`messages.aead.seal` made; raises :class:`UnsealFailed` on any defect."""
    try:
        return aead.open_sealed(key, sealed, aad)
    except aead.SealedDataError as exc:
        raise UnsealFailed(str(exc)) from None


def der_prefix(data: bytes) -> bytes:
    """The leading DER element of ``data``: some tokens pad the wrapped PKCS#8 with zeros."""
    if len(data) < 2 or data[0] != 0x30:
        raise ValueError("not a DER sequence")
    if data[1] < 0x80:
        return data[: 2 + data[1]]
    width = data[1] & 0x7F
    length = int.from_bytes(data[2 : 2 + width], "big")
    return data[: 2 + width + length]
