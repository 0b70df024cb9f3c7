"""Node attestation: the messages and the pure verifier of an HSM's answer.

The orchestrator sends :class:`AttestRequest` with a fresh nonce. The node answers with an
:class:`Attestation`: the keys it claims (identity, transport), the measurement of its software,
the nonce, the X.509 chain from the vendor's root to the HSM's device certificate, and a
*statement* (the canonical bytes of :class:`AttestationStatement`) that the device key signed
inside the HSM. The host running the node is untrusted, so the claims count only where they equal
what the device signed, and the device counts only if its certificate chains to a trusted vendor
root at the time given.

The orchestrator's shell sends the challenge over NATS and hands the reply to its pure core;
:func:`verify_attestation` is pure: the time, the expected nonce, the roots and the allow-list are
inputs; it reads no clock and keeps no state. Whether a nonce was already used or has expired is the
orchestrator's bookkeeping, not this module's. :func:`verify_answer_signature`, also pure, checks
that the envelope carrying the answer is signed by the identity key the answer attests: proof that
the sender holds that key, and that the envelope's id, time and causation are the node's.
"""

# No ``from __future__ import annotations`` here: the bodies' field types stay evaluated, so
# decoding does not re-evaluate annotation strings on every message (see messages.schema).
import hashlib
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509 import verification

from messages.canonical import canonical, digest, loads_strict
from messages.envelope import Envelope
from messages.errors import HsmfleetError, MessageError, SchemaViolation
from messages.schema import Body, message
from messages.signing import (
    ALGORITHMS,
    ECDH_P256,
    ECDSA_P256,
    ED25519,
    TrustedKey,
    TrustStore,
    is_ed25519_public_key,
    verify_bytes,
    verify_envelope,
)

TRANSPORT_ALGORITHMS = (ECDH_P256,)
STATEMENT_DOMAIN = b"hsmfleet/v1/attestation-statement\n"
MIN_NONCE_BYTES = 16
MAX_NONCE_BYTES = 64
NODE_ROLE = "node"
"""The role a node's identity key signs its own messages for."""

# Reasons an attestation is refused; each is the ``reason`` of one :class:`AttestationRejected`.
UNKNOWN_ROOT = "unknown_root"
EXPIRED = "expired"
NOT_YET_VALID = "not_yet_valid"
MEASUREMENT_NOT_ALLOWED = "measurement_not_allowed"
WRONG_NONCE = "wrong_nonce"
KEY_MISMATCH = "key_mismatch"
WRONG_DEVICE = "wrong_device"
GARBLED = "garbled"
BAD_ANSWER_SIGNATURE = "bad_answer_signature"
REASONS = (
    UNKNOWN_ROOT,
    EXPIRED,
    NOT_YET_VALID,
    MEASUREMENT_NOT_ALLOWED,
    WRONG_NONCE,
    KEY_MISMATCH,
    WRONG_DEVICE,
    GARBLED,
    BAD_ANSWER_SIGNATURE,
)


class AttestationRejected(HsmfleetError):
    """An attestation was refused; ``reason`` is one of :data:`REASONS`."""

    kind = "attestation_rejected"

    def __init__(self, reason: str, message: str, **detail: object) -> None:
        super().__init__(message, reason=reason, **detail)
        self.reason = reason


@message
@dataclass(frozen=True)
class AttestRequest(Body):
    """Orchestrator → node on ``fleet.node.<id>.cmd.attest``: prove yourself over this nonce."""

    TYPE = "node.attest"
    nonce: bytes
    expires_ms: int


@dataclass(frozen=True)
class AttestationStatement(Body):
    """What the device key signs inside the HSM: these keys, this software, this nonce."""

    node_id: str
    identity_alg: str
    identity_key: bytes
    transport_alg: str
    transport_key: bytes
    measurement: str
    nonce: bytes

    def encode(self) -> bytes:
        """The statement's canonical bytes, as carried in :attr:`Attestation.statement`."""
        return canonical(self.to_json())


def statement_signing_bytes(statement: bytes) -> bytes:
    """The bytes the device key signs: a domain tag and the statement's canonical bytes."""
    return STATEMENT_DOMAIN + statement


