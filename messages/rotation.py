"""Signer-key rotation: the operator's countersigning key and each cosigner's log
key move to a new key by a statement both keys sign.

A :class:`KeyRotation` names the signer (``operator``, or a cosigner's log origin), the new
key's ``version`` (the key a verifier pins is version 1 unless its pins say otherwise; each
rotation is the previous version + 1), the ``old`` and ``new`` keys and the time ``at``. Both
keys sign::

    b"hsmfleet/v1/key-rotation\\n" || JCS(rotation without "old_signature" and "new_signature")

It is a digested document, format ``hsmfleet/key-rotation/v1``, kind ``key-rotation``, logged by
cosigners like a stage bundle (the statement's ``fleet`` member carries the signer's name and
its ``seq`` the version). :func:`check_rotation` is the rule cosigners and verifiers share:
the old key is the one in force (:class:`RotationWrongOldKey`), the version is the next one
(:class:`RotationVersionGap`, :class:`StaleRotation`) and both signatures verify
(:class:`RotationSingleSigned`).

A rotated cosigner signs, from the rotation's own entry on, its statements and checkpoints with
the new key; its old key stays good for entries before that index and checkpoints no larger
than it. The operator countersigns with its new key from ``at`` on.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from messages.canonical import canonical
from messages.documents import Digested, require, time_ms
from messages.origin import is_signer_name
from messages.schema import Body
from messages.signing import ALGORITHMS, Signer, is_public_key, key_id, verify_bytes
from messages.verification import VerificationError

FORMAT = "hsmfleet/key-rotation/v1"
KIND = "key-rotation"
DOMAIN = b"hsmfleet/v1/key-rotation\n"
_SIGNATURES = ("old_signature", "new_signature")


@dataclass(frozen=True)
class SignerKey(Body):
    """A signer's public key and its algorithm."""

    alg: str
    public_key: bytes

    def __post_init__(self) -> None:
        require(self.alg in ALGORITHMS, "unknown key algorithm", alg=self.alg)
        require(0 < len(self.public_key) <= 512, "public key must be 1-512 bytes")

    @property
    def kid(self) -> str:
        return key_id(self.alg, self.public_key)

    @classmethod
    def of(cls, signer: Signer) -> SignerKey:
        return cls(signer.alg, signer.public_key)


@dataclass(frozen=True)
class KeyRotation(Digested):
    """The move of ``signer`` from ``old`` to ``new`` (key version ``version``), signed by both."""

    FORMAT = FORMAT
    KIND = KIND

    signer: str
    version: int
    old: SignerKey
    new: SignerKey
    at: str
    old_signature: bytes
    new_signature: bytes
    format: str = field(default=FORMAT, kw_only=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        require(is_signer_name(self.signer), "signer must be operator or a log origin")
        require(self.version >= 2, "a rotation makes key version 2 or later", v=self.version)
        require(self.old.public_key != self.new.public_key, "the new key must differ")
        time_ms(self.at, "at")
        for name in _SIGNATURES:
            require(0 < len(getattr(self, name)) <= 512, f"{name} must be 1-512 bytes")

    @property
    def fleet(self) -> str:
        """What a cosigner's statement names for it: the signer."""
        return self.signer

    @property
    def seq(self) -> int:
        """Its position for a cosigner's statement: the new key's version."""
        return self.version

    def signing_bytes(self) -> bytes:
        """``b"hsmfleet/v1/key-rotation\\n" || JCS(rotation without its two signatures)``."""
        body = {k: v for k, v in self.to_json().items() if k not in _SIGNATURES}
        return DOMAIN + canonical(body)

    @classmethod
    def make(cls, signer: str, version: int, old: Signer, new: Signer, at: str) -> KeyRotation:
        """The rotation of ``signer`` from key ``old`` to ``new``, signed by both."""
        unsigned = cls(
            signer=signer,
            version=version,
            old=SignerKey.of(old),
            new=SignerKey.of(new),
            at=at,
            old_signature=b"-",
            new_signature=b"-",
        )
        data = unsigned.signing_bytes()
        return replace(unsigned, old_signature=old.sign(data), new_signature=new.sign(data))

    def signed_by(self, key: SignerKey, signature: bytes) -> bool:
        """True when ``signature`` by ``key`` verifies over :meth:`signing_bytes`."""
        return verify_bytes(key.alg, key.public_key, signature, self.signing_bytes())


class RotationRefused(VerificationError):
    """A key rotation was refused."""

    kind = "rotation"


class RotationSingleSigned(RotationRefused):
    """The rotation is not signed by both the old and the new key."""

    kind = "rotation_single_signed"


class RotationVersionGap(RotationRefused):
    """The rotation skips a version: it is not the current version + 1."""

    kind = "rotation_version_gap"


class StaleRotation(RotationRefused):
    """The rotation's version is at or below the current one: already superseded."""

    kind = "stale_rotation"


class RotationWrongOldKey(RotationRefused):
    """The rotation's old key is not the signer's key in force."""

    kind = "rotation_wrong_old_key"


class RotationBadKey(RotationRefused):
    """The new key is not one the signer may have: not a valid public key of its algorithm
    (a small-order Ed25519 key, say, which anyone can sign for), or, for a verifier, a key
    another pinned signer has or had, or a cosigner key that is not Ed25519."""

    kind = "rotation_bad_key"


def check_rotation(current: SignerKey, version: int | None, rotation: KeyRotation) -> None:
    """Refuse ``rotation`` unless its old key is ``current`` (the signer's key in force), its
    version is ``version + 1`` (any version when ``version`` is None: the key's version is not
    known), its new key is a valid public key of its algorithm, and both keys signed it.
    Checked in that order."""
    if rotation.old != current:
        raise RotationWrongOldKey(
            "the old key is not the signer's current key",
            signer=rotation.signer,
            old=rotation.old.kid,
            current=current.kid,
        )
    if version is not None and rotation.version <= version:
        raise StaleRotation(
            "version already reached", signer=rotation.signer, v=rotation.version, current=version
        )
    if version is not None and rotation.version != version + 1:
        raise RotationVersionGap(
            "the rotation skips a version",
            signer=rotation.signer,
            v=rotation.version,
            expected=version + 1,
        )
    if not is_public_key(rotation.new.alg, rotation.new.public_key):
        raise RotationBadKey(
            "the new key is not a valid public key of its algorithm",
            signer=rotation.signer,
            alg=rotation.new.alg,
        )
    signed = [
        rotation.signed_by(rotation.old, rotation.old_signature),
        rotation.signed_by(rotation.new, rotation.new_signature),
    ]
    if not all(signed):
        raise RotationSingleSigned(
            "both the old and the new key must sign the rotation",
            signer=rotation.signer,
            old_signed=signed[0],
            new_signed=signed[1],
        )
