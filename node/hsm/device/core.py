"""The core HSM operations a device offers over its socket, and their handlers over a backend.

Offered: ``hello``, ``supports``, ``generate``, ``public_key``, ``labels``, ``certificate``,
``sign``, ``wrap``, ``unwrap``, ``destroy``, ``healthy``. Not offered, whatever the backend
can do: ECDH, AES-GCM sealing and unsealing, OPAQUE setups, HPKE open (the applets inside the
device process use those), and storing certificates (provisioning happens inside
``hsmfleet hsm serve``).

Two rules the device keeps whoever calls it: it signs no bytes in a reserved domain
(:data:`RESERVED_DOMAINS`: votes that only an applet signs, after checking them), and it wraps a
key only to a transport key that a valid attestation, chained to the vendor root the device
holds, vouches for.
"""

# No ``from __future__ import annotations``: body field types stay evaluated (messages.schema).
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from messages.errors import SchemaViolation
from messages.schema import Body
from messages.signing import ECDH_P256
from node.hsm.base import Hsm, HsmError, PublicKey, WrappedKey
from node.hsm.device.protocol import (
    HELLO,
    VERSION,
    Empty,
    Handler,
    Hello,
    operation,
    register_error,
)
from node.vendor import VENDOR_ROOT

if TYPE_CHECKING:
    from messages.attestation import Attestation

RESERVED_DOMAINS = (b"hsmfleet/v1/quorum.accepted\n",)
"""Signing domains the ``sign`` operation refuses: quorum votes, which the vault applet signs
only after it checks them."""


@register_error
class ReservedDomain(HsmError):
    """The bytes to sign lie in a domain only the device's own applets sign."""

    kind = "hsm_reserved_domain"


@register_error
class RecipientNotAttested(HsmError):
    """No valid attestation chained to the device's vendor root vouches for the recipient's
    transport key; nothing was wrapped."""

    kind = "hsm_recipient_not_attested"


@dataclass(frozen=True)
class Algorithm(Body):
    alg: str


@dataclass(frozen=True)
class Label(Body):
    label: str


@dataclass(frozen=True)
class Flag(Body):
    value: bool


@dataclass(frozen=True)
class NewKey(Body):
    label: str
    alg: str
    wrappable: bool


@dataclass(frozen=True)
class Key(Body):
    """A key's public half (:class:`node.hsm.base.PublicKey`)."""

    label: str
    alg: str
    public_key: bytes

    @classmethod
    def of(cls, key: PublicKey) -> "Key":
        return cls(key.label, key.alg, key.public_key)

    def public(self) -> PublicKey:
        return PublicKey(self.label, self.alg, self.public_key)


@dataclass(frozen=True)
class Labels(Body):
    labels: tuple[str, ...]


@dataclass(frozen=True)
class Certificate(Body):
    der: bytes | None


@dataclass(frozen=True)
class ToSign(Body):
    label: str
    data: bytes


@dataclass(frozen=True)
class Signature(Body):
    signature: bytes


@dataclass(frozen=True)
class ToWrap(Body):
    """A key to wrap to ``recipient`` for ``context``; ``attestation`` is the recipient's
    :class:`messages.attestation.Attestation` as JSON (decoded only when checked, so the device
    process loads the attestation verifier only once it wraps)."""

    label: str
    recipient: bytes
    context: bytes
    attestation: dict[str, Any] | None


@dataclass(frozen=True)
class Wrapped(Body):
    """A wrapped key (:class:`node.hsm.base.WrappedKey`)."""

    alg: str
    public_key: bytes
    ephemeral: bytes
    ciphertext: bytes

    @classmethod
    def of(cls, wrapped: WrappedKey) -> "Wrapped":
        return cls(wrapped.alg, wrapped.public_key, wrapped.ephemeral, wrapped.ciphertext)

    def key(self) -> WrappedKey:
        return WrappedKey(self.alg, self.public_key, self.ephemeral, self.ciphertext)