@message
@dataclass(frozen=True)
class Attestation(Body):
    """Node → orchestrator: the answer to :class:`AttestRequest`.

    ``chain`` is DER certificates from the vendor root to the device certificate (root first,
    device last). ``statement`` is the canonical bytes of an :class:`AttestationStatement` and
    ``signature`` the device key's signature over :func:`statement_signing_bytes` of it (ECDSA
    P-256 signatures are DER). ``hsm`` (the backend's kind) is a hint for operators: the device
    does not sign it and the verifier establishes nothing from it.
    """

    TYPE = "node.attestation"
    node_id: str
    hsm: str
    identity_alg: str
    identity_key: bytes
    transport_alg: str
    transport_key: bytes
    measurement: str
    nonce: bytes
    chain: tuple[bytes, ...]
    statement: bytes
    signature: bytes


@message
@dataclass(frozen=True)
class NodeAnnounce(Body):
    """Node → all on ``fleet.node.<id>.status`` when it starts: who it is and where it runs."""

    TYPE = "node.announce"
    node_id: str
    domain: str
    hsm: str
    measurement: str


@message
@dataclass(frozen=True)
class NodeHeartbeat(Body):
    """Node → all on ``fleet.node.<id>.status``, periodically: still alive, HSM usable or not."""

    TYPE = "node.heartbeat"
    node_id: str
    domain: str
    seq: int
    uptime_ms: int
    hsm_ok: bool


@dataclass(frozen=True)
class AttestedNode:
    """The facts an accepted attestation establishes about a node."""

    node_id: str
    identity_alg: str
    identity_key: bytes
    transport_alg: str
    transport_key: bytes
    measurement: str
    device_fingerprint: str
    """SHA-256 of the device certificate's DER, hex."""
    attestation_digest: str
    """SHA-256 of the attestation body's canonical bytes, hex."""


def load_vendor_roots(data: bytes) -> list[x509.Certificate]:
    """Parse vendor root certificates from PEM (one or more) or a single DER certificate."""
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificates(data)
        return [x509.load_der_x509_certificate(data)]
    except ValueError as exc:
        raise SchemaViolation(f"vendor roots are not X.509 certificates: {exc}") from exc


def verify_answer_signature(envelope: Envelope, node: Attestation | AttestedNode) -> None:
    """Check that ``envelope`` comes from ``node`` and is signed by its attested identity key.

    :func:`verify_attestation` proves the device certified the identity key; this proves the
    sender of the answer holds that key. Raises :class:`AttestationRejected`
    (``bad_answer_signature``) when the envelope is unsigned, signed by another key, or names
    another source than the node.
    """
    identity = TrustedKey(
        node.node_id, node.identity_alg, node.identity_key, frozenset({NODE_ROLE})
    )
    try:
        verify_envelope(envelope, TrustStore([identity]), NODE_ROLE)
    except MessageError as exc:
        raise AttestationRejected(
            BAD_ANSWER_SIGNATURE,
            f"the answer is not signed by the identity key it attests: {exc}",
            node_id=node.node_id,
        ) from exc


def verify_attestation(
    attestation: Attestation | dict[str, Any] | bytes,
    *,
    nonce: bytes,
    vendor_roots: Iterable[x509.Certificate | bytes],
    allowed_measurements: Collection[str],
    now_ms: int,
) -> AttestedNode:
    """Check a node's answer and return what it proves, or raise :class:`AttestationRejected`.

    ``attestation`` may be the typed body, its JSON object, or its canonical JSON bytes; anything
    that does not decode is ``garbled``. Checks, in order: the nonce the node echoes, the chain to
    one of ``vendor_roots`` with every certificate valid at ``now_ms``, the device's signature on
    the statement, the claimed keys against the signed ones, the signed nonce, and the signed
    measurement against ``allowed_measurements``.
    """
    att = _decode(attestation)
    if att.nonce != nonce:
        raise AttestationRejected(WRONG_NONCE, "the answer echoes another nonce")
    device = _verify_chain(att.chain, vendor_roots, now_ms)
    if not _device_signed(device, att.signature, statement_signing_bytes(att.statement)):
        raise AttestationRejected(
            WRONG_DEVICE, "the statement is not signed by the certified device key"
        )
    expected = AttestationStatement(nonce=nonce, **{name: getattr(att, name) for name in _CLAIMS})
    if att.statement != expected.encode():
        _explain_statement(att, nonce)
    if att.measurement not in allowed_measurements:
        raise AttestationRejected(
            MEASUREMENT_NOT_ALLOWED,
            "node software is not on the allow-list",
            measurement=att.measurement,
        )
    return AttestedNode(
        node_id=att.node_id,
        identity_alg=att.identity_alg,
        identity_key=att.identity_key,
        transport_alg=att.transport_alg,
        transport_key=att.transport_key,
        measurement=att.measurement,
        device_fingerprint=hashlib.sha256(att.chain[-1]).hexdigest(),
        attestation_digest=digest(att.to_json()).hex(),
    )


