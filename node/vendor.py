"""The HSM vendor stand-in: a root CA that certifies each HSM's device key.

Real HSMs leave the factory with a device key and a certificate chain from their vendor's root.
For the software HSM (and for a PKCS#11 token provisioned here) this CA plays the vendor: its root
key sits unencrypted in the vendor directory, which only the provisioning operator should read.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from messages.errors import HsmfleetError
from messages.signing import ECDSA_P256
from node.hsm.base import Hsm, PublicKey
from transport.files import write_file

ROOT_KEY = "root-key.pem"
ROOT_CERT = "root.pem"
DEVICE = "device"
VENDOR_ROOT = "vendor-root"
ROOT_LIFETIME = timedelta(days=20 * 365)
DEVICE_LIFETIME = timedelta(days=10 * 365)


def _key_usage(*allowed: str) -> x509.KeyUsage:
    """A key usage extension allowing only ``allowed`` (names of its flags)."""
    flags = (
        "digital_signature",
        "content_commitment",
        "key_encipherment",
        "data_encipherment",
        "key_agreement",
        "key_cert_sign",
        "crl_sign",
        "encipher_only",
        "decipher_only",
    )
    if not set(allowed) <= set(flags):
        raise ValueError(f"unknown key usage {sorted(set(allowed) - set(flags))}")
    return x509.KeyUsage(**{flag: flag in allowed for flag in flags})


_KEY_CERT_SIGN = _key_usage("key_cert_sign", "crl_sign")
_DIGITAL_SIGNATURE = _key_usage("digital_signature")


class VendorError(HsmfleetError):
    """The vendor directory is missing, incomplete, or already holds a CA."""

    kind = "vendor"


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "hsmfleet vendor stand-in"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


@dataclass(frozen=True)
class VendorCA:
    """The vendor's root key and certificate."""

    key: ec.EllipticCurvePrivateKey
    root: x509.Certificate

    @classmethod
    def init(cls, directory: Path, now: datetime, name: str = "hsmfleet vendor root") -> VendorCA:
        """Create a new root CA in ``directory``; refuses to overwrite one."""
        directory.mkdir(parents=True, exist_ok=True)
        if (directory / ROOT_KEY).exists() or (directory / ROOT_CERT).exists():
            raise VendorError("vendor directory already holds a CA", dir=str(directory))
        key = ec.generate_private_key(ec.SECP256R1())
        subject = _name(name)
        root = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + ROOT_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
            .add_extension(_KEY_CERT_SIGN, critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        write_file(directory / ROOT_KEY, pem, secret=True, replace=False)
        (directory / ROOT_CERT).write_bytes(root.public_bytes(serialization.Encoding.PEM))
        return cls(key, root)

    @classmethod
    def open(cls, directory: Path) -> VendorCA:
        """The CA kept in ``directory``."""
        # Imported here: messages.attestation brings the NATS client, which the HSM device
        # process (it provisions a new software HSM) has no use for.
        from messages.attestation import load_vendor_roots

        try:
            key = serialization.load_pem_private_key((directory / ROOT_KEY).read_bytes(), None)
            roots = load_vendor_roots((directory / ROOT_CERT).read_bytes())
        except (OSError, ValueError, HsmfleetError) as exc:
            raise VendorError(f"cannot open the vendor CA: {exc}", dir=str(directory)) from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey) or len(roots) != 1:
            raise VendorError("vendor directory holds no P-256 root", dir=str(directory))
        return cls(key, roots[0])

    @property
    def root_der(self) -> bytes:
        return self.root.public_bytes(serialization.Encoding.DER)

    def certify(
        self,
        device: PublicKey,
        serial: str,
        now: datetime,
        lifetime: timedelta = DEVICE_LIFETIME,
        not_before: datetime | None = None,
    ) -> bytes:
        """A DER device certificate for ``device``'s public key, valid from ``not_before``."""
        public = _public_key(device)
        start = now - timedelta(minutes=5) if not_before is None else not_before
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(f"hsm device {serial}"))
            .issuer_name(self.root.subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + lifetime)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_DIGITAL_SIGNATURE, critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), False
            )
            .sign(self.key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.DER)


def _public_key(device: PublicKey) -> ec.EllipticCurvePublicKey:
    if device.alg == ECDSA_P256:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), device.public_key)
    raise VendorError("device keys are ECDSA P-256", alg=device.alg)


def provision(hsm: Hsm, vendor: VendorCA, now: datetime) -> tuple[bytes, bytes]:
    """Give ``hsm`` a device key and a certificate for it; returns the chain (root, device).

    A device that already has a certificate keeps it: provisioning happens once per HSM.
    """
    if hsm.certificate(DEVICE) is None:
        device = hsm.ensure(DEVICE, ECDSA_P256)
        hsm.store_certificate(VENDOR_ROOT, vendor.root_der)
        hsm.store_certificate(DEVICE, vendor.certify(device, f"{hsm.kind}-{device.kid}", now))
    return device_chain(hsm)


def device_chain(hsm: Hsm) -> tuple[bytes, bytes]:
    """The chain (vendor root, device certificate) kept in ``hsm``."""
    root, device = hsm.certificate(VENDOR_ROOT), hsm.certificate(DEVICE)
    if root is None or device is None:
        raise VendorError("HSM has no device certificate: provision it with the vendor tool")
    return root, device
