"""C2SP signed notes: the spec's example, golang.org/x/mod/sumdb/note vectors, typed refusals."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from messages.cosignature import CosignatureVerifier
from messages.note import (
    AmbiguousVerifier,
    BadNoteSignature,
    Ed25519NoteSigner,
    Ed25519NoteVerifier,
    MalformedNote,
    MalformedVerifierKey,
    Note,
    NoteError,
    NoteSignature,
    UnsupportedKey,
    UnverifiedNote,
    is_ed25519_public_key,
    is_key_name,
    open_note,
)
from messages.signing import ECDSA_P256, ED25519, Ed25519Signer, verify_bytes

# c2sp.org/signed-note, "Verifier keys: Example".
C2SP_VKEY = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k"
C2SP_NOTE = (
    "This is an example message.\n\n"
    "— example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXm"
    "RKuwHjG1Yu72IneyaQM=\n"
)

# golang.org/x/mod/sumdb/note/note_test.go: keys, a text, and its signatures.
PETER_SKEY_B64 = "AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"  # 0x01 || Ed25519 seed
PETER_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
ENOCH_VKEY = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
PETER_SIG = (
    "— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotp"
    "RZb6KE6RyyBwJnAM=\n"
)
ENOCH_SIG = (
    "— EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox"
    "33WWd1RvMc+QQ=\n"
)
PETER = Ed25519NoteVerifier.from_vkey(PETER_VKEY)
ENOCH = Ed25519NoteVerifier.from_vkey(ENOCH_VKEY)


def peter_signer() -> Ed25519NoteSigner:
    seed = base64.b64decode(PETER_SKEY_B64)
    assert seed[0] == 1
    return Ed25519NoteSigner("PeterNeumann", Ed25519Signer.from_seed(seed[1:]))


def test_c2sp_example_verifies() -> None:
    verifier = Ed25519NoteVerifier.from_vkey(C2SP_VKEY)
    assert verifier.name == "example.com/foo"
    assert verifier.key_id.hex() == "530d903a"
    assert verifier.public_key.hex() == (
        "e932791ae6e7a840a46164c904786426d5e7821dd8b29a00d61cae72afdd4da4"
    )
    assert verifier.vkey == C2SP_VKEY
    opened = open_note(C2SP_NOTE.encode(), [verifier])
    assert opened.text == "This is an example message.\n"
    assert opened.signed_by(verifier)


def test_go_known_answer_signature() -> None:
    signer = peter_signer()
    assert signer.verifier.vkey == PETER_VKEY
    signature = signer.sign(TEXT)
    assert signature.line() == PETER_SIG
    note = Note(TEXT).with_signature(signature)
    assert note.encode().decode() == TEXT + "\n" + PETER_SIG
    # Signing again replaces the signer's earlier signature instead of adding one.
    stale = NoteSignature("PeterNeumann", PETER.key_id, b"BADSIGN")
    assert Note(TEXT, (stale,)).with_signature(signature) == note


def test_go_open_one_known_one_unknown() -> None:
    opened = open_note((TEXT + "\n" + PETER_SIG + ENOCH_SIG).encode(), [PETER])
    assert opened.text == TEXT
    assert [s.line() for s in opened.verified] == [PETER_SIG]
    assert [s.line() for s in opened.unverified] == [ENOCH_SIG]
    both = open_note(TEXT + "\n" + PETER_SIG + ENOCH_SIG, [PETER, ENOCH])
    assert [s.line() for s in both.verified] == [PETER_SIG, ENOCH_SIG]
    assert both.unverified == ()


def test_go_open_with_no_known_key_is_unverified() -> None:
    with pytest.raises(UnverifiedNote) as caught:
        open_note(TEXT + "\n" + PETER_SIG + ENOCH_SIG, [])
    assert [s.line() for s in caught.value.note.signatures] == [PETER_SIG, ENOCH_SIG]


def test_go_repeated_signatures_are_reported_once() -> None:
    enoch_abcd = ENOCH_SIG[:60] + "ABCD" + ENOCH_SIG[60:]
    data = TEXT + "\n" + PETER_SIG + PETER_SIG + ENOCH_SIG + ENOCH_SIG + enoch_abcd
    opened = open_note(data, [PETER])
    assert [s.line() for s in opened.verified] == [PETER_SIG]
    assert [s.line() for s in opened.unverified] == [ENOCH_SIG, enoch_abcd]


def test_go_invalid_signature_by_a_known_key_refuses_the_note() -> None:
    with pytest.raises(BadNoteSignature):
        open_note(TEXT + "\n" + PETER_SIG[:60] + "ABCD" + PETER_SIG[60:], [PETER])


def test_go_too_many_signatures() -> None:
    for known in ([PETER], []):
        with pytest.raises(MalformedNote):
            open_note(TEXT + "\n" + PETER_SIG * 101, known)
    open_note(TEXT + "\n" + PETER_SIG * 100, [PETER])


@pytest.mark.parametrize(
    "data",
    [
        TEXT,
        TEXT + "\n",
        TEXT + "\n" + PETER_SIG[:-1],
        "\x01" + TEXT + "\n" + PETER_SIG,
        TEXT + "\n" + "— Bad Name x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgK"
        "vqfqdngotpRZb6KE6RyyBwJnAM=",
        TEXT + "\n" + PETER_SIG + "Unexpected line.\n",
    ],
)
def test_go_malformed_notes(data: str) -> None:
    with pytest.raises(MalformedNote):
        open_note(data.encode(), [PETER])


def test_crlf_line_endings_are_malformed() -> None:
    with pytest.raises(MalformedNote):
        open_note((TEXT + "\n" + PETER_SIG).replace("\n", "\r\n"), [PETER])
    with pytest.raises(MalformedNote):
        open_note(TEXT + "\n" + PETER_SIG[:-1] + "\r\n", [PETER])


def test_invalid_utf8_is_malformed() -> None:
    with pytest.raises(MalformedNote):
        open_note(b"\xff" + (TEXT + "\n" + PETER_SIG).encode(), [PETER])


@pytest.mark.parametrize(
    "line",
    [
        "— PeterNeumann x08go",  # too short to hold a key ID and a signature
        "— PeterNeumann x08go/ZJ=",  # not canonical base64
        "— PeterNeumann  x08go/ZJkuBS9UG/Sffc",  # two spaces
        "— Peter+Neumann x08go/ZJkuBS9UG/Sffc",  # plus in the name
        "— Peter\u00a0Neumann x08go/ZJkuBS9UG/Sffc",  # a Unicode space in the name
        "— x08go/ZJkuBS9UG/Sffc",  # no name
        "- PeterNeumann x08go/ZJkuBS9UG/Sffc",  # hyphen, not em dash
    ],
)
def test_malformed_signature_lines(line: str) -> None:
    with pytest.raises(MalformedNote):
        open_note(TEXT + "\n" + line + "\n", [PETER])


def test_text_with_blank_lines_round_trips() -> None:
    signer = peter_signer()
    text = "first\n\nsecond after a blank line\n\n"
    note = Note(text).with_signature(signer.sign(text))
    assert Note.parse(note.encode()) == note
    assert open_note(note.encode(), [PETER]).text == text


def test_a_note_needs_text_and_a_signature() -> None:
    with pytest.raises(MalformedNote):
        Note("no final newline")
    with pytest.raises(MalformedNote):
        Note("tab\there\n")
    with pytest.raises(MalformedNote):
        Note("lone surrogate \udc80\n")
    with pytest.raises(MalformedNote):
        Note(TEXT).encode()
    with pytest.raises(MalformedNote):
        peter_signer().sign("abc")


def test_go_vkey_manglings_are_refused() -> None:
    assert Ed25519NoteVerifier.from_vkey(PETER_VKEY).vkey == PETER_VKEY
    data = PETER_VKEY
    candidates = [
        data[i:j]
        for i in range(len(data) + 1)
        for j in range(i + 1, len(data) + 1)
        if (i, j) != (0, len(data))
    ]
    candidates += [data[:i] + chr(ord(data[i]) + 1) + data[i + 1 :] for i in range(len(data))]
    # Go's own extra cases: a wrong-length key and an unknown algorithm, each with a key ID
    # recomputed to match.
    candidates += [
        "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY==",
        "PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        PETER_VKEY.replace("c74f20a3", "C74F20A3"),
    ]
    for candidate in candidates:
        with pytest.raises(MalformedVerifierKey):
            Ed25519NoteVerifier.from_vkey(candidate)


def test_two_keys_sharing_name_and_key_id_are_ambiguous() -> None:
    # Found by a birthday search: both keys give key ID 2b590ef7 under this name.
    first = Ed25519NoteVerifier("collide.example", hashlib.sha256(b"key 40056").digest())
    second = Ed25519NoteVerifier("collide.example", hashlib.sha256(b"key 72201").digest())
    assert first.key_id == second.key_id == bytes.fromhex("2b590ef7")
    with pytest.raises(AmbiguousVerifier):
        open_note(TEXT + "\n" + PETER_SIG, [PETER, first, second])
    # The same key listed twice is not ambiguous.
    open_note(TEXT + "\n" + PETER_SIG, [PETER, PETER, first])


def test_a_signature_under_another_name_is_unknown() -> None:
    renamed = PETER_SIG.replace("PeterNeumann", "CarmenSandiego")
    with pytest.raises(UnverifiedNote):
        open_note(TEXT + "\n" + renamed, [PETER])


class P256Signer:
    """A real P-256 key behind the :class:`messages.signing.Signer` protocol."""

    alg = ECDSA_P256
    kid = "p256"

    def __init__(self) -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        self.public_key = self._key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data, ec.ECDSA(hashes.SHA256()))


def test_signers_need_an_ed25519_key_and_a_valid_name() -> None:
    with pytest.raises(UnsupportedKey):
        Ed25519NoteSigner("p256.example", P256Signer())
    with pytest.raises(UnsupportedKey):
        Ed25519NoteSigner("bad name", Ed25519Signer.generate())
    with pytest.raises(MalformedVerifierKey):
        Ed25519NoteVerifier("ok", b"\x00" * 31)


# The eight points of small order, then non-canonical encodings (y >= p, or x = 0 with the sign
# bit set) of small-order points.
SMALL_ORDER_KEYS = [
    "0100000000000000000000000000000000000000000000000000000000000000",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "0000000000000000000000000000000000000000000000000000000000000000",
    "0000000000000000000000000000000000000000000000000000000000000080",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
    "0100000000000000000000000000000000000000000000000000000000000080",
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
]


def test_keys_anyone_can_sign_for_are_refused() -> None:
    identity = bytes.fromhex(SMALL_ORDER_KEYS[0])
    forged = identity + bytes(32)
    # Why: under the identity point, R = identity and S = 0 "sign" every message, and
    # OpenSSL takes it; only the key check of SPEC section 2 stops it.
    ed25519.Ed25519PublicKey.from_public_bytes(identity).verify(forged, TEXT.encode())
    assert not verify_bytes(ED25519, identity, forged, TEXT.encode())
    for key in map(bytes.fromhex, SMALL_ORDER_KEYS):
        assert not is_ed25519_public_key(key)
        for kind in (Ed25519NoteVerifier, CosignatureVerifier):
            with pytest.raises(MalformedVerifierKey):
                kind("example.com/log", key)
    assert is_ed25519_public_key(PETER.public_key)
    assert not is_ed25519_public_key(PETER.public_key[:31])
    assert not is_ed25519_public_key(PETER.public_key.hex())


def test_key_names() -> None:
    assert is_key_name("example.com/log42")
    assert is_key_name("oid/1.3.6.1.4.1")
    assert is_key_name("a\u200bb")  # a zero-width space is a format character, no space
    for bad in ("", "a b", "a+b", "a\tb", "a\u2003b", "a\u2028b", "a\u2029b", None):
        assert not is_key_name(bad)
    for space in ("\u0085", "\u00a0", "\u1680", "\u202f", "\u205f", "\u3000"):
        assert not is_key_name(f"a{space}b"), f"U+{ord(space):04X} is a Unicode space"


def test_a_signature_line_holds_a_key_id_and_at_least_one_signature_byte() -> None:
    key_id = PETER.key_id
    with pytest.raises(MalformedNote, match="too short"):
        NoteSignature.parse_line(f"— PeterNeumann {base64.b64encode(key_id).decode()}")
    line = f"— PeterNeumann {base64.b64encode(key_id + b'x').decode()}"
    assert NoteSignature.parse_line(line).signature == b"x"
    with pytest.raises(BadNoteSignature):  # a known key's one-byte signature fails, loudly
        open_note(TEXT + "\n" + line + "\n", [PETER])


def test_error_kinds_are_distinct() -> None:
    classes = (
        NoteError,
        MalformedNote,
        MalformedVerifierKey,
        AmbiguousVerifier,
        BadNoteSignature,
        UnverifiedNote,
        UnsupportedKey,
    )
    assert len({c.kind for c in classes}) == len(classes)