_CLAIMS = (
    "node_id",
    "identity_alg",
    "identity_key",
    "transport_alg",
    "transport_key",
    "measurement",
)


def _claims(source: Attestation | AttestationStatement) -> tuple[object, ...]:
    return tuple(getattr(source, name) for name in _CLAIMS)


def _decode(attestation: Attestation | dict[str, Any] | bytes) -> Attestation:
    try:
        if isinstance(attestation, bytes):
            attestation = loads_strict(attestation)
        att = (
            attestation
            if isinstance(attestation, Attestation)
            else Attestation.from_json(attestation)
        )
    except (SchemaViolation, ValueError, UnicodeDecodeError) as exc:
        raise AttestationRejected(GARBLED, f"the answer does not decode: {exc}") from exc
    _check_key(att.identity_alg, att.identity_key, ALGORITHMS)
    _check_key(att.transport_alg, att.transport_key, TRANSPORT_ALGORITHMS)
    if not att.chain:
        raise AttestationRejected(GARBLED, "the answer carries no certificate chain")
    return att


def _check_key(alg: str, key: bytes, known: tuple[str, ...]) -> None:
    try:
        if alg not in known:
            raise ValueError(f"unknown key algorithm {alg!r}")
        if alg == ED25519 and not is_ed25519_public_key(key):
            # A small-order key verifies signatures anyone can make (SPEC section 2).
            raise ValueError("not an Ed25519 key only its holder can sign for")
        if alg != ED25519:
            ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), key)
    except ValueError as exc:
        raise AttestationRejected(GARBLED, f"a public key is malformed: {exc}") from exc


def _explain_statement(att: Attestation, nonce: bytes) -> None:
    """Raise the reason why the signed statement is not the canonical one of the claims."""
    try:
        stmt = AttestationStatement.from_json(loads_strict(att.statement))
    except (SchemaViolation, ValueError, UnicodeDecodeError) as exc:
        raise AttestationRejected(GARBLED, f"the signed statement does not decode: {exc}") from exc
    if stmt.nonce != nonce:
        raise AttestationRejected(WRONG_NONCE, "the device signed another nonce")
    if _claims(att) != _claims(stmt):
        raise AttestationRejected(
            KEY_MISMATCH, "the claimed keys differ from the ones the device signed"
        )
    raise AttestationRejected(GARBLED, "the signed statement is not in canonical form")


def _verify_chain(
    chain: tuple[bytes, ...], vendor_roots: Iterable[x509.Certificate | bytes], now_ms: int
) -> x509.Certificate:
    """The device certificate, once its chain verifies to a vendor root at ``now_ms``."""
    try:
        certs = [x509.load_der_x509_certificate(der) for der in chain]
    except ValueError as exc:
        raise AttestationRejected(GARBLED, f"a certificate does not parse: {exc}") from exc
    roots = [
        r if isinstance(r, x509.Certificate) else x509.load_der_x509_certificate(r)
        for r in vendor_roots
    ]
    now = datetime.fromtimestamp(now_ms / 1000, tz=UTC)
    for cert in certs:
        if now < cert.not_valid_before_utc:
            raise AttestationRejected(
                NOT_YET_VALID,
                "a certificate is not valid yet",
                subject=cert.subject.rfc4514_string(),
            )
        if now > cert.not_valid_after_utc:
            raise AttestationRejected(
                EXPIRED, "a certificate has expired", subject=cert.subject.rfc4514_string()
            )
    if not roots:
        raise AttestationRejected(UNKNOWN_ROOT, "no vendor root is trusted")
    device = certs[-1]
    verifier = (
        verification.PolicyBuilder()
        .store(verification.Store(roots))
        .time(now)
        .extension_policies(
            ca_policy=verification.ExtensionPolicy.webpki_defaults_ca(),
            ee_policy=verification.ExtensionPolicy.permit_all(),
        )
        .build_client_verifier()
    )
    try:
        verifier.verify(device, certs[:-1])
    except verification.VerificationError as exc:
        raise AttestationRejected(
            UNKNOWN_ROOT, f"the device certificate does not chain to a trusted root: {exc}"
        ) from exc
    return device


def _device_signed(device: x509.Certificate, signature: bytes, data: bytes) -> bool:
    key = device.public_key()
    if isinstance(key, ed25519.Ed25519PublicKey):
        return verify_bytes(ED25519, key.public_bytes_raw(), signature, data)
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        point = key.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return verify_bytes(ECDSA_P256, point, signature, data)
    return False
