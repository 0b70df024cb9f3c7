"""Key encodings and the key-wrapping scheme both backends share.

Wrapping: the sender makes an ephemeral P-256 key, takes the ECDH shared secret with the
recipient's transport key, and wraps the private key's PKCS#8 DER with AES key wrap with padding
(RFC 5649) under it. The shared secret is used as the wrapping key as it is, because PKCS#11 tokens
(SoftHSM2 among them) derive ECDH keys only with the null KDF; the ephemeral key is fresh per wrap.
"""

from __future__ import annotations

import hashlib

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.keywrap import (
    InvalidUnwrap,
    aes_key_unwrap_with_padding,
    aes_key_wrap_with_padding,
)

from messages.attestation import ECDH_P256
from messages.signing import ECDSA_P256, ED25519
from node.hsm.base import UnsupportedAlgorithm, UnwrapFailed, WrappedKey

PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey


def p256_point(key: ec.EllipticCurvePublicKey) -> bytes:
    """X9.62 uncompressed point of a P-256 public key."""
    return key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )


def p256_public(point: bytes) -> ec.EllipticCurvePublicKey:
    """The P-256 public key at ``point``; raises :class:`UnwrapFailed` if it is not on the curve."""
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    except ValueError as exc:
        raise UnwrapFailed(f"not a P-256 public key: {exc}") from exc


def generate_private(alg: str) -> PrivateKey:
    """A new software private key for ``alg``."""
    if alg == ED25519:
        return ed25519.Ed25519PrivateKey.generate()
    if alg in (ECDSA_P256, ECDH_P256):
        return ec.generate_private_key(ec.SECP256R1())
    raise UnsupportedAlgorithm("unknown key algorithm", alg=alg)


def is_of(key: object, alg: str) -> bool:
    """Whether the private ``key`` is a key of ``alg``: Ed25519, or on the P-256 curve."""
    if alg == ED25519:
        return isinstance(key, ed25519.Ed25519PrivateKey)
    return (
        alg in (ECDSA_P256, ECDH_P256)
        and isinstance(key, ec.EllipticCurvePrivateKey)
        and isinstance(key.curve, ec.SECP256R1)
    )


def public_bytes(key: PrivateKey) -> bytes:
    """The public half of ``key`` in the encoding :class:`PublicKey` uses."""
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


def wrap_pkcs8(der: bytes, alg: str, public_key: bytes, recipient: bytes) -> WrappedKey:
    """Seal a private key's PKCS#8 ``der`` to the P-256 transport key ``recipient``."""
    ephemeral = ec.generate_private_key(ec.SECP256R1())
    secret = ephemeral.exchange(ec.ECDH(), p256_public(recipient))
    return WrappedKey(
        alg=alg,
        public_key=public_key,
        ephemeral=p256_point(ephemeral.public_key()),
        ciphertext=aes_key_wrap_with_padding(secret, der),
    )


def unwrap_pkcs8(secret: bytes, wrapped: WrappedKey) -> PrivateKey:
    """Open ``wrapped`` with the ECDH ``secret`` and check it is the key it claims to be."""
    try:
        der = _der_prefix(aes_key_unwrap_with_padding(secret, wrapped.ciphertext))
        key = serialization.load_der_private_key(der, None)
    except (InvalidUnwrap, ValueError) as exc:
        raise UnwrapFailed("wrapped key does not open under this transport key") from exc
    if not is_of(key, wrapped.alg):
        raise UnwrapFailed("wrapped key is not of the algorithm it claims", alg=wrapped.alg)
    if public_bytes(key) != wrapped.public_key:
        raise UnwrapFailed("wrapped key is not the key it claims to be")
    return key


def _der_prefix(data: bytes) -> bytes:
    """The leading DER element of ``data``: some tokens pad the wrapped PKCS#8 with zeros."""
    if len(data) < 2 or data[0] != 0x30:
        raise ValueError("not a DER sequence")
    if data[1] < 0x80:
        return data[: 2 + data[1]]
    width = data[1] & 0x7F
    length = int.from_bytes(data[2 : 2 + width], "big")
    return data[: 2 + width + length]
