"""The cosigner as a witness: it cosigns other logs' checkpoints (C2SP tlog-cosignature v1).

The semantics of C2SP tlog-witness: a request names the size ``old_size`` that the requester
believes the witness last saw of the log, a consistency proof from that size to the presented
checkpoint, and the checkpoint. The witness cosigns only if

- the request is a checkpoint note and ``old_size`` is not above its size
  (:class:`MalformedWitnessRequest`);
- it witnesses the checkpoint's origin and the log's own key signed the checkpoint
  (:class:`UnknownLog`, :class:`BadWitnessCheckpoint`);
- ``old_size`` is the size it last cosigned for that log (0 at first), and a checkpoint of that
  same size has the same root; otherwise it answers :class:`WitnessConflict`, which carries the
  size it knows so the requester can retry;
- the consistency proof links the two (:class:`BadWitnessProof`).

It records every checkpoint it cosigns before answering, so what it saw of each log can be shown
later, and it never cosigns a tree head that does not extend the one it cosigned before. A
checkpoint the log signed with the size of one the witness cosigned but another root is kept
too, whatever the request (:meth:`Witness.equivocations`): the two together prove a fork.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

from cosigner.store import Seen, Store
from messages.checkpoint import CheckpointError, open_checkpoint
from messages.cosignature import CosignatureSigner
from messages.cosigning import Witnessed
from messages.errors import HsmfleetError
from messages.merkle import EMPTY_ROOT, MerkleError, verify_consistency
from messages.note import Ed25519NoteVerifier, Note, NoteError
from messages.rotation import SignerKey
from messages.signing import ED25519, Signer


class WitnessError(HsmfleetError):
    """The witness refused to cosign a checkpoint."""

    kind = "witness"


class MalformedWitnessRequest(WitnessError):
    """The request is not a checkpoint note, or names an old size above the checkpoint's."""

    kind = "malformed_witness_request"


class UnknownLog(WitnessError):
    """The checkpoint comes from a log this witness does not witness."""

    kind = "unknown_log"


class BadWitnessCheckpoint(WitnessError):
    """The checkpoint is not signed by its log's known key, or is not a checkpoint."""

    kind = "bad_witness_checkpoint"


class WitnessConflict(WitnessError):
    """``old_size`` is not the size the witness last saw (``size`` is that size), or the
    checkpoint has that size but another root hash."""

    kind = "witness_conflict"

    def __init__(self, message: str, size: int, **detail: object) -> None:
        super().__init__(message, size=size, **detail)
        self.size = size


class BadWitnessProof(WitnessError):
    """The checkpoint does not extend what the witness saw: smaller, or an inconsistent proof."""

    kind = "bad_witness_proof"


def checkpoint_origin(note: str) -> str:
    """The origin line of a checkpoint note, before anything is verified."""
    try:
        return Note.parse(note).text.split("\n", 1)[0]
    except NoteError as exc:
        raise MalformedWitnessRequest(f"not a signed note: {exc}") from exc


class Witness:
    """Cosigns checkpoints of the logs it is configured to witness."""

    def __init__(
        self, name: str, signer: Signer, logs: Iterable[Ed25519NoteVerifier], store: Store
    ):
        self.name = name
        self._cosigner = CosignatureSigner(name, signer)
        self._logs = {log.name: log for log in logs}
        self._store = store
        self.rejects: Counter[str] = Counter()
        self.cosigned = 0

    @property
    def logs(self) -> list[str]:
        return sorted(self._logs)

    def follow(self, keys: Mapping[str, SignerKey]) -> None:
        """Check the witnessed logs' checkpoints with their keys in force ``keys`` (from
        rotations this cosigner logged); a log's superseded key no longer counts. A log's
        verifier is made again only when its key changed."""
        for origin, key in keys.items():
            log = self._logs.get(origin)
            if log is not None and key.alg == ED25519 and log.public_key != key.public_key:
                self._logs[origin] = Ed25519NoteVerifier(origin, key.public_key)

    def use_key(self, signer: Signer) -> None:
        """Cosign with ``signer`` from now on (this cosigner's key rotated); the same key
        again changes nothing."""
        if signer.public_key != self._cosigner.verifier.public_key:
            self._cosigner = CosignatureSigner(self.name, signer)

    def latest(self, origin: str) -> Seen | None:
        """The largest checkpoint of ``origin`` this witness cosigned."""
        return self._store.latest_witnessed(origin)

    def history(self, origin: str) -> list[Seen]:
        """Every checkpoint of ``origin`` this witness cosigned, smallest first."""
        return self._store.witnessed_history(origin)

    def equivocations(self, origin: str) -> list[Seen]:
        """Checkpoints ``origin`` signed with the size of one this witness cosigned but another
        root, smallest first: each, with the cosigned one, proves the log forked."""
        return self._store.equivocations(origin)

    def cosign(
        self, old_size: int, consistency: Sequence[bytes], note: str, now_s: int
    ) -> Witnessed:
        """Checkpoint ``note`` cosigned at POSIX time ``now_s`` (its size and cosignature line),
        or the :class:`WitnessError` saying why not (counted in :attr:`rejects`)."""
        try:
            line = self._cosign(old_size, consistency, note, now_s)
        except WitnessError as exc:
            self.rejects[exc.kind] += 1
            raise
        self.cosigned += 1
        return line

    def _cosign(
        self, old_size: int, consistency: Sequence[bytes], note: str, now_s: int
    ) -> Witnessed:
        origin = checkpoint_origin(note)
        log = self._logs.get(origin)
        if log is None:
            raise UnknownLog("this witness does not witness that log", origin=origin)
        try:
            checkpoint = open_checkpoint(note, origin, log).checkpoint
        except (NoteError, CheckpointError) as exc:
            raise BadWitnessCheckpoint(f"checkpoint refused: {exc}", origin=origin) from exc
        cosigned = self._store.witnessed_at(origin, checkpoint.size)
        if cosigned is not None and cosigned.root != checkpoint.root:
            # Whatever else is wrong with the request, the log signed two trees of one size.
            self._store.add_equivocation(
                Seen(origin, checkpoint.size, checkpoint.root, note), now_s
            )
        if not 0 <= old_size <= checkpoint.size:
            raise MalformedWitnessRequest("old size is above the checkpoint's", old=old_size)
        seen = self._store.latest_witnessed(origin)
        seen_size, seen_root = (seen.size, seen.root) if seen else (0, EMPTY_ROOT)
        if old_size != seen_size:
            raise WitnessConflict("old size is not the size last seen", seen_size, origin=origin)
        if checkpoint.size == seen_size and checkpoint.root != seen_root:
            raise WitnessConflict("same size as last seen, another root", seen_size, origin=origin)
        try:
            verify_consistency(seen_size, checkpoint.size, seen_root, checkpoint.root, consistency)
        except MerkleError as exc:
            raise BadWitnessProof(
                f"checkpoint does not extend the last one seen: {exc}",
                origin=origin,
                old=seen_size,
                new=checkpoint.size,
            ) from exc
        if seen is None or checkpoint.size > seen.size:
            self._store.add_witnessed(Seen(origin, checkpoint.size, checkpoint.root, note), now_s)
        line = self._cosigner.cosign(checkpoint, now_s).line()
        return Witnessed(size=checkpoint.size, cosignature=line)
