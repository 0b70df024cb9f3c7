"""What a verifier carries from one bundle to the next: the log heads it accepted (so a log
cannot be rolled back or forked under it), the fleet epochs it saw, and the signer keys it
walked to by logged key rotations."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from messages.canonical import canonical
from messages.documents import (
    is_digest,
    is_name,
    require,
    time_ms,
    without_defaults,
)
from messages.merkle import (
    HASH_SIZE,
    MAX_TREE_SIZE,
)
from messages.origin import is_origin, is_signer_name
from messages.rotation import (
    SignerKey,
)
from messages.schema import Body
from messages.signing import ALGORITHMS

STATE_FORMAT = "hsmfleet/verifier-state/v1"


@dataclass(frozen=True)
class TreeHead(Body):
    """A log's size and root hash, as the verifier last accepted them."""

    size: int
    root: bytes

    def __post_init__(self) -> None:
        require(0 <= self.size <= MAX_TREE_SIZE, "tree size out of range", size=self.size)
        require(len(self.root) == HASH_SIZE, "root hash must be 32 bytes")


@dataclass(frozen=True)
class KeyInForce(Body):
    """One key of a signer as the verifier walked to it: its version, and where it took over
    (both from the rotation that introduced it; 0 and null for a pinned key): a cosigner's key
    signs its log's statements from entry ``from_index`` on and checkpoints larger than that
    index, and its cosignatures count from ``since`` (the rotation's ``at``) on; the operator's
    countersigns statements logged from ``since`` on."""

    alg: str
    public_key: bytes
    version: int
    from_index: int
    since: str | None

    def __post_init__(self) -> None:
        require(self.alg in ALGORITHMS, "unknown key algorithm", alg=self.alg)
        require(self.version >= 1 and self.from_index >= 0, "bad key version or index")
        if self.since is not None:
            time_ms(self.since, "since")

    @property
    def key(self) -> SignerKey:
        return SignerKey(self.alg, self.public_key)

    @property
    def since_ms(self) -> int:
        return 0 if self.since is None else time_ms(self.since, "since")


@dataclass(frozen=True)
class VerifierState(Body):
    """What a verifier remembers between bundles: the last accepted epoch and artifact digest,
    each pinned log's last accepted tree head, the signer keys it walked to by logged
    rotations (``keys``: signer name -> its keys, oldest first; a signer absent has only its
    pinned key) and the fleets it learnt were retired (``retired``: fleet -> last epoch).
    Empty at first use."""

    epoch: int | None = None
    digest: str | None = None
    checkpoints: dict[str, TreeHead] = field(default_factory=dict)
    keys: dict[str, tuple[KeyInForce, ...]] = field(default_factory=dict)
    retired: dict[str, int] = field(default_factory=dict)
    format: str = field(default=STATE_FORMAT, kw_only=True)

    def __post_init__(self) -> None:
        require(self.format == STATE_FORMAT, "not a verifier state", format=self.format)
        require(
            (self.epoch is None) == (self.digest is None),
            "epoch and digest are set together",
        )
        require(self.epoch is None or self.epoch >= 1, "epoch must be at least 1")
        require(self.digest is None or is_digest(self.digest), "digest must be 64 hex digits")
        require(all(is_origin(log) for log in self.checkpoints), "a log name is not an origin")
        require(all(is_signer_name(name) for name in self.keys), "a bad signer name")
        for name, keys in self.keys.items():
            versions = [k.version for k in keys]
            require(
                bool(keys) and versions == list(range(versions[0], versions[0] + len(keys))),
                "a signer's keys must be consecutive versions",
                signer=name,
            )
        require(all(is_name(f) and e >= 1 for f, e in self.retired.items()), "bad retired fleet")

    def to_json(self) -> dict[str, Any]:
        return without_defaults(super().to_json(), keys={}, retired={})

    def to_bytes(self) -> bytes:
        return canonical(self.to_json())
