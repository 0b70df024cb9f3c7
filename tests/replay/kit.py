"""Test kit: a stand-in HSM vendor and devices that answer attestation challenges.

Real X.509 (``cryptography``) and real signatures: a vendor root CA certifies device keys; a
device signs an :class:`~messages.attestation.AttestationStatement` over the nonce it is sent.
Tests build correct answers and every kind of wrong one from it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from messages.attestation import (
    ECDH_P256,
    Attestation,
    AttestationStatement,
    statement_signing_bytes,
)
from messages.events import LogEntry
from messages.schema import Body
from messages.signing import Ed25519Signer
from orchestrator.shell.recorder import Recorder
from transport.outbox import Outbox

MEASUREMENT = "sha256:" + "ab" * 32
DAY_MS = 24 * 3600 * 1000
T0 = 1_800_000_000_000  # a fixed "now" for pure tests: 2027-01-15


def _when(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)


def _point(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )


class Vendor:
    """A vendor root CA valid for a year around :data:`T0`."""

    def __init__(self, name: str = "Test HSM Vendor", now_ms: int = T0) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        ski = x509.SubjectKeyIdentifier.from_public_key(self.key.public_key())
        self.root = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_when(now_ms - 365 * DAY_MS))
            .not_valid_after(_when(now_ms + 365 * DAY_MS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .sign(self.key, hashes.SHA256())
        )

    @property
    def root_der(self) -> bytes:
        return self.root.public_bytes(serialization.Encoding.DER)

    def device(
        self, node_id: str, *, not_before_ms: int | None = None, not_after_ms: int | None = None
    ) -> Device:
        """A device with its own key, certified by this vendor (valid ±30 days around T0)."""
        key = ec.generate_private_key(ec.SECP256R1())
        start = T0 - 30 * DAY_MS if not_before_ms is None else not_before_ms
        end = T0 + 30 * DAY_MS if not_after_ms is None else not_after_ms
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"device {node_id}")]))
            .issuer_name(self.root.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_when(start))
            .not_valid_after(_when(end))
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        return Device(node_id, key, cert, self.root)


@dataclass
class Device:
    """An HSM as its vendor certified it, with the node's identity and transport keys."""

    node_id: str
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    root: x509.Certificate

    def __post_init__(self) -> None:
        self.identity = Ed25519Signer.generate()
        self.transport = ec.generate_private_key(ec.SECP256R1())
        self.outbox = Outbox(self.node_id, self.identity)

    def attestation(self, nonce: bytes, measurement: str = MEASUREMENT) -> Attestation:
        """A correct answer to ``nonce``."""
        statement = AttestationStatement(
            node_id=self.node_id,
            identity_alg=self.identity.alg,
            identity_key=self.identity.public_key,
            transport_alg=ECDH_P256,
            transport_key=_point(self.transport),
            measurement=measurement,
            nonce=nonce,
        ).encode()
        chain = tuple(c.public_bytes(serialization.Encoding.DER) for c in (self.root, self.cert))
        return Attestation(
            node_id=self.node_id,
            hsm="soft",
            identity_alg=self.identity.alg,
            identity_key=self.identity.public_key,
            transport_alg=ECDH_P256,
            transport_key=_point(self.transport),
            measurement=measurement,
            nonce=nonce,
            chain=chain,
            statement=statement,
            signature=self.key.sign(statement_signing_bytes(statement), ec.ECDSA(hashes.SHA256())),
        )

    def reply(self, attestation: Attestation) -> bytes:
        """The wire bytes of the node's answer carrying ``attestation``."""
        return self.outbox.envelope(attestation).encode()

    def answer(self, nonce: bytes, measurement: str = MEASUREMENT) -> bytes:
        return self.reply(self.attestation(nonce, measurement))


class PureLog(Recorder):
    """A :class:`~orchestrator.shell.recorder.Recorder` deciding at :data:`T0` unless told
    otherwise."""

    def decide(self, command: Body, now_ms: int = T0) -> list[LogEntry]:
        return super().decide(command, now_ms)

    def take_lease(self, epoch: int, now_ms: int = T0) -> None:
        super().take_lease(epoch, now_ms)
