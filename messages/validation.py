"""The validation bundle: what a client receives to learn a fleet's keys.

It holds the fleet-key artifact, its digest, and one :class:`LogProof` per cosigner that logged
it: that cosigner's :class:`~messages.statement.Statement` and signature, the operator's
countersignature over that signature, the RFC 9162 inclusion proof of the artifact's canonical
bytes at the statement's leaf index, and the log's signed checkpoint (a C2SP signed note) that the
proof leads to, carrying witness cosignatures (C2SP tlog-cosignature) from other cosigners.
``consistency`` may carry consistency proofs from older sizes of that log to the checkpoint, so
a client that stored an older checkpoint can check the new one extends it without asking the log.

Format ``hsmfleet/validation-bundle/v1``; :mod:`messages.verify` is the client's algorithm.

Other logged documents reach clients as a :class:`LoggedNotice` (``hsmfleet/logged-notice/v1``):
the document (a key rotation, a fleet retirement) with log proofs of the same shape. A bundle
may carry, in its optional member ``rotations``, the chain of signer-key rotation notices a
client needs to walk from the keys it pinned to the ones that signed the bundle
(:func:`with_rotations`); bundles without it decode as before (open world).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from messages.artifact import FleetKeyArtifact
from messages.cosigning import Signed
from messages.documents import Document, require
from messages.merkle import HASH_SIZE, MAX_PROOF_HASHES
from messages.note import Note, NoteSignature
from messages.schema import Body
from messages.signing import Signer
from messages.statement import Countersignature, LoggedDocument, Statement, parse_logged

FORMAT = "hsmfleet/validation-bundle/v1"
NOTICE_FORMAT = "hsmfleet/logged-notice/v1"
MAX_ROTATIONS = 64
MAX_PROOFS = 16
MAX_CHECKPOINT_CHARS = 16 * 1024


def _require_hashes(proof: tuple[bytes, ...], what: str) -> None:
    """A proof is at most 64 hashes of 32 bytes: anything else is malformed, not a proof that
    fails."""
    require(len(proof) <= MAX_PROOF_HASHES, f"a {what} has at most 64 hashes")
    require(all(len(h) == HASH_SIZE for h in proof), f"a {what} holds 32-byte hashes only")


@dataclass(frozen=True)
class Consistency(Body):
    """A consistency proof from the log's tree of ``old_size`` leaves to the checkpoint's."""

    old_size: int
    proof: tuple[bytes, ...]

    def __post_init__(self) -> None:
        require(self.old_size >= 0, "old_size must not be negative")
        _require_hashes(self.proof, "consistency proof")


@dataclass(frozen=True)
class LogProof(Body):
    """One cosigner's evidence that it logged the artifact."""

    statement: Statement
    signature: bytes
    countersignature: Countersignature
    inclusion: tuple[bytes, ...]
    checkpoint: str
    consistency: tuple[Consistency, ...]

    def __post_init__(self) -> None:
        require(len(self.signature) == 64, "a statement signature is 64 bytes (Ed25519)")
        _require_hashes(self.inclusion, "inclusion proof")
        require(len(self.checkpoint) <= MAX_CHECKPOINT_CHARS, "checkpoint note is too long")
        require(len(self.consistency) <= MAX_PROOFS, "too many consistency proofs")

    @property
    def log(self) -> str:
        return self.statement.log


