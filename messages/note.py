"""C2SP signed notes (c2sp.org/signed-note v1): text signed by one or more keys.

Byte format, normative::

    note      = text "\\n" 1*sigline          ; text ends with "\\n"; the blank line separates
    sigline   = "\\u2014 " name " " base64(key_id || signature) "\\n"
    key_id    = SHA-256(name || 0x0A || type || public_key)[:4]
    vkey      = name "+" hex(key_id) "+" base64(type || public_key)

- The whole note is UTF-8 with no control character below U+0020 except newline.
- The text is everything up to and including the newline before the *last* blank line; it may
  itself hold blank lines. Signature lines follow, at least one and at most
  :data:`MAX_SIGNATURES`.
- A key name is non-empty and holds no Unicode space and no ``+``.
- base64 is standard with padding (RFC 4648 section 4), in its one canonical form; hex is
  lowercase, 8 digits. A decoded signature is the 4-byte key ID and at least one more byte.
- Type ``0x01`` is Ed25519 over the text's bytes (:class:`Ed25519NoteSigner`,
  :class:`Ed25519NoteVerifier`); type ``0x04`` is the timestamped checkpoint cosignature of
  :mod:`messages.cosignature`.

Opening a note (:func:`open_note`) with a set of known verifiers: a signature whose (name, key
ID) pair is unknown is kept, unverified, and ignored; one from a known key must verify or the
whole note is refused; a note with no verified signature is refused. Repeated signature lines are
reported once.
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import ClassVar, Protocol, Self

from messages.canonical import b64, unb64
from messages.errors import HsmfleetError
from messages.signing import ED25519, Signer, is_ed25519_public_key, verify_bytes

SIG_ED25519 = 0x01
MAX_SIGNATURES = 100
"""Signature lines a note may carry; the spec asks verifiers to accept at least 16."""

EM_DASH_SPACE = "\u2014 "
KEY_ID_SIZE = 4


class NoteError(HsmfleetError):
    """A signed note was refused."""

    kind = "note"


class MalformedNote(NoteError):
    """The bytes do not follow the signed-note grammar."""

    kind = "malformed_note"


class MalformedVerifierKey(NoteError):
    """A verifier key (vkey) is not ``name+hex(key ID)+base64(type || key)``, names another
    signature type, or its key ID does not match its name and key."""

    kind = "malformed_vkey"


class AmbiguousVerifier(NoteError):
    """Two different known keys share a name and key ID."""

    kind = "ambiguous_verifier"


class BadNoteSignature(NoteError):
    """A signature by a known key does not verify."""

    kind = "bad_note_signature"


class UnverifiedNote(NoteError):
    """No known key signed the note. ``note`` holds what was parsed, for diagnostics only."""

    kind = "unverified_note"

    def __init__(self, message: str, note: Note, **detail: object) -> None:
        super().__init__(message, **detail)
        self.note = note


class UnsupportedKey(NoteError):
    """A signer's key cannot make this kind of note signature."""

    kind = "unsupported_key"


def _is_space(char: str) -> bool:
    """A Unicode space: general category Zs, Zl or Zp, or U+0085 NEXT LINE (the spaces below
    U+0020 are control characters, refused on their own)."""
    return char == "\x85" or unicodedata.category(char) in ("Zs", "Zl", "Zp")


def is_key_name(name: object) -> bool:
    """True for a valid key name: non-empty, no Unicode space, no ``+``, no control character."""
    return (
        isinstance(name, str)
        and name != ""
        and "+" not in name
        and not any(_is_space(c) or c < " " for c in name)
    )


def key_id(name: str, sig_type: int, public_key: bytes) -> bytes:
    """``SHA-256(name || 0x0A || type || public_key)[:4]``, the recommended key ID."""
    data = name.encode() + b"\n" + bytes([sig_type]) + public_key
    return hashlib.sha256(data).digest()[:KEY_ID_SIZE]


def format_vkey(name: str, sig_type: int, public_key: bytes) -> str:
    """The verifier key text ``name+hex(key ID)+base64(type || public_key)``."""
    material = b64(bytes([sig_type]) + public_key)
    return f"{name}+{key_id(name, sig_type, public_key).hex()}+{material}"


