"""HPKE (RFC 9180) base mode for one suite: DHKEM(P-256, HKDF-SHA256), HKDF-SHA256, AES-128-GCM.

Sealing uses the ``cryptography`` implementation (:func:`seal`). Opening is written here from the
RFC (:func:`open_sealed`) because it must work where the recipient's private key cannot be held
as a software key: a PKCS#11 token offers only the raw ECDH output of its key with a peer point,
so decapsulation takes that as a callback. A sealed message is ``enc || ciphertext`` (the
encapsulated key, an uncompressed P-256 point, then the AEAD ciphertext with its tag), as the
``cryptography`` API produces it; one message per encapsulation (sequence number 0).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hpke
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from node.hsm.base import UnsealFailed

KEM_ID = 0x0010  # DHKEM(P-256, HKDF-SHA256)
KDF_ID = 0x0001  # HKDF-SHA256
AEAD_ID = 0x0001  # AES-128-GCM
SUITE = hpke.Suite(hpke.KEM.P256, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_128_GCM)
ENC_BYTES = 65  # Nenc: an uncompressed P-256 point
_SECRET_BYTES = 32  # Nsecret
_KEY_BYTES = 16  # Nk
_NONCE_BYTES = 12  # Nn
_TAG_BYTES = 16  # Nt
_MODE_BASE = 0x00
_VERSION = b"HPKE-v1"


def _i2osp(value: int, length: int) -> bytes:
    return value.to_bytes(length, "big")


_KEM_SUITE = b"KEM" + _i2osp(KEM_ID, 2)
_HPKE_SUITE = b"HPKE" + _i2osp(KEM_ID, 2) + _i2osp(KDF_ID, 2) + _i2osp(AEAD_ID, 2)


def _extract(salt: bytes, ikm: bytes) -> bytes:
    """HKDF-Extract with SHA-256 (an empty salt is HashLen zeros, RFC 5869)."""
    return hmac.digest(salt or bytes(hashlib.sha256().digest_size), ikm, "sha256")


def _labeled_extract(suite: bytes, salt: bytes, label: bytes, ikm: bytes) -> bytes:
    return _extract(salt, _VERSION + suite + label + ikm)


def _labeled_expand(suite: bytes, prk: bytes, label: bytes, info: bytes, length: int) -> bytes:
    info = _i2osp(length, 2) + _VERSION + suite + label + info
    return HKDFExpand(hashes.SHA256(), length, info).derive(prk)


def _decap(dh: Callable[[bytes], bytes], enc: bytes, recipient_public: bytes) -> bytes:
    """DHKEM Decap: the shared secret from ``enc`` and the recipient's DH with it."""
    eae_prk = _labeled_extract(_KEM_SUITE, b"", b"eae_prk", dh(enc))
    kem_context = enc + recipient_public
    return _labeled_expand(_KEM_SUITE, eae_prk, b"shared_secret", kem_context, _SECRET_BYTES)


def _key_schedule(shared_secret: bytes, info: bytes) -> tuple[bytes, bytes]:
    """The base mode key schedule: the AEAD key and base nonce (no PSK)."""
    psk_id_hash = _labeled_extract(_HPKE_SUITE, b"", b"psk_id_hash", b"")
    info_hash = _labeled_extract(_HPKE_SUITE, b"", b"info_hash", info)
    context = bytes([_MODE_BASE]) + psk_id_hash + info_hash
    secret = _labeled_extract(_HPKE_SUITE, shared_secret, b"secret", b"")
    key = _labeled_expand(_HPKE_SUITE, secret, b"key", context, _KEY_BYTES)
    base_nonce = _labeled_expand(_HPKE_SUITE, secret, b"base_nonce", context, _NONCE_BYTES)
    return key, base_nonce


def open_sealed(
    dh: Callable[[bytes], bytes],
    recipient_public: bytes,
    sealed: bytes,
    info: bytes,
    aad: bytes = b"",
) -> bytes:
    """Open ``sealed`` (``enc || ciphertext``) sent to ``recipient_public`` with ``info`` and
    ``aad``; ``dh(point)`` is the raw ECDH output of the recipient's private key with ``point``.

    Raises :class:`UnsealFailed` when ``enc`` is not a P-256 point or the ciphertext does not
    open (another recipient, another ``info`` or ``aad``, altered or truncated).
    """
    enc, ciphertext = sealed[:ENC_BYTES], sealed[ENC_BYTES:]
    if len(ciphertext) < _TAG_BYTES:
        raise UnsealFailed("HPKE message is truncated", bytes=len(sealed))
    try:
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), enc)
    except ValueError:
        raise UnsealFailed("HPKE encapsulated key is not a P-256 point") from None
    key, nonce = _key_schedule(_decap(dh, enc, recipient_public), info)
    try:
        return AESGCM(key).decrypt(nonce, ciphertext, aad)
    except InvalidTag:
        raise UnsealFailed("HPKE message does not open for this recipient and context") from None


def seal(recipient_public: bytes, plaintext: bytes, info: bytes) -> bytes:
    """``plaintext`` sealed to the P-256 point ``recipient_public`` with ``info`` (empty aad):
    ``enc || ciphertext``. The caller checks that the point is valid."""
    recipient = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), recipient_public)
    return SUITE.encrypt(plaintext, recipient, info=info)
