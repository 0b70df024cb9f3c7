"""What a verifier trusts, pinned ahead of time: the operator's key, the cosigners' keys
and logs, how many must vouch and how (its vouching policy), and the least quorum a fleet may
have (its floors). Clients carry pins in the app or get them with the app; the verifier reads
them from :class:`Pins`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from messages.artifact import Quorum
from messages.cosignature import CosignatureVerifier
from messages.documents import (
    load_json,
    require,
    without_defaults,
)
from messages.note import Ed25519NoteVerifier
from messages.origin import is_origin
from messages.schema import Body
from messages.signing import ALGORITHMS, ED25519, is_ed25519_public_key, is_public_key
from messages.verification import QuorumBelowFloor

PINS_FORMAT = "hsmfleet/pins/v1"


LOGGED = "logged"
"""Vouching policy: a cosigner vouches only by a verified proof from its own log (it checked
and logged the document)."""


WITNESSED = "witnessed"
"""Vouching policy: a cosigner also vouches by cosigning the checkpoint of another pinned log's
verified proof (it saw that log's state, not the document)."""


VOUCHING = (LOGGED, WITNESSED)


MAX_FLOOR = 1024
"""The largest value of a quorum floor's counts (a quorum has at most 1024 members)."""


@dataclass(frozen=True)
class CosignerPin(Body):
    """A trusted cosigner: its name (its log's origin and its witness name), its Ed25519 key,
    and optionally the base URL of its HTTP log API."""

    name: str
    public_key: bytes
    url: str | None = None
    version: int = 1

    def __post_init__(self) -> None:
        require(is_origin(self.name), "cosigner name must be a valid log origin", name=self.name)
        require(self.version >= 1, "key version must be at least 1", name=self.name)
        require(
            is_ed25519_public_key(self.public_key),
            "cosigner key must be an Ed25519 public key (32 bytes, canonical, not of small order)",
            name=self.name,
        )

    def to_json(self) -> dict[str, Any]:
        return without_defaults(super().to_json(), version=1)

    @property
    def log_verifier(self) -> Ed25519NoteVerifier:
        """Checks this cosigner's signatures on its own checkpoints."""
        return Ed25519NoteVerifier(self.name, self.public_key)

    @property
    def witness_verifier(self) -> CosignatureVerifier:
        """Checks this cosigner's cosignatures on other logs' checkpoints."""
        return CosignatureVerifier(self.name, self.public_key)


@dataclass(frozen=True)
class OperatorPin(Body):
    """The operator's countersigning key."""

    alg: str
    public_key: bytes
    version: int = 1

    def __post_init__(self) -> None:
        require(self.alg in ALGORITHMS, "unknown operator key algorithm", alg=self.alg)
        require(
            is_public_key(self.alg, self.public_key),
            "operator key must be a valid public key of its algorithm (Ed25519: 32 bytes, "
            "canonical, not of small order; P-256: an uncompressed point on the curve)",
        )
        require(self.version >= 1, "key version must be at least 1")

    def to_json(self) -> dict[str, Any]:
        return without_defaults(super().to_json(), version=1)

    @classmethod
    def parse(cls, text: str) -> OperatorPin:
        """An operator pin as its file holds it: the Ed25519 public key in hex, or the pin's
        JSON. Raises :class:`~messages.documents.DocumentError` or a
        :class:`~messages.errors.MessageError` when it is neither."""
        text = text.strip()
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            return cls.from_json(load_json(text))
        return cls(ED25519, raw)


@dataclass(frozen=True)
class QuorumFloor(Body):
    """The weakest quorum a verifier accepts."""

    min_members: int = 1
    min_threshold: int = 1
    min_domains: int = 1
    survive_domain_loss: bool = False

    def __post_init__(self) -> None:
        for name in ("min_members", "min_threshold", "min_domains"):
            value = getattr(self, name)
            require(
                type(value) is int and 1 <= value <= MAX_FLOOR,
                f"{name} must be an integer from 1 to {MAX_FLOOR}",
                value=value,
            )

    def check(self, quorum: Quorum) -> None:
        """Raise :class:`QuorumBelowFloor` if ``quorum`` is weaker than this floor."""
        checks = (
            (len(quorum.members) >= self.min_members, "too few members"),
            (quorum.threshold >= self.min_threshold, "threshold too low"),
            (len(quorum.domains) >= self.min_domains, "too few failure domains"),
            (
                not self.survive_domain_loss or quorum.survives_domain_loss(),
                "losing one failure domain loses the quorum",
            ),
        )
        for holds, reason in checks:
            if not holds:
                raise QuorumBelowFloor(
                    reason,
                    members=len(quorum.members),
                    threshold=quorum.threshold,
                    domains=len(quorum.domains),
                )


@dataclass(frozen=True)
class Pins(Body):
    """What a verifier trusts: cosigners, how many must vouch, the operator, the quorum floor."""

    cosigners: tuple[CosignerPin, ...]
    threshold: int
    operator: OperatorPin
    floor: QuorumFloor = field(default_factory=QuorumFloor)
    max_checkpoint_age: int | None = None
    """Seconds: a log's checkpoint must carry a pinned timestamp at most this old (None: no
    freshness check)."""
    vouching: str = LOGGED
    """Who counts towards ``threshold`` (:data:`LOGGED`, :data:`WITNESSED`)."""
    format: str = field(default=PINS_FORMAT, kw_only=True)

    def __post_init__(self) -> None:
        require(self.format == PINS_FORMAT, "not a pins file", format=self.format)
        names = [c.name for c in self.cosigners]
        require(len(set(names)) == len(names), "cosigner names must be distinct")
        # One key under two names would vouch twice: an Ed25519 cosignature does not sign the
        # witness's name (C2SP tlog-cosignature), so any line can be relabelled to the other.
        keys = [c.public_key for c in self.cosigners]
        require(len(set(keys)) == len(keys), "cosigner keys must be distinct")
        require(
            self.operator.public_key not in keys,
            "the operator's key must not be a cosigner's: the countersignature would add nothing",
        )
        require(
            1 <= self.threshold <= len(names),
            "threshold must be between 1 and the number of cosigners",
            threshold=self.threshold,
        )
        require(
            self.max_checkpoint_age is None or self.max_checkpoint_age > 0,
            "max_checkpoint_age must be a positive number of seconds",
        )
        require(self.vouching in VOUCHING, "unknown vouching policy", vouching=self.vouching)

    def to_json(self) -> dict[str, Any]:
        return without_defaults(super().to_json(), max_checkpoint_age=None, vouching=LOGGED)

    def cosigner(self, name: str) -> CosignerPin | None:
        return next((c for c in self.cosigners if c.name == name), None)