def parse_vkey(vkey: str, sig_type: int) -> tuple[str, bytes]:
    """Split a verifier key of signature type ``sig_type`` into its name and public key.

    Raises :class:`MalformedVerifierKey` on any defect, including a key ID that does not match.
    """
    parts = vkey.split("+", 2) if isinstance(vkey, str) else []
    if len(parts) != 3:
        raise MalformedVerifierKey("vkey must be name+keyid+key")
    name, id_hex, key64 = parts
    if not is_key_name(name):
        raise MalformedVerifierKey("vkey has an invalid key name")
    if len(id_hex) != 2 * KEY_ID_SIZE or id_hex.strip("0123456789abcdef"):
        raise MalformedVerifierKey("vkey key ID must be 8 lowercase hex digits")
    try:
        material = unb64(key64)
    except ValueError as exc:
        raise MalformedVerifierKey("vkey key is not canonical base64") from exc
    if not material:
        raise MalformedVerifierKey("vkey has no key material")
    if material[0] != sig_type:
        raise MalformedVerifierKey(
            "vkey is for another signature type", found=material[0], expected=sig_type
        )
    public_key = material[1:]
    if key_id(name, sig_type, public_key).hex() != id_hex:
        raise MalformedVerifierKey("vkey key ID does not match its name and key", name=name)
    return name, public_key


def _check_text(text: str, error: type[NoteError]) -> None:
    if any(c < " " and c != "\n" for c in text):
        raise error("control character in note")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise error("note is not valid UTF-8") from exc


@dataclass(frozen=True)
class NoteSignature:
    """One signature line: the signer's key name, its 4-byte key ID, and the signature bytes."""

    name: str
    key_id: bytes
    signature: bytes

    def __post_init__(self) -> None:
        if not is_key_name(self.name):
            raise MalformedNote("invalid key name in signature", name=self.name)
        if len(self.key_id) != KEY_ID_SIZE or not self.signature:
            raise MalformedNote("signature needs a 4-byte key ID and signature bytes")

    def line(self) -> str:
        """The signature line, newline included."""
        return f"{EM_DASH_SPACE}{self.name} {b64(self.key_id + self.signature)}\n"

    @classmethod
    def parse_line(cls, line: str) -> NoteSignature:
        """Parse one signature line without its newline."""
        if not line.startswith(EM_DASH_SPACE):
            raise MalformedNote("signature line must start with an em dash and a space")
        name, _, encoded = line[len(EM_DASH_SPACE) :].partition(" ")
        try:
            raw = unb64(encoded)
        except ValueError as exc:
            raise MalformedNote("signature is not canonical base64", name=name) from exc
        if len(raw) <= KEY_ID_SIZE:
            raise MalformedNote("signature is too short", name=name)
        return cls(name, raw[:KEY_ID_SIZE], raw[KEY_ID_SIZE:])


@dataclass(frozen=True)
class Note:
    """A note's text (ending in a newline) and its signatures in the order they appear."""

    text: str
    signatures: tuple[NoteSignature, ...] = field(default=())

    def __post_init__(self) -> None:
        if not isinstance(self.text, str) or not self.text.endswith("\n"):
            raise MalformedNote("note text must end with a newline")
        _check_text(self.text, MalformedNote)
        if len(self.signatures) > MAX_SIGNATURES:
            raise MalformedNote("too many signatures", count=len(self.signatures))

    def with_signature(self, signature: NoteSignature) -> Note:
        """This note with ``signature`` appended, replacing any by the same name and key ID."""
        kept = tuple(
            s for s in self.signatures if (s.name, s.key_id) != (signature.name, signature.key_id)
        )
        return Note(self.text, (*kept, signature))

    def encode(self) -> bytes:
        """The note's bytes: text, a blank line, the signature lines."""
        if not self.signatures:
            raise MalformedNote("a note needs at least one signature")
        return (self.text + "\n" + "".join(s.line() for s in self.signatures)).encode()

    @classmethod
    def parse(cls, data: bytes | str) -> Note:
        """Parse a note's bytes (or text) by the grammar alone; nothing is verified."""
        if isinstance(data, bytes):
            try:
                data = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise MalformedNote("note is not valid UTF-8") from exc
        if not isinstance(data, str):
            raise MalformedNote("note must be bytes or text")
        _check_text(data, MalformedNote)
        split = data.rfind("\n\n")
        if split < 0:
            raise MalformedNote("note has no blank line before its signatures")
        text, block = data[: split + 1], data[split + 2 :]
        if not block.endswith("\n"):
            raise MalformedNote("note must end with a signature line and a newline")
        lines = block[:-1].split("\n")
        if len(lines) > MAX_SIGNATURES:
            raise MalformedNote("too many signatures", count=len(lines))
        return cls(text, tuple(NoteSignature.parse_line(line) for line in lines))


class NoteVerifier(Protocol):
    """A known key: it checks signatures carrying its name and key ID."""

    @property
    def name(self) -> str: ...

    @property
    def key_id(self) -> bytes: ...

    @property
    def vkey(self) -> str: ...

    def verify(self, text: bytes, signature: bytes) -> bool:
        """True when ``signature`` (the bytes after the key ID) is valid over ``text``."""
        ...


