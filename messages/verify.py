"""Client verification of a validation bundle (DESIGN 5.4, normative; ``messages/SPEC.md``).

:func:`verify_bundle` accepts a :class:`~messages.validation.ValidationBundle` only if:

1. the bundle's digest is the SHA-256 of the artifact's canonical bytes;
2. for every log proof from a pinned cosigner: the cosigner's statement signature verifies,
   its statement names this artifact, the checkpoint is a note signed by that cosigner as
   the log, the inclusion proof leads from the artifact's leaf to the checkpoint's root at the
   statement's index (size and root taken from the signed checkpoint), and the operator
   countersignature over the statement signature verifies under the pinned operator key;
3. at least ``threshold`` distinct pinned cosigners vouch: as the log of a verified proof, or by
   a witness cosignature on the checkpoint of one;
4. each such checkpoint extends the one the verifier stored for that log (never smaller, and a
   consistency proof between them verifies);
5. the epoch is not lower than the last accepted one (and an equal epoch is the same artifact);
6. ``now`` is inside ``[not_before, not_after)``;
7. the quorum meets the pinned floor.

Each failure raises its own :class:`VerificationError`. The verifier's memory is a
:class:`VerifierState` value the caller persists; :func:`verify_bundle` never changes it but
returns the next one inside :class:`Accepted`, so a bundle that fails any check leaves nothing
cached (the TUF client bug of caching before the rollback check cannot happen). Time is an input.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from messages.artifact import FleetKeyArtifact, Quorum
from messages.canonical import canonical
from messages.checkpoint import Checkpoint, CheckpointError, SignedCheckpoint, open_checkpoint
from messages.cosignature import CosignatureVerifier, cosignatures
from messages.documents import DocumentError, is_digest, load_json, require
from messages.errors import HsmfleetError, MessageError
from messages.merkle import (
    HASH_SIZE,
    MAX_TREE_SIZE,
    MerkleError,
    leaf_hash,
    verify_consistency,
    verify_inclusion,
)
from messages.note import Ed25519NoteVerifier, Note, NoteError, is_ed25519_public_key
from messages.schema import Body
from messages.signing import ALGORITHMS, ED25519
from messages.statement import LoggedDocument, Statement, is_origin
from messages.validation import LogProof, ValidationBundle

PINS_FORMAT = "hsmfleet/pins/v1"
STATE_FORMAT = "hsmfleet/verifier-state/v1"

ConsistencyProofs = Mapping[tuple[str, int, int], Sequence[bytes]]
"""Consistency proofs the caller fetched: ``(log origin, old size, new size) -> hashes``."""


# --- errors ----------------------------------------------------------------------------


class VerificationError(HsmfleetError):
    """A validation bundle was refused; ``kind`` says which check failed."""

    kind = "verification"


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


class PinsError(HsmfleetError):
    """The pins (trusted keys and policy) are missing or malformed."""

    kind = "pins"


class StateError(HsmfleetError):
    """The verifier's stored state is unreadable."""

    kind = "verifier_state"


# --- pins: the keys and policy a verifier trusts ---------------------------------------------


@dataclass(frozen=True)
class CosignerPin(Body):
    """A trusted cosigner: its name (its log's origin and its witness name), its Ed25519 key,
    and optionally the base URL of its HTTP log API."""

    name: str
    public_key: bytes
    url: str | None = None

    def __post_init__(self) -> None:
        require(is_origin(self.name), "cosigner name must be a valid log origin", name=self.name)
        require(
            is_ed25519_public_key(self.public_key),
            "cosigner key must be an Ed25519 public key (32 bytes, canonical, not of small order)",
            name=self.name,
        )

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

    def __post_init__(self) -> None:
        require(self.alg in ALGORITHMS, "unknown operator key algorithm", alg=self.alg)
        require(
            self.alg != ED25519 or is_ed25519_public_key(self.public_key),
            "operator key must be an Ed25519 public key (32 bytes, canonical, not of small order)",
        )


