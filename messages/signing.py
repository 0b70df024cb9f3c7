"""Signers, trusted keys, and signature checks over canonical bytes.

A :class:`Signer` is anything that can sign bytes with a key it names: a software key here, a
key inside an HSM backend in ``node/``. Receivers hold a :class:`TrustStore` that says which keys
they trust, who owns each, and for which roles; a message counts only if its signature verifies
under a key trusted for the role it claims and owned by its ``source``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from messages.envelope import Envelope, Signature
from messages.errors import (
    BadSignature,
    CanonicalizationError,
    MalformedMessage,
    MissingSignature,
    UnknownSigner,
)

ED25519 = "ed25519"
ECDSA_P256 = "ecdsa-p256-sha256"
ALGORITHMS = (ED25519, ECDSA_P256)
ECDH_P256 = "ecdh-p256"
"""Key agreement on P-256 (nodes' transport keys): named here beside the signing algorithms,
which :func:`key_id` also serves, but it signs nothing, so it is not in :data:`ALGORITHMS`."""
ED25519_KEY_SIZE = 32
P256_POINT_SIZE = 65

_P25519 = 2**255 - 19
_Y_ORDER_8 = int.from_bytes(
    bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"), "little"
)
_SMALL_ORDER_Y = frozenset({0, 1, _P25519 - 1, _Y_ORDER_8, _P25519 - _Y_ORDER_8})
"""The y coordinates of the eight points of small order (the identity, orders 2, 4 and 8)."""


def key_id(alg: str, public_key: bytes) -> str:
    """Stable id of a public key: the first 8 bytes of SHA-256 over algorithm and key, in hex."""
    return hashlib.sha256(b"hsmfleet/v1/key\n" + alg.encode() + b"\n" + public_key).hexdigest()[:16]


class Signer(Protocol):
    """Signs bytes with one key; the private half may live in an HSM and never leave it.

    A signer whose ``sign`` may wait on a device says so with an attribute ``blocking = True``;
    code on an event loop then signs in a thread (see :attr:`transport.outbox.Outbox.blocking`).
    """

    @property
    def kid(self) -> str: ...

    @property
    def alg(self) -> str: ...

    @property
    def public_key(self) -> bytes: ...

    def sign(self, data: bytes) -> bytes: ...


class Ed25519Signer:
    """A software Ed25519 key, for the operator's tools, cosigners and tests."""

    alg = ED25519

    def __init__(self, private_key: ed25519.Ed25519PrivateKey) -> None:
        self._key = private_key
        self.public_key = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.kid = key_id(ED25519, self.public_key)

    @classmethod
    def generate(cls) -> Ed25519Signer:
        return cls(ed25519.Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> Ed25519Signer:
        return cls(ed25519.Ed25519PrivateKey.from_private_bytes(seed))

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)


def is_ed25519_public_key(key: object) -> bool:
    """True for 32 bytes that encode an Ed25519 point canonically (``y < p``) and not one of
    the eight points of small order. Verifiers accept "signatures" anyone can make under a
    small-order key (the identity point with ``R`` = identity and ``S`` = 0 verifies every
    message), so such a key must never be accepted."""
    if not isinstance(key, bytes) or len(key) != ED25519_KEY_SIZE:
        return False
    y = int.from_bytes(key, "little") & ((1 << 255) - 1)
    return y < _P25519 and y not in _SMALL_ORDER_Y


def is_public_key(alg: str, key: object) -> bool:
    """True for a public key of ``alg`` that only its private key can sign for: an Ed25519 key
    (:func:`is_ed25519_public_key`) or an uncompressed X9.62 point on P-256."""
    if alg == ED25519:
        return is_ed25519_public_key(key)
    if alg != ECDSA_P256 or not isinstance(key, bytes) or len(key) != P256_POINT_SIZE:
        return False
    if key[0] != 0x04:
        return False
    try:
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), key)
    except ValueError:
        return False
    return True


def verify_bytes(alg: str, public_key: bytes, signature: bytes, data: bytes) -> bool:
    """True when ``signature`` by ``public_key`` verifies over ``data``; False on any defect,
    and for a key that is not :func:`is_public_key` (whatever the signature).

    Ed25519 keys are 32 raw bytes and ``S`` must be below the group order; P-256 keys are X9.62
    uncompressed points and signatures strict DER (OpenSSL refuses any other encoding; both
    ``s`` and ``n - s`` verify).
    """
    if not is_public_key(alg, public_key):
        return False
    try:
        if alg == ED25519:
            ed25519.Ed25519PublicKey.from_public_bytes(public_key).verify(signature, data)
        elif alg == ECDSA_P256:
            point = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), public_key)
            point.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        else:
            return False
    except (InvalidSignature, ValueError):
        return False
    return True


@dataclass(frozen=True)
class TrustedKey:
    """A public key the receiver trusts, who owns it, and the roles it may sign for."""

    owner: str
    alg: str
    public_key: bytes
    roles: frozenset[str]

    @property
    def kid(self) -> str:
        return key_id(self.alg, self.public_key)


class TrustStore:
    """The keys a receiver trusts, by key id."""

    def __init__(self, keys: list[TrustedKey] | None = None) -> None:
        self._keys: dict[str, TrustedKey] = {}
        for key in keys or ():
            self.add(key)

    def add(self, key: TrustedKey) -> None:
        self._keys[key.kid] = key

    def remove(self, kid: str) -> None:
        self._keys.pop(kid, None)

    def trust(self, owner: str, signer: Signer, *roles: str) -> TrustedKey:
        """Trust ``signer``'s public key for ``roles`` on behalf of ``owner``."""
        key = TrustedKey(owner, signer.alg, signer.public_key, frozenset(roles))
        self.add(key)
        return key

    def key_for(self, kid: str, role: str, owner: str) -> TrustedKey:
        """The trusted key ``kid`` if ``owner`` holds it and it may sign for ``role``."""
        key = self._keys.get(kid)
        if key is None:
            raise UnknownSigner("signing key is not trusted", kid=kid)
        if role not in key.roles:
            raise UnknownSigner("key is not trusted for this role", kid=kid, role=role)
        if key.owner != owner:
            raise UnknownSigner(
                "key belongs to another party", kid=kid, owner=key.owner, source=owner
            )
        return key

    def __len__(self) -> int:
        return len(self._keys)


def sign_envelope(env: Envelope, signer: Signer) -> Envelope:
    """Return ``env`` carrying ``signer``'s signature over its canonical bytes."""
    value = signer.sign(env.signing_bytes())
    return env.with_signature(Signature(kid=signer.kid, alg=signer.alg, value=value))


def verify_envelope(env: Envelope, trust: TrustStore, role: str) -> TrustedKey:
    """Check that ``env`` is signed by a key trusted for ``role`` and owned by its source."""
    if env.sig is None:
        raise MissingSignature("message must be signed", type=env.type, id=env.id)
    key = trust.key_for(env.sig.kid, role, env.source)
    if key.alg != env.sig.alg:
        raise BadSignature("signature algorithm differs from the key's", kid=key.kid)
    try:
        signed = env.signing_bytes()
    except CanonicalizationError as exc:
        raise MalformedMessage(f"message has no canonical form: {exc}", id=env.id) from exc
    if not verify_bytes(key.alg, key.public_key, env.sig.value, signed):
        raise BadSignature("signature does not verify", type=env.type, id=env.id, kid=key.kid)
    return key