@dataclass(frozen=True)
class Ed25519Key:
    """A known Ed25519 key of one note signature type (:attr:`SIG_TYPE`): its key name and
    public key, refused unless the key is one nobody but its holder can sign for."""

    SIG_TYPE: ClassVar[int]

    name: str
    public_key: bytes

    def __post_init__(self) -> None:
        if not is_key_name(self.name):
            raise MalformedVerifierKey("invalid key name", name=self.name)
        if not is_ed25519_public_key(self.public_key):
            raise MalformedVerifierKey(
                "not an Ed25519 public key: 32 bytes, canonical, not of small order",
                name=self.name,
            )

    @classmethod
    def from_vkey(cls, vkey: str) -> Self:
        """The key a verifier key text of this signature type names."""
        return cls(*parse_vkey(vkey, cls.SIG_TYPE))

    @property
    def key_id(self) -> bytes:
        return key_id(self.name, self.SIG_TYPE, self.public_key)

    @property
    def vkey(self) -> str:
        return format_vkey(self.name, self.SIG_TYPE, self.public_key)


@dataclass(frozen=True)
class Ed25519NoteVerifier(Ed25519Key):
    """A known Ed25519 key (type ``0x01``): the signature is Ed25519 over the note text."""

    SIG_TYPE = SIG_ED25519

    def verify(self, text: bytes, signature: bytes) -> bool:
        return verify_bytes(ED25519, self.public_key, signature, text)


def require_ed25519(name: str, key: Signer) -> None:
    """Refuse a key name or signer that cannot make Ed25519 note signatures."""
    if not is_key_name(name):
        raise UnsupportedKey("invalid key name", name=name)
    if key.alg != ED25519:
        raise UnsupportedKey("note signatures need an Ed25519 key", alg=key.alg)


class Ed25519NoteSigner:
    """Signs note texts as ``name`` with an Ed25519 :class:`~messages.signing.Signer`, whose
    private half may stay inside an HSM."""

    def __init__(self, name: str, key: Signer) -> None:
        require_ed25519(name, key)
        self.name = name
        self._key = key
        self.verifier = Ed25519NoteVerifier(name, key.public_key)

    def sign(self, text: str) -> NoteSignature:
        """A signature line over ``text`` (which must be a valid note text)."""
        note = Note(text)
        return NoteSignature(self.name, self.verifier.key_id, self._key.sign(note.text.encode()))


@dataclass(frozen=True)
class OpenedNote:
    """A note whose signatures by known keys all verified.

    ``verified`` holds one signature per known key that signed; ``unverified`` the distinct
    signature lines from unknown keys, kept but not to be relied on.
    """

    note: Note
    verified: tuple[NoteSignature, ...]
    unverified: tuple[NoteSignature, ...]

    @property
    def text(self) -> str:
        return self.note.text

    def signed_by(self, verifier: NoteVerifier) -> bool:
        """True when ``verifier``'s key is among the verified signers."""
        return any((s.name, s.key_id) == (verifier.name, verifier.key_id) for s in self.verified)


def _index(verifiers: Iterable[NoteVerifier]) -> dict[tuple[str, bytes], NoteVerifier]:
    known: dict[tuple[str, bytes], NoteVerifier] = {}
    for verifier in verifiers:
        slot = (verifier.name, verifier.key_id)
        other = known.setdefault(slot, verifier)
        if other.vkey != verifier.vkey:
            raise AmbiguousVerifier(
                "two known keys share a name and key ID",
                name=verifier.name,
                key_id=verifier.key_id.hex(),
            )
    return known


def open_note(data: bytes | str | Note, verifiers: Iterable[NoteVerifier]) -> OpenedNote:
    """Parse ``data`` and check its signatures against the known ``verifiers``.

    Raises :class:`MalformedNote` for bad grammar, :class:`AmbiguousVerifier` if two different
    known keys share a name and key ID, :class:`BadNoteSignature` if any signature by a known key
    fails, and :class:`UnverifiedNote` if no known key signed the note.
    """
    note = data if isinstance(data, Note) else Note.parse(data)
    known = _index(verifiers)
    signed = note.text.encode()
    verified: dict[tuple[str, bytes], NoteSignature] = {}
    unverified: dict[NoteSignature, None] = {}
    for signature in note.signatures:
        slot = (signature.name, signature.key_id)
        verifier = known.get(slot)
        if verifier is None:
            unverified.setdefault(signature)
            continue
        if not verifier.verify(signed, signature.signature):
            raise BadNoteSignature(
                "signature does not verify", name=signature.name, key_id=signature.key_id.hex()
            )
        verified.setdefault(slot, signature)
    if not verified:
        raise UnverifiedNote("no known key signed the note", note)
    return OpenedNote(note, tuple(verified.values()), tuple(unverified))
