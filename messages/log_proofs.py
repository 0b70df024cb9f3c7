"""Checking that a document was logged: each cosigner's proof (its signed checkpoint, the
inclusion of the statement, the operator's countersignature, the witnesses' cosignatures),
freshness, consistency with the log heads a verifier accepted before, and which consistency
proofs it still needs."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from messages.checkpoint import (
    Checkpoint,
    CheckpointError,
    SignedCheckpoint,
    UnsignedCheckpoint,
    open_checkpoint,
)
from messages.cosignature import Cosignature, CosignatureVerifier, cosignatures
from messages.documents import time_ms
from messages.keyring import Keyring
from messages.merkle import (
    MerkleError,
    leaf_hash,
    verify_consistency,
    verify_inclusion,
)
from messages.note import Ed25519NoteVerifier, Note, NoteError
from messages.origin import OPERATOR
from messages.pins import WITNESSED, CosignerPin, Pins
from messages.signing import ED25519
from messages.statement import LoggedDocument, Statement
from messages.validation import LogProof, ValidationBundle
from messages.verification import (
    BadCheckpoint,
    BadCountersignature,
    BadInclusionProof,
    BadStatementSignature,
    BelowThreshold,
    FutureCosignature,
    MissingConsistencyProof,
    SplitView,
    StaleCheckpoint,
    StaleView,
    StatementMismatch,
    SupersededKey,
)
from messages.verifier_state import KeyInForce, TreeHead, VerifierState

MAX_CLOCK_SKEW_S = 300
"""Seconds a pinned cosignature's timestamp may lie ahead of the verifier's clock."""


ConsistencyProofs = Mapping[tuple[str, int, int], Sequence[bytes]]
"""Consistency proofs the caller fetched: ``(log origin, old size, new size) -> hashes``."""


@dataclass(frozen=True)
class Vouched:
    """A verified log proof: the log's tree head, the pinned cosigners it shows vouching, and
    the checkpoint's freshness (its newest pinned timestamp, POSIX seconds; 0 without one)."""

    proof: LogProof
    head: TreeHead
    vouchers: frozenset[str]
    freshness: int


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
) -> Vouched:
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
    return Vouched(proof, head, frozenset(vouchers), freshness)


def witnesses_of(dated: Iterable[Cosignature], log: str) -> set[str]:
    """The witnesses among ``dated`` (pinned cosignatures in force, :meth:`Keyring.in_force`)
    on a checkpoint of ``log``: every cosigner but the log itself, whose own timestamped
    cosignature (its freshness) never makes it its own witness."""
    return {c.name for c in dated} - {log}


def verify_logged(
    document: LoggedDocument,
    proofs: Sequence[LogProof],
    keyring: Keyring,
    pins: Pins,
    now_ms: int,
) -> tuple[list[Vouched], set[str]]:
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


def check_fresh(verified: Sequence[Vouched], pins: Pins, now_ms: int) -> None:
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


def consistency_proof(
    proof: LogProof, stored: TreeHead, head: TreeHead, extra: ConsistencyProofs
) -> Sequence[bytes] | None:
    carried = next((c.proof for c in proof.consistency if c.old_size == stored.size), None)
    if carried is not None:
        return carried
    return extra.get((proof.log, stored.size, head.size))
