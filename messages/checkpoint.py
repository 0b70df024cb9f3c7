"""C2SP checkpoints (c2sp.org/tlog-checkpoint v1): a log's signed tree head.

A checkpoint is a signed note (:mod:`messages.note`) whose text is, byte for byte::

    <origin>\\n
    <tree size in ASCII decimal, no leading zero unless 0>\\n
    <base64 of the 32-byte RFC 9162 root hash>\\n
    [<extension line>\\n ...]

- The origin names the log; it is non-empty and, like every line, has no control character.
  The log's key name should equal it (this log's key names do).
- The size is at most 2**64 - 1; the root is canonical standard base64 of exactly 32 bytes.
- Extension lines are optional, opaque and non-empty. They are signed but not audited.

:func:`open_checkpoint` checks a checkpoint note against the log's known key (which must have
signed it) and any witness keys, then parses the text strictly.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from messages.canonical import b64, unb64
from messages.errors import HsmfleetError
from messages.merkle import HASH_SIZE, MAX_TREE_SIZE
from messages.note import (
    Ed25519NoteSigner,
    Note,
    NoteVerifier,
    OpenedNote,
    UnverifiedNote,
    open_note,
)

_DIGITS = frozenset("0123456789")


class CheckpointError(HsmfleetError):
    """A checkpoint was refused."""

    kind = "checkpoint"


class MalformedCheckpoint(CheckpointError):
    """The note text is not a checkpoint: missing lines, a bad size or root, an empty line."""

    kind = "malformed_checkpoint"


class WrongOrigin(CheckpointError):
    """The checkpoint names another log than the one the reader expects."""

    kind = "wrong_origin"


class UnsignedCheckpoint(CheckpointError):
    """The log's own key did not sign the checkpoint (witness signatures alone do not count)."""

    kind = "unsigned_checkpoint"


def parse_count(text: str) -> int | None:
    """The value of ``text`` if it is a tree size as checkpoints and witnesses write one: ASCII
    decimal digits, no leading zero unless it is ``0``, at most 2**64 - 1; else None."""
    if not 0 < len(text) <= 20 or not set(text) <= _DIGITS or (text[0] == "0" and text != "0"):
        return None
    value = int(text)
    return value if value <= MAX_TREE_SIZE else None


def _check_line(line: object, what: str) -> None:
    if not isinstance(line, str) or not line or any(c < " " for c in line):
        raise MalformedCheckpoint(f"{what} must be a non-empty line", line=line)


@dataclass(frozen=True)
class Checkpoint:
    """A log's tree head: its origin, tree size and root hash, and optional extension lines."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_line(self.origin, "origin")
        if isinstance(self.size, bool) or not isinstance(self.size, int):
            raise MalformedCheckpoint("tree size must be an integer", size=self.size)
        if not 0 <= self.size <= MAX_TREE_SIZE:
            raise MalformedCheckpoint("tree size must be in [0, 2**64 - 1]", size=self.size)
        if not isinstance(self.root, bytes) or len(self.root) != HASH_SIZE:
            raise MalformedCheckpoint("root hash must be 32 bytes")
        for line in self.extensions:
            _check_line(line, "extension line")

    def text(self) -> str:
        """The checkpoint's note text, final newline included."""
        lines = [self.origin, str(self.size), b64(self.root), *self.extensions]
        return "".join(line + "\n" for line in lines)

    @classmethod
    def from_text(cls, text: str) -> Checkpoint:
        """Parse a checkpoint's note text, refusing anything but its one exact form."""
        if not isinstance(text, str) or not text.endswith("\n"):
            raise MalformedCheckpoint("checkpoint text must end with a newline")
        lines = text[:-1].split("\n")
        if len(lines) < 3:
            raise MalformedCheckpoint("checkpoint needs origin, size and root lines")
        origin, size_line, root, *extensions = lines
        size = parse_count(size_line)
        if size is None:
            raise MalformedCheckpoint("tree size must be decimal without leading zeros, < 2**64")
        try:
            root_hash = unb64(root)
        except ValueError as exc:
            raise MalformedCheckpoint("root hash is not canonical base64") from exc
        return cls(origin, size, root_hash, tuple(extensions))

    def sign(self, signer: Ed25519NoteSigner) -> Note:
        """The checkpoint as a note signed by the log's key."""
        return Note(self.text()).with_signature(signer.sign(self.text()))


@dataclass(frozen=True)
class SignedCheckpoint:
    """A checkpoint whose log signature verified, with the note it came in (which says which
    witnesses also signed it)."""

    checkpoint: Checkpoint
    note: OpenedNote


def open_checkpoint(
    data: bytes | str | Note,
    origin: str,
    log: NoteVerifier,
    witnesses: Iterable[NoteVerifier] = (),
) -> SignedCheckpoint:
    """Open a checkpoint note from the log ``origin`` signed by the log's key ``log``.

    Every signature by ``log`` or a ``witnesses`` key must verify (see
    :func:`messages.note.open_note`); the log's must be there (:class:`UnsignedCheckpoint`); the
    text must be a checkpoint (:class:`MalformedCheckpoint`) of ``origin``
    (:class:`WrongOrigin`). A note that no known key signed is :class:`UnsignedCheckpoint` too.
    """
    try:
        opened = open_note(data, [log, *witnesses])
    except UnverifiedNote as exc:
        raise UnsignedCheckpoint("no known key signed the checkpoint", log=log.name) from exc
    if not opened.signed_by(log):
        raise UnsignedCheckpoint("the log did not sign the checkpoint", log=log.name)
    checkpoint = Checkpoint.from_text(opened.text)
    if checkpoint.origin != origin:
        raise WrongOrigin("checkpoint is from another log", origin=checkpoint.origin)
    return SignedCheckpoint(checkpoint, opened)