@dataclass(frozen=True)
class ToUnwrap(Body):
    transport_label: str
    wrapped: Wrapped
    label: str
    context: bytes


SUPPORTS = operation("supports", Algorithm, Flag)
GENERATE = operation("generate", NewKey, Key)
PUBLIC_KEY = operation("public_key", Label, Key)
LABELS = operation("labels", Empty, Labels)
CERTIFICATE = operation("certificate", Label, Certificate)
SIGN = operation("sign", ToSign, Signature)
WRAP = operation("wrap", ToWrap, Wrapped)
UNWRAP = operation("unwrap", ToUnwrap, Key)
DESTROY = operation("destroy", Label, Empty)
HEALTHY = operation("healthy", Empty, Flag)


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def core_handlers(hsm: Hsm, clock: Callable[[], int] = wall_ms) -> dict[str, Handler]:
    """The handlers of the core operations over ``hsm``; ``clock`` (ms) is the device's, which
    attestations are checked against."""

    def sign(args: ToSign) -> Signature:
        if args.data.startswith(RESERVED_DOMAINS):
            raise ReservedDomain(
                "the device signs these bytes only through the applet that checks them",
                label=args.label,
            )
        return Signature(hsm.sign(args.label, args.data))

    def wrap(args: ToWrap) -> Wrapped:
        attestation = _attested(hsm, args, clock())
        wrapped = hsm.wrap(args.label, args.recipient, args.context, attestation=attestation)
        return Wrapped.of(wrapped)

    def destroy(args: Label) -> Empty:
        hsm.destroy(args.label)
        return Empty()

    return {
        HELLO.name: lambda _: Hello(protocol=VERSION, kind=hsm.kind),
        SUPPORTS.name: lambda args: Flag(hsm.supports(args.alg)),
        GENERATE.name: lambda args: Key.of(
            hsm.generate(args.label, args.alg, wrappable=args.wrappable)
        ),
        PUBLIC_KEY.name: lambda args: Key.of(hsm.public_key(args.label)),
        LABELS.name: lambda _: Labels(tuple(hsm.labels())),
        CERTIFICATE.name: lambda args: Certificate(hsm.certificate(args.label)),
        SIGN.name: sign,
        WRAP.name: wrap,
        UNWRAP.name: lambda args: Key.of(
            hsm.unwrap(args.transport_label, args.wrapped.key(), args.label, args.context)
        ),
        DESTROY.name: destroy,
        HEALTHY.name: lambda _: Flag(hsm.healthy()),
    }


def _attested(hsm: Hsm, args: ToWrap, now_ms: int) -> "Attestation":
    """The recipient's attestation, checked against the vendor root ``hsm`` holds and to vouch
    for ``args.recipient``; raises :class:`RecipientNotAttested`."""
    if args.attestation is None:
        raise RecipientNotAttested("the device wraps only to an attested transport key")
    root = hsm.certificate(VENDOR_ROOT)
    if root is None:
        raise RecipientNotAttested("the device holds no vendor root to check attestations by")
    # Imported here: the attestation verifier brings the NATS client, which the device process
    # needs for nothing else.
    from messages.attestation import Attestation, AttestationRejected, verify_attestation

    try:
        attestation = Attestation.from_json(args.attestation, "attestation")
        attested = verify_attestation(
            attestation,
            nonce=attestation.nonce,
            vendor_roots=[root],
            allowed_measurements=[attestation.measurement],
            now_ms=now_ms,
        )
    except SchemaViolation as exc:
        raise RecipientNotAttested(f"the attestation does not decode: {exc}") from None
    except AttestationRejected as exc:
        raise RecipientNotAttested(
            f"the attestation does not verify: {exc.args[0]}", reason=exc.reason
        ) from None
    if (attested.transport_alg, attested.transport_key) != (ECDH_P256, args.recipient):
        raise RecipientNotAttested(
            "the attestation vouches for another transport key", node_id=attested.node_id
        )
    return attestation
