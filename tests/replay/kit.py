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
from messages.events import LogEntry, TakeLease
from messages.outbox import Outbox
from messages.schema import Body
from messages.signing import Ed25519Signer, TrustStore
from orchestrator.core import Context, decide
from orchestrator.log import GENESIS, entry_digest, seal
from orchestrator.state import State, evolve

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


class PureLog:
    """The orchestrator's decide → seal → evolve loop without NATS: a log recorded in memory.

    Seeds are drawn from a counter, so a run is reproducible; ``entries`` holds wire bytes.
    """

    def __init__(self, signer: Ed25519Signer | None = None, holder: str = "orch-a") -> None:
        self.signer = signer or Ed25519Signer.generate()
        self.holder = holder
        self.epoch = 0
        self.state = State()
        self.head = GENESIS
        self.entries: list[bytes] = []
        self._seeds = 0

    def context(self, now_ms: int) -> Context:
        self._seeds += 1
        return Context(now_ms, self._seeds.to_bytes(16, "big"), self.epoch, self.holder)

    def decide(self, command: Body, now_ms: int = T0) -> list[LogEntry]:
        """Decide on ``command`` at ``now_ms``, record the decision and fold its events."""
        ctx = self.context(now_ms)
        events = decide(self.state, command, ctx)
        self.record(command, events, ctx)
        return events

    def record(
        self,
        command: Body,
        events: list[LogEntry],
        ctx: Context,
        written: list[LogEntry] | None = None,
    ) -> None:
        """Seal ``events`` as the decision on ``command`` (whatever decide would say) and fold.

        ``written``, when given, is what goes into the log instead: the same events as an older
        version of their types wrote them.
        """
        if not events:
            return
        sealed = seal(command, written or events, ctx, self.head, self.signer)
        for item, entry in zip(sealed, [None, *events], strict=True):
            self.entries.append(item.data)
            self.head = entry_digest(item.data)
            if entry is not None:
                self.state = evolve(self.state, entry)

    def take_lease(self, epoch: int, now_ms: int = T0) -> None:
        self.epoch = epoch
        self.decide(TakeLease(), now_ms)

    def trust(self) -> TrustStore:
        store = TrustStore()
        store.trust("orchestrator", self.signer, "orchestrator")
        return store

    def jsonl(self) -> bytes:
        return b"".join(data + b"\n" for data in self.entries)