@dataclass(frozen=True)
class QuorumFloor(Body):
    """The weakest quorum a verifier accepts."""

    min_members: int = 1
    min_threshold: int = 1
    min_domains: int = 1
    survive_domain_loss: bool = False

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

    def cosigner(self, name: str) -> CosignerPin | None:
        return next((c for c in self.cosigners if c.name == name), None)

    @classmethod
    def load(cls, path: Path) -> Pins:
        """Read pins from a JSON file."""
        try:
            return cls.from_json(load_json(Path(path).read_bytes()))
        except (OSError, DocumentError, MessageError) as exc:
            raise PinsError(f"cannot read pins: {exc}", path=str(path)) from exc

    def dump(self, path: Path) -> None:
        Path(path).write_bytes(canonical(self.to_json()) + b"\n")


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
class VerifierState(Body):
    """What a verifier remembers between bundles: the last accepted epoch and artifact digest,
    and each pinned log's last accepted tree head. Empty at first use."""

    epoch: int | None = None
    digest: str | None = None
    checkpoints: dict[str, TreeHead] = field(default_factory=dict)
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

    def to_bytes(self) -> bytes:
        return canonical(self.to_json())

    @classmethod
    def load(cls, path: Path) -> VerifierState:
        """The state in ``path``, or the empty state if the file does not exist."""
        path = Path(path)
        if not path.exists():
            return cls()
        try:
            return cls.from_json(load_json(path.read_bytes()))
        except (OSError, DocumentError, MessageError) as exc:
            raise StateError(f"cannot read verifier state: {exc}", path=str(path)) from exc

    def save(self, path: Path) -> None:
        """Write the state atomically (write a temporary file, then rename it into place)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(self.to_bytes() + b"\n")
        tmp.replace(path)


# --- verification ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Accepted:
    """A bundle that passed every check: its artifact, who vouched, and the state to persist."""

    artifact: FleetKeyArtifact
    digest: str
    vouchers: tuple[str, ...]
    state: VerifierState


@dataclass(frozen=True)
class _Logged:
    proof: LogProof
    head: TreeHead


def parse_bundle(data: bytes | str | Any) -> ValidationBundle:
    """Decode a validation bundle from JSON text or a decoded object (:class:`MalformedBundle`)."""
    try:
        raw = load_json(data) if isinstance(data, bytes | str) else data
        return ValidationBundle.from_json(raw)
    except (DocumentError, MessageError) as exc:
        raise MalformedBundle(f"not a validation bundle: {exc}") from exc


def needed_proofs(bundle: ValidationBundle, pins: Pins, state: VerifierState) -> list[tuple]:
    """``(origin, old size, new size, url)`` of each consistency proof the verifier will need
    and the bundle does not carry; the caller fetches them from the log before verifying."""
    out = []
    for proof in bundle.proofs:
        pin = pins.cosigner(proof.log)
        stored = state.checkpoints.get(proof.log)
        if pin is None or stored is None or stored.size == 0:
            continue
        try:
            size = Checkpoint.from_text(Note.parse(proof.checkpoint).text).size
        except (NoteError, CheckpointError):
            continue  # verification will refuse the checkpoint itself
        carried = {c.old_size for c in proof.consistency}
        if stored.size < size and stored.size not in carried:
            out.append((proof.log, stored.size, size, pin.url))
    return out


def check_logged(
    pin: CosignerPin,
    document: LoggedDocument,
    statement: Statement,
    signature: bytes,
    inclusion: Sequence[bytes],
    checkpoint: str,
    witnesses: Iterable[CosignatureVerifier] = (),
) -> SignedCheckpoint:
    """Check one cosigner's answer for ``document``: its statement signature verifies under
    ``pin`` (checked before its content is read), the statement names the document in ``pin``'s
    log, ``checkpoint`` is a note signed by ``pin`` as the log (any signature by ``witnesses`` on
    it must verify too), and the inclusion proof leads from the document's leaf at the
    statement's index to the root of that checkpoint, whose size it is.
    Returns the opened checkpoint."""
    log = pin.name
    if not statement.verify(pin.public_key, signature):
        raise BadStatementSignature("statement signature does not verify", log=log)
    if statement.log != log or not statement.describes(document):
        raise StatementMismatch("statement names another document or log", log=log)
    try:
        signed = open_checkpoint(checkpoint, log, pin.log_verifier, witnesses)
    except (NoteError, CheckpointError) as exc:
        raise BadCheckpoint(f"checkpoint refused: {exc}", log=log) from exc
    head = signed.checkpoint
    try:
        verify_inclusion(
            statement.index, head.size, leaf_hash(document.to_bytes()), inclusion, head.root
        )
    except MerkleError as exc:
        raise BadInclusionProof(f"inclusion proof refused: {exc}", log=log) from exc
    return signed


def _check_log_proof(
    proof: LogProof, pin: CosignerPin, pins: Pins, artifact: FleetKeyArtifact
) -> tuple[TreeHead, set[str]]:
    """Verify one pinned cosigner's proof; return the tree head and who vouched through it."""
    witnesses = [c.witness_verifier for c in pins.cosigners]
    signed = check_logged(
        pin,
        artifact,
        proof.statement,
        proof.signature,
        proof.inclusion,
        proof.checkpoint,
        witnesses,
    )
    if not proof.countersignature.verify(
        pins.operator.alg, pins.operator.public_key, proof.signature
    ):
        raise BadCountersignature("countersignature is not the pinned operator's", log=proof.log)
    vouchers = {proof.log} | {c.name for c in cosignatures(signed, witnesses)}
    return TreeHead(signed.checkpoint.size, signed.checkpoint.root), vouchers


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
) -> Accepted:
    """Accept ``bundle`` at time ``now_ms`` (ms since the epoch) or raise the
    :class:`VerificationError` of the first check that fails, in the order of the module doc.

    ``state`` is what the verifier stored after its last accepted bundle; persist
    ``Accepted.state`` only when this returns. ``proofs`` adds consistency proofs fetched from
    the logs (see :func:`needed_proofs`).
    """
    if not isinstance(bundle, ValidationBundle):
        bundle = parse_bundle(bundle)
    artifact = bundle.artifact
    digest = artifact.digest
    if bundle.digest != digest:
        raise DigestMismatch("artifact does not match the digest", digest=bundle.digest)

    logged: list[_Logged] = []
    vouchers: set[str] = set()
    for proof in bundle.proofs:
        pin = pins.cosigner(proof.log)
        if pin is None:
            continue  # a log this verifier does not pin proves nothing to it
        head, vouched = _check_log_proof(proof, pin, pins, artifact)
        logged.append(_Logged(proof, head))
        vouchers |= vouched
    if len(vouchers) < pins.threshold:
        raise BelowThreshold(
            "too few pinned cosigners vouch for the artifact",
            vouchers=sorted(vouchers),
            threshold=pins.threshold,
        )

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
    next_state = VerifierState(epoch=artifact.epoch, digest=digest, checkpoints=checkpoints)
    return Accepted(artifact, digest, tuple(sorted(vouchers)), next_state)
