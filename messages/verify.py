"""Client verification of a validation bundle (normative: ``messages/SPEC.md``).

:func:`verify_bundle` accepts a :class:`~messages.validation.ValidationBundle` only if:

1. the bundle's digest is the SHA-256 of the artifact's canonical bytes, and its fleet was not
   retired (a retirement notice ingested by :func:`ingest_retirement`);
2. the signer-key rotation chain (the bundle's, or one given) walks from the keys the verifier
   holds (which must agree with its pins) to the current ones (:func:`walk_rotations`): each
   rotation from the key in force, to the next version, to a key only its holder can sign for,
   signed by both keys, and logged like a bundle (however long ago);
3. for every log proof from a pinned cosigner: the cosigner's statement signature verifies under
   its key in force at that entry, its statement names this artifact, the checkpoint is a note
   signed by that cosigner's key in force at that size, the inclusion proof leads from the
   artifact's leaf to the checkpoint's root at the statement's index (size and root taken from
   the signed checkpoint), and the operator countersignature over the statement signature
   verifies under an operator key not superseded before the statement was logged; a signature
   by a superseded key where it no longer counts is :class:`SupersededKey`;
4. no pinned cosignature on a checkpoint is dated ahead of the clock by more than
   :data:`MAX_CLOCK_SKEW_S` (:class:`FutureCosignature`); at least ``threshold`` distinct
   pinned cosigners vouch: as the log of a verified proof, and, when the pins' ``vouching`` is
   :data:`WITNESSED`, by a witness cosignature on the checkpoint of one (never the log's own);
   and, if the pins set a maximum checkpoint age, every such checkpoint of the bundle carries a
   pinned timestamp that recent (:class:`StaleView`);
5. each such checkpoint extends the one the verifier stored for that log (never smaller, and a
   consistency proof between them verifies);
6. the epoch is not lower than the last accepted one (and an equal epoch is the same artifact);
7. ``now`` is inside ``[not_before, not_after)``;
8. the quorum meets the pinned floor.

Each failure raises its own :class:`VerificationError`. The verifier's memory is a
:class:`VerifierState` value the caller persists; :func:`verify_bundle` never changes it but
returns the next one inside :class:`Accepted`, so a bundle that fails any check leaves nothing
cached (the TUF client bug of caching before the rollback check cannot happen). Time is an input.
:func:`check_fleet_key` is the check a client makes before using a fleet key (legacy keys only
inside their overlap window).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from messages.artifact import FleetKey, FleetKeyArtifact, Quorum
from messages.canonical import canonical
from messages.checkpoint import (
    Checkpoint,
    CheckpointError,
    SignedCheckpoint,
    UnsignedCheckpoint,
    open_checkpoint,
)
from messages.cosignature import Cosignature, CosignatureVerifier, cosignatures
from messages.documents import DocumentError, is_digest, is_name, load_json, require, time_ms
from messages.errors import HsmfleetError, MessageError
from messages.merkle import (
    HASH_SIZE,
    MAX_TREE_SIZE,
    MerkleError,
    leaf_hash,
    verify_consistency,
    verify_inclusion,
)
from messages.note import Ed25519NoteVerifier, Note, NoteError
from messages.origin import OPERATOR, is_origin, is_signer_name
from messages.retirement import FleetRetired, FleetRetirement
from messages.rotation import (
    KeyRotation,
    RotationBadKey,
    RotationRefused,
    SignerKey,
    StaleRotation,
    check_rotation,
)
from messages.schema import Body
from messages.signing import ALGORITHMS, ED25519, is_ed25519_public_key, is_public_key
from messages.statement import LoggedDocument, Statement
from messages.validation import LoggedNotice, LogProof, ValidationBundle
from messages.verification import VerificationError

PINS_FORMAT = "hsmfleet/pins/v1"
STATE_FORMAT = "hsmfleet/verifier-state/v1"
LOGGED = "logged"
"""Vouching policy: a cosigner vouches only by a verified proof from its own log (it checked
and logged the document)."""
WITNESSED = "witnessed"
"""Vouching policy: a cosigner also vouches by cosigning the checkpoint of another pinned log's
verified proof (it saw that log's state, not the document)."""
VOUCHING = (LOGGED, WITNESSED)
MAX_CLOCK_SKEW_S = 300
"""Seconds a pinned cosignature's timestamp may lie ahead of the verifier's clock."""
MAX_FLOOR = 1024
"""The largest value of a quorum floor's counts (a quorum has at most 1024 members)."""

ConsistencyProofs = Mapping[tuple[str, int, int], Sequence[bytes]]
"""Consistency proofs the caller fetched: ``(log origin, old size, new size) -> hashes``."""


# --- errors ----------------------------------------------------------------------------


class MalformedBundle(VerificationError):
    """The bytes are not a validation bundle."""

    kind = "malformed_bundle"


class DigestMismatch(VerificationError):
    """The artifact does not hash to the bundle's digest: the artifact was tampered with."""

    kind = "digest_mismatch"


class StatementMismatch(VerificationError):
    """A cosigner's statement names another document than this artifact."""

    kind = "statement_mismatch"


class BadStatementSignature(VerificationError):
    """A cosigner's signature over its statement does not verify under its pinned key."""

    kind = "bad_statement_signature"


class BadCountersignature(VerificationError):
    """The operator countersignature is missing, by another key, or does not verify."""

    kind = "bad_countersignature"


class BadCheckpoint(VerificationError):
    """The checkpoint is malformed, not signed by the log, or carries a bad pinned signature."""

    kind = "bad_checkpoint"


class BadInclusionProof(VerificationError):
    """The inclusion proof does not lead from the artifact to the signed checkpoint's root."""

    kind = "bad_inclusion_proof"


class BelowThreshold(VerificationError):
    """Fewer pinned cosigners than the policy's threshold vouch for the artifact."""

    kind = "below_threshold"


class StaleCheckpoint(VerificationError):
    """The log's checkpoint is smaller than the one the verifier stored: a log never shrinks."""

    kind = "stale_checkpoint"


class SplitView(VerificationError):
    """The log's checkpoint is not consistent with the one the verifier stored."""

    kind = "split_view"


class MissingConsistencyProof(VerificationError):
    """No consistency proof links the stored checkpoint to the bundle's; fetch one and retry."""

    kind = "missing_consistency_proof"


class Rollback(VerificationError):
    """The artifact's epoch is lower than the last one accepted."""

    kind = "rollback"


class EpochConflict(VerificationError):
    """The artifact reuses the last accepted epoch with other content."""

    kind = "epoch_conflict"


class NotYetValid(VerificationError):
    """The current time is before the artifact's ``not_before``."""

    kind = "not_yet_valid"


class Expired(VerificationError):
    """The current time is at or after the artifact's ``not_after`` (a freeze attack, or stale)."""

    kind = "expired"


class QuorumBelowFloor(VerificationError):
    """The artifact's quorum parameters are weaker than the verifier's floor."""

    kind = "quorum_below_floor"


class SupersededKey(VerificationError):
    """A signature by a signer's key that a logged rotation superseded, on something signed
    after that rotation (a statement or checkpoint past the rotation's entry, a countersignature
    of a statement logged after it)."""

    kind = "superseded_key"


class RotationNotLogged(RotationRefused):
    """A cosigner's key rotation without a proof from that cosigner's own log: where its new
    key takes over is unknown."""

    kind = "rotation_not_logged_by_signer"


class FutureCosignature(VerificationError):
    """A pinned cosignature on a checkpoint is dated further ahead of the verifier's clock than
    the allowed skew: it would keep a view "fresh" long after it was made."""

    kind = "future_cosignature"


class StatePinsMismatch(VerificationError):
    """The stored state holds, for a pinned signer, another key at the pinned version (or none
    at it): the state was made under other pins."""

    kind = "state_pins_mismatch"


class StaleView(VerificationError):
    """A log's checkpoint carries no pinned timestamp (a witness cosignature, the log's own
    timestamped cosignature) within the verifier's maximum age: a frozen view."""

    kind = "stale_view"


class UnknownFleetKey(VerificationError):
    """The key is not one of the accepted artifact's keys for that role."""

    kind = "unknown_fleet_key"


class LegacyKeyExpired(VerificationError):
    """The key was kept only for a rotation overlap and its ``legacy_until`` has passed."""

    kind = "legacy_key_expired"


class PinsError(HsmfleetError):
    """The pins (trusted keys and policy) are missing or malformed."""

    kind = "malformed_pins"


class StateError(HsmfleetError):
    """The verifier's stored state is unreadable or breaks its rules."""

    kind = "malformed_state"


# --- pins: the keys and policy a verifier trusts ---------------------------------------------


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
        return _without_defaults(super().to_json(), version=1)

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
        return _without_defaults(super().to_json(), version=1)

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
        return _without_defaults(super().to_json(), max_checkpoint_age=None, vouching=LOGGED)

    def cosigner(self, name: str) -> CosignerPin | None:
        return next((c for c in self.cosigners if c.name == name), None)


# --- the verifier's state ------------------------------------------------------------------


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
        return _without_defaults(super().to_json(), keys={}, retired={})

    def to_bytes(self) -> bytes:
        return canonical(self.to_json())


# --- signer keys, walked by logged rotations ------------------------------------------------


def _without_defaults(out: dict[str, Any], **defaults: Any) -> dict[str, Any]:
    """``out`` without the optional members that hold their default (files written before
    those members existed keep their bytes)."""
    for name, default in defaults.items():
        if name in out and out[name] == default:
            del out[name]
    return out


def _pinned_key(pins: Pins, name: str) -> KeyInForce | None:
    """Signer ``name``'s pinned key (None for a signer not pinned)."""
    if name == OPERATOR:
        operator = pins.operator
        return KeyInForce(operator.alg, operator.public_key, operator.version, 0, None)
    pin = pins.cosigner(name)
    return None if pin is None else KeyInForce(ED25519, pin.public_key, pin.version, 0, None)


def pinned_keys(pins: Pins, state: VerifierState, name: str) -> tuple[KeyInForce, ...]:
    """The keys of signer ``name`` (``operator`` or a pinned cosigner's origin), oldest first:
    those ``state`` walked to by rotations, else the pinned one; empty for a signer not pinned.

    The walked keys must hold the pinned key at the pinned version (:class:`StatePinsMismatch`
    otherwise: the state was made under other pins); a pin of a newer version than any walked
    stands alone (the pins moved on past the state)."""
    pinned = _pinned_key(pins, name)
    if pinned is None:
        return ()
    walked = state.keys.get(name)
    if walked is None or pinned.version > walked[-1].version:
        return (pinned,)
    held = next((k for k in walked if k.version == pinned.version), None)
    if held is None or held.key != pinned.key:
        raise StatePinsMismatch(
            "the stored keys do not hold the pinned key at its version",
            signer=name,
            version=pinned.version,
        )
    return walked


@dataclass(frozen=True)
class Keyring:
    """Every pinned signer's keys as the verifier knows them: which key signs what."""

    keys: dict[str, tuple[KeyInForce, ...]]

    @classmethod
    def of(cls, pins: Pins, state: VerifierState) -> Keyring:
        names = [OPERATOR, *(c.name for c in pins.cosigners)]
        return cls({name: pinned_keys(pins, state, name) for name in names})

    def current(self, name: str) -> KeyInForce:
        return self.keys[name][-1]

    def with_key(self, name: str, key: KeyInForce) -> Keyring:
        return Keyring({**self.keys, name: (*self.keys[name], key)})

    def log_key(self, log: str, position: int) -> KeyInForce:
        """The key of ``log`` that signs entry ``position``'s statement and the checkpoint of
        ``position + 1`` entries: the last to take over at or before it."""
        keys = self.keys[log]
        return next((k for k in reversed(keys) if k.from_index <= position), keys[0])

    def witnesses(self) -> list[CosignatureVerifier]:
        """Cosignature keys of every pinned cosigner, superseded ones included."""
        return [
            CosignatureVerifier(name, k.public_key)
            for name, keys in self.keys.items()
            if name != OPERATOR
            for k in keys
        ]

    def in_force(self, lines: Iterable[Cosignature]) -> list[Cosignature]:
        """The cosignatures among ``lines`` (verified ones) made by a pinned cosigner's key in
        force at their time: its current key, or a superseded key dated before its
        successor's ``since``."""
        out = []
        for line in lines:
            keys = self.keys.get(line.name, ())
            for i, k in enumerate(keys):
                if CosignatureVerifier(line.name, k.public_key).key_id == line.key_id:
                    if i + 1 == len(keys) or line.timestamp * 1000 < keys[i + 1].since_ms:
                        out.append(line)
                    break
        return out

    def walked(self) -> dict[str, tuple[KeyInForce, ...]]:
        """The signers that rotated at least once, for the verifier's state."""
        return {name: keys for name, keys in self.keys.items() if len(keys) > 1}


@dataclass(frozen=True)
class Walk:
    """The result of walking a rotation chain: the keys reached and the rotations taken."""

    keyring: Keyring
    steps: tuple[KeyRotation, ...]


def _new_key(rotation: KeyRotation, notice: LoggedNotice, keyring: Keyring) -> KeyInForce:
    """The key ``rotation`` introduces and where it takes over; :class:`RotationBadKey` if it
    is a key a pinned signer has or had, or a cosigner's key that is not Ed25519."""
    new = rotation.new
    known = {k.public_key for keys in keyring.keys.values() for k in keys}
    if new.public_key in known:
        raise RotationBadKey("the new key is a pinned signer's key", signer=rotation.signer)
    if rotation.signer == OPERATOR:
        return KeyInForce(new.alg, new.public_key, rotation.version, 0, rotation.at)
    if new.alg != ED25519:
        raise RotationBadKey("a cosigner's new key must be an Ed25519 key", signer=rotation.signer)
    own = next((p for p in notice.proofs if p.log == rotation.signer), None)
    if own is None:
        raise RotationNotLogged(
            "a cosigner's rotation must be proven by its own log", signer=rotation.signer
        )
    return KeyInForce(new.alg, new.public_key, rotation.version, own.statement.index, rotation.at)


def walk_rotations(
    notices: Sequence[LoggedNotice], pins: Pins, state: VerifierState, now_ms: int
) -> Walk:
    """Walk from the keys ``state`` (or the pins) holds to the current ones, one logged
    rotation at a time, in the order given. A rotation of a signer not pinned is ignored, one
    already walked (same version, same new key) skipped. Each other must: have the current key
    as old key, the next version, a valid new key, both signatures
    (:func:`messages.rotation.check_rotation`), a new key no pinned signer has or had, and be
    logged and vouched for like a bundle (k pinned cosigners, countersigned), checked with the
    keys it introduces. A rotation is a fact of the past: its checkpoints are not held to the
    pins' maximum age (a client that was offline long walks an old chain as it was logged).
    Raises the :class:`VerificationError` of the first refusal."""
    keyring = Keyring.of(pins, state)
    steps: list[KeyRotation] = []
    for notice in notices:
        rotation = notice.logged
        if not isinstance(rotation, KeyRotation):
            raise MalformedBundle("a rotation chain holds only key rotations")
        keys = keyring.keys.get(rotation.signer)
        if not keys:
            continue
        current = keys[-1]
        if rotation.version <= current.version:
            walked = next((k for k in keys if k.version == rotation.version), None)
            if walked is None or walked.key == rotation.new:
                continue
            raise StaleRotation(
                "another key was walked to for this version",
                signer=rotation.signer,
                v=rotation.version,
            )
        check_rotation(current.key, current.version, rotation)
        keyring = keyring.with_key(rotation.signer, _new_key(rotation, notice, keyring))
        _verify_logged(rotation, notice.proofs, keyring, pins, now_ms)
        steps.append(rotation)
    return Walk(keyring, tuple(steps))


# --- verification ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Accepted:
    """A bundle that passed every check: its artifact, who vouched, the rotations walked, and
    the state to persist."""

    artifact: FleetKeyArtifact
    digest: str
    vouchers: tuple[str, ...]
    state: VerifierState
    rotations: tuple[KeyRotation, ...] = ()


@dataclass(frozen=True)
class _Vouched:
    """A verified log proof: the log's tree head, the pinned cosigners it shows vouching, and
    the checkpoint's freshness (its newest pinned timestamp, POSIX seconds; 0 without one)."""

    proof: LogProof
    head: TreeHead
    vouchers: frozenset[str]
    freshness: int


def parse_bundle(data: bytes | str | Any) -> ValidationBundle:
    """Decode a validation bundle from JSON text or a decoded object (:class:`MalformedBundle`)."""
    try:
        raw = load_json(data) if isinstance(data, bytes | str) else data
        bundle = ValidationBundle.from_json(raw)
        bundle.rotations  # noqa: B018 - the optional chain must decode too
        return bundle
    except (DocumentError, MessageError) as exc:
        raise MalformedBundle(f"not a validation bundle: {exc}") from exc


def parse_notice(data: bytes | str | Any) -> LoggedNotice:
    """Decode a logged notice (key rotation, fleet retirement) (:class:`MalformedBundle`)."""
    try:
        raw = load_json(data) if isinstance(data, bytes | str) else data
        return LoggedNotice.from_json(raw)
    except (DocumentError, MessageError) as exc:
        raise MalformedBundle(f"not a logged notice: {exc}") from exc


def needed_proofs(
    bundle: ValidationBundle, pins: Pins, state: VerifierState
) -> list[tuple[str, int, int, str | None]]:
    """``(origin, old size, new size, url)`` of each consistency proof the verifier will need
    and the bundle does not carry; the caller fetches them from the log before verifying."""
    out = []
    for proof in bundle.proofs:
        pin = pins.cosigner(proof.log)
        stored = state.checkpoints.get(proof.log)
        if pin is None or stored is None or stored.size == 0:
            continue
        size = _claimed_size(proof.checkpoint)
        if size is None:
            continue  # verification will refuse the checkpoint itself
        carried = {c.old_size for c in proof.consistency}
        if stored.size < size and stored.size not in carried:
            out.append((proof.log, stored.size, size, pin.url))
    return out


def _claimed_size(checkpoint: str) -> int | None:
    """The size a checkpoint note claims, before any signature is checked."""
    try:
        return Checkpoint.from_text(Note.parse(checkpoint).text).size
    except (NoteError, CheckpointError):
        return None


def check_logged(
    pin: CosignerPin,
    document: LoggedDocument,
    statement: Statement,
    signature: bytes,
    inclusion: Sequence[bytes],
    checkpoint: str,
    witnesses: Iterable[CosignatureVerifier] = (),
    keys: Sequence[KeyInForce] = (),
) -> SignedCheckpoint:
    """Check one cosigner's answer for ``document``: its statement signature verifies under
    ``pin`` (checked before its content is read), the statement names the document in ``pin``'s
    log, ``checkpoint`` is a note signed by ``pin`` as the log (any signature by ``witnesses`` on
    it must verify too), and the inclusion proof leads from the document's leaf at the
    statement's index to the root of that checkpoint, whose size it is.

    ``keys`` (oldest first), when given, are the log's keys walked by rotations: the statement
    must be signed by the one in force at its index and the checkpoint by the one in force at
    its size; a signature by another of them is :class:`SupersededKey`.
    Returns the opened checkpoint."""
    log = pin.name
    ring = Keyring({log: tuple(keys) or (KeyInForce(ED25519, pin.public_key, 1, 0, None),)})
    expected = ring.log_key(log, statement.index)
    if not statement.verify(expected.public_key, signature):
        if any(statement.verify(k.public_key, signature) for k in ring.keys[log]):
            raise SupersededKey("statement signed by a superseded key", log=log)
        raise BadStatementSignature("statement signature does not verify", log=log)
    if statement.log != log or not statement.describes(document):
        raise StatementMismatch("statement names another document or log", log=log)
    signed = _open_checkpoint(checkpoint, ring, log, list(witnesses))
    head = signed.checkpoint
    try:
        verify_inclusion(
            statement.index, head.size, leaf_hash(document.to_bytes()), inclusion, head.root
        )
    except MerkleError as exc:
        raise BadInclusionProof(f"inclusion proof refused: {exc}", log=log) from exc
    return signed


def _open_checkpoint(
    checkpoint: str, ring: Keyring, log: str, witnesses: list[CosignatureVerifier]
) -> SignedCheckpoint:
    """Step 3.3, in its order: the note and its text are read first (which of the log's keys
    signs it follows from the size the text claims), then every known key's signature must
    verify, then the log's key in force must be among them (:class:`SupersededKey` if another
    of the log's keys signed instead)."""
    try:
        note = Note.parse(checkpoint)
        claimed = Checkpoint.from_text(note.text)
    except (NoteError, CheckpointError) as exc:
        raise BadCheckpoint(f"checkpoint refused: {exc}", log=log) from exc
    if claimed.origin != log:
        raise BadCheckpoint("checkpoint is from another log", log=log, origin=claimed.origin)
    signer = ring.log_key(log, claimed.size - 1)
    try:
        return open_checkpoint(note, log, Ed25519NoteVerifier(log, signer.public_key), witnesses)
    except UnsignedCheckpoint as exc:
        others = [k for k in ring.keys[log] if k != signer]
        if any(_log_signed(note, log, k) for k in others):
            raise SupersededKey("checkpoint signed by a superseded key", log=log) from exc
        raise BadCheckpoint(f"checkpoint refused: {exc}", log=log) from exc
    except (NoteError, CheckpointError) as exc:
        raise BadCheckpoint(f"checkpoint refused: {exc}", log=log) from exc


def _log_signed(checkpoint: Note, log: str, key: KeyInForce) -> bool:
    try:
        open_checkpoint(checkpoint, log, Ed25519NoteVerifier(log, key.public_key))
    except (NoteError, CheckpointError):
        return False
    return True


def _check_countersignature(keyring: Keyring, proof: LogProof) -> None:
    """The operator countersigned with its key in force when the statement was logged, or a
    later one (a newer key may countersign older statements); an older key is superseded."""
    keys = keyring.keys[OPERATOR]
    logged = time_ms(proof.statement.logged_at, "logged_at")
    for i, key in enumerate(keys):
        if proof.countersignature.verify(key.alg, key.public_key, proof.signature):
            if i + 1 < len(keys) and keys[i + 1].since_ms <= logged:
                raise SupersededKey(
                    "countersigned by an operator key superseded before the statement",
                    log=proof.log,
                    version=key.version,
                )
            return
    raise BadCountersignature("countersignature is not the pinned operator's", log=proof.log)


def _check_log_proof(
    proof: LogProof, keyring: Keyring, document: LoggedDocument, pins: Pins, now_ms: int
) -> _Vouched:
    """Verify one pinned cosigner's proof (steps 3.1 to 3.6 of the algorithm)."""
    pin = CosignerPin(proof.log, keyring.current(proof.log).public_key)
    witnesses = keyring.witnesses()
    signed = check_logged(
        pin,
        document,
        proof.statement,
        proof.signature,
        proof.inclusion,
        proof.checkpoint,
        witnesses,
        keyring.keys[proof.log],
    )
    _check_countersignature(keyring, proof)
    dated = keyring.in_force(cosignatures(signed, witnesses))
    ahead = sorted({c.name for c in dated if c.timestamp * 1000 > now_ms + MAX_CLOCK_SKEW_S * 1000})
    if ahead:
        raise FutureCosignature(
            "a cosignature is dated ahead of the clock",
            log=proof.log,
            cosigners=ahead,
            max_skew_s=MAX_CLOCK_SKEW_S,
        )
    vouchers = {proof.log}
    if pins.vouching == WITNESSED:
        vouchers |= witnesses_of(dated, proof.log)
    freshness = max((c.timestamp for c in dated), default=0)
    head = TreeHead(signed.checkpoint.size, signed.checkpoint.root)
    return _Vouched(proof, head, frozenset(vouchers), freshness)


def witnesses_of(dated: Iterable[Cosignature], log: str) -> set[str]:
    """The witnesses among ``dated`` (pinned cosignatures in force, :meth:`Keyring.in_force`)
    on a checkpoint of ``log``: every cosigner but the log itself, whose own timestamped
    cosignature (its freshness) never makes it its own witness."""
    return {c.name for c in dated} - {log}


def _verify_logged(
    document: LoggedDocument,
    proofs: Sequence[LogProof],
    keyring: Keyring,
    pins: Pins,
    now_ms: int,
) -> tuple[list[_Vouched], set[str]]:
    """Steps 3 and 4 of the algorithm for any logged document: each pinned log's proof, then
    the threshold. Returns the verified proofs and who vouched."""
    verified = [
        _check_log_proof(proof, keyring, document, pins, now_ms)
        for proof in proofs
        if pins.cosigner(proof.log) is not None  # a log this verifier does not pin proves nothing
    ]
    vouchers = set().union(*(v.vouchers for v in verified))
    if len(vouchers) < pins.threshold:
        raise BelowThreshold(
            "too few pinned cosigners vouch for the document",
            vouchers=sorted(vouchers),
            threshold=pins.threshold,
            vouching=pins.vouching,
        )
    return verified, vouchers


def _check_fresh(verified: Sequence[_Vouched], pins: Pins, now_ms: int) -> None:
    """Step 4.1: with a maximum age pinned, every verified checkpoint carries a pinned
    timestamp at most that old (:class:`StaleView`)."""
    max_age = pins.max_checkpoint_age
    if max_age is None:
        return
    stale = [v.proof.log for v in verified if now_ms - v.freshness * 1000 > max_age * 1000]
    if stale:
        raise StaleView(
            "a checkpoint has no pinned timestamp within the maximum age",
            logs=stale,
            max_age=max_age,
        )


def check_extends(
    log: str, stored: TreeHead, head: TreeHead, proof: Sequence[bytes] | None
) -> None:
    """Check that the tree ``head`` of ``log`` extends the ``stored`` one: never smaller, and
    ``proof`` (None if the caller has none) a consistency proof between them."""
    if head.size < stored.size:
        raise StaleCheckpoint(
            "checkpoint is older than the one stored", log=log, size=head.size, stored=stored.size
        )
    if 0 < stored.size < head.size and proof is None:
        raise MissingConsistencyProof(
            "no consistency proof from the stored checkpoint",
            log=log,
            old=stored.size,
            new=head.size,
        )
    try:
        verify_consistency(stored.size, head.size, stored.root, head.root, proof or ())
    except MerkleError as exc:
        raise SplitView(
            f"checkpoint does not extend the stored one: {exc}",
            log=log,
            old=stored.size,
            new=head.size,
        ) from exc


def _consistency_proof(
    proof: LogProof, stored: TreeHead, head: TreeHead, extra: ConsistencyProofs
) -> Sequence[bytes] | None:
    carried = next((c.proof for c in proof.consistency if c.old_size == stored.size), None)
    if carried is not None:
        return carried
    return extra.get((proof.log, stored.size, head.size))


def verify_bundle(
    bundle: ValidationBundle | bytes | str,
    pins: Pins,
    state: VerifierState,
    now_ms: int,
    proofs: ConsistencyProofs | None = None,
    rotations: Sequence[LoggedNotice] | None = None,
) -> Accepted:
    """Accept ``bundle`` at time ``now_ms`` (ms since the epoch) or raise the
    :class:`VerificationError` of the first check that fails, in the order of the module doc.

    ``state`` is what the verifier stored after its last accepted bundle; persist
    ``Accepted.state`` only when this returns. ``proofs`` adds consistency proofs fetched from
    the logs (see :func:`needed_proofs`). ``rotations`` is the chain of signer-key rotation
    notices to walk first (default: the chain the bundle carries, if any).
    """
    if not isinstance(bundle, ValidationBundle):
        bundle = parse_bundle(bundle)
    artifact = bundle.artifact
    digest = artifact.digest
    if bundle.digest != digest:
        raise DigestMismatch("artifact does not match the digest", digest=bundle.digest)
    if artifact.fleet in state.retired:
        raise FleetRetired(
            "the fleet was retired", fleet=artifact.fleet, last=state.retired[artifact.fleet]
        )
    if rotations is None:
        try:
            rotations = bundle.rotations
        except (DocumentError, MessageError) as exc:
            raise MalformedBundle(f"not a rotation chain: {exc}") from exc
    walk = walk_rotations(rotations, pins, state, now_ms)
    logged, vouchers = _verify_logged(artifact, bundle.proofs, walk.keyring, pins, now_ms)
    _check_fresh(logged, pins, now_ms)

    for item in logged:
        stored = state.checkpoints.get(item.proof.log)
        if stored is not None:
            path = _consistency_proof(item.proof, stored, item.head, proofs or {})
            check_extends(item.proof.log, stored, item.head, path)

    if state.epoch is not None:
        if artifact.epoch < state.epoch:
            raise Rollback(
                "epoch is lower than the last accepted", epoch=artifact.epoch, last=state.epoch
            )
        if artifact.epoch == state.epoch and digest != state.digest:
            raise EpochConflict(
                "another artifact was accepted for this epoch", epoch=artifact.epoch
            )

    if now_ms < artifact.not_before_ms:
        raise NotYetValid("artifact is not valid yet", not_before=artifact.not_before)
    if now_ms >= artifact.not_after_ms:
        raise Expired("artifact has expired", not_after=artifact.not_after)

    pins.floor.check(artifact.quorum)

    checkpoints = dict(state.checkpoints)
    checkpoints.update({item.proof.log: item.head for item in logged})
    next_state = replace(
        state,
        epoch=artifact.epoch,
        digest=digest,
        checkpoints=checkpoints,
        keys=walk.keyring.walked(),
    )
    return Accepted(artifact, digest, tuple(sorted(vouchers)), next_state, walk.steps)


def ingest_rotations(
    notices: Sequence[LoggedNotice], pins: Pins, state: VerifierState, now_ms: int
) -> tuple[VerifierState, tuple[KeyRotation, ...]]:
    """Walk a rotation chain on its own (:func:`walk_rotations`): the state that knows the
    keys reached, and the rotations taken. ``state`` is not changed."""
    walk = walk_rotations(notices, pins, state, now_ms)
    return replace(state, keys=walk.keyring.walked()), walk.steps


def ingest_retirement(
    notice: LoggedNotice | bytes | str,
    pins: Pins,
    state: VerifierState,
    now_ms: int,
    rotations: Sequence[LoggedNotice] = (),
) -> VerifierState:
    """Check a fleet retirement notice like a validation bundle (k pinned cosigners logged it,
    countersigned; after walking ``rotations``) and return the state that refuses the fleet
    from now on (:class:`~messages.retirement.FleetRetired`). A retirement stays true however
    old its checkpoints are: they are not held to the pins' maximum age. ``state`` is not
    changed; :class:`VerificationError` on any refusal."""
    if not isinstance(notice, LoggedNotice):
        notice = parse_notice(notice)
    retirement = notice.logged
    if not isinstance(retirement, FleetRetirement):
        raise MalformedBundle("not a fleet retirement notice", kind=retirement.KIND)
    walk = walk_rotations(rotations, pins, state, now_ms)
    _verify_logged(retirement, notice.proofs, walk.keyring, pins, now_ms)
    retired = {**state.retired, retirement.fleet: retirement.last_epoch}
    return replace(state, keys=walk.keyring.walked(), retired=retired)


def check_fleet_key(
    artifact: FleetKeyArtifact, public_key: bytes, role: str, now_ms: int
) -> FleetKey:
    """Check, before use at ``now_ms``, that ``public_key`` is a key of the accepted
    ``artifact`` for ``role``: a current key, or a legacy key before its ``legacy_until``.
    Raises :class:`UnknownFleetKey`, :class:`LegacyKeyExpired`, or :class:`Expired` /
    :class:`NotYetValid` outside the artifact's window."""
    if now_ms < artifact.not_before_ms:
        raise NotYetValid("artifact is not valid yet", not_before=artifact.not_before)
    if now_ms >= artifact.not_after_ms:
        raise Expired("artifact has expired", not_after=artifact.not_after)
    key = next((k for k in artifact.keys if (k.role, k.public_key) == (role, public_key)), None)
    if key is None:
        raise UnknownFleetKey(
            "not a key of the fleet for this role", fleet=artifact.fleet, role=role
        )
    if not key.usable_at(now_ms):
        raise LegacyKeyExpired(
            "the legacy key's overlap window has ended",
            fleet=artifact.fleet,
            role=role,
            legacy_until=key.legacy_until,
        )
    return key