@dataclass(frozen=True)
class ValidationBundle(Document):
    """A fleet-key artifact with the evidence a client needs to accept it."""

    FORMAT = FORMAT

    artifact: FleetKeyArtifact
    digest: str
    proofs: tuple[LogProof, ...]
    format: str = field(default=FORMAT, kw_only=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        require(0 < len(self.proofs) <= MAX_PROOFS, "a bundle carries 1-16 log proofs")
        logs = [p.log for p in self.proofs]
        require(len(set(logs)) == len(logs), "a bundle carries one proof per log")

    @functools.cached_property
    def rotations(self) -> tuple[LoggedNotice, ...]:
        """The signer-key rotation notices the bundle carries (member ``rotations``, optional),
        in the order they were logged. :class:`~messages.documents.MalformedDocument` if the
        member is not a list of at most 64 notices of key rotations."""
        raw = self.extra.get("rotations", [])
        require(isinstance(raw, list), "rotations must be a list")
        require(len(raw) <= MAX_ROTATIONS, "too many rotation notices", count=len(raw))
        notices = tuple(LoggedNotice.from_json(n, "rotations") for n in raw)
        require(
            all(n.logged.KIND == "key-rotation" for n in notices),
            "rotations holds only key-rotation notices",
        )
        return notices


@dataclass(frozen=True)
class LoggedNotice(Document):
    """A logged document other than an artifact (a key rotation, a fleet retirement) with the
    cosigners' log proofs, countersigned: what a client ingests to learn of it."""

    FORMAT = NOTICE_FORMAT

    document: dict[str, Any]
    proofs: tuple[LogProof, ...]
    format: str = field(default=NOTICE_FORMAT, kw_only=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        require(0 < len(self.proofs) <= MAX_PROOFS, "a notice carries 1-16 log proofs")
        logs = [p.log for p in self.proofs]
        require(len(set(logs)) == len(logs), "a notice carries one proof per log")
        self.logged  # noqa: B018 - decoding the document is part of checking the notice

    @functools.cached_property
    def logged(self) -> LoggedDocument:
        """The document, decoded by its format."""
        return parse_logged(self.document)


def notice(document: LoggedDocument, proofs: Iterable[LogProof]) -> LoggedNotice:
    """The notice of ``document`` with ``proofs``, each of which must describe it."""
    proofs = tuple(proofs)
    for proof in proofs:
        require(proof.statement.describes(document), "a log proof is for another document")
    return LoggedNotice(document=document.to_json(), proofs=proofs)


def with_rotations(bundle: ValidationBundle, chain: Iterable[LoggedNotice]) -> ValidationBundle:
    """``bundle`` carrying the rotation notices ``chain`` (in logged order) in its member
    ``rotations``, replacing any it carried; an empty chain leaves the member out. Pure."""
    extra = {k: v for k, v in bundle.extra.items() if k != "rotations"}
    notices = [n.to_json() for n in chain]
    if notices:
        extra["rotations"] = notices
    return replace(bundle, extra=extra)


def with_cosignatures(note: str, lines: Iterable[str]) -> str:
    """The checkpoint ``note`` with witness cosignature ``lines`` added (a line replaces one
    by the same name and key ID)."""
    opened = Note.parse(note)
    for line in lines:
        opened = opened.with_signature(NoteSignature.parse_line(line.rstrip("\n")))
    return opened.encode().decode()


def log_proof(
    signed: Signed,
    operator: Signer,
    cosignatures: Iterable[str] = (),
    consistency: Iterable[Consistency] = (),
) -> LogProof:
    """One cosigner's answer made into a log proof: countersigned by the ``operator`` and its
    checkpoint carrying the witness ``cosignatures`` gathered for it."""
    return LogProof(
        statement=signed.statement,
        signature=signed.signature,
        countersignature=Countersignature.make(operator, signed.signature),
        inclusion=signed.inclusion,
        checkpoint=with_cosignatures(signed.checkpoint, cosignatures),
        consistency=tuple(consistency),
    )


def assemble(artifact: FleetKeyArtifact, proofs: Iterable[LogProof]) -> ValidationBundle:
    """The validation bundle of ``artifact`` with ``proofs``, each of which must describe it."""
    proofs = tuple(proofs)
    for proof in proofs:
        require(proof.statement.describes(artifact), "a log proof is for another document")
    return ValidationBundle(artifact=artifact, digest=artifact.digest, proofs=proofs)
