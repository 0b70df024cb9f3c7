"""C2SP tlog-cosignature v1: a real witness cosignature, transparency-dev vectors, refusals."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from messages.checkpoint import Checkpoint, open_checkpoint
from messages.cosignature import (
    MAX_TIMESTAMP,
    Cosignature,
    CosignatureSigner,
    CosignatureVerifier,
    MalformedCosignature,
    cosignatures,
    cosigned_message,
)
from messages.merkle import Tree
from messages.note import (
    BadNoteSignature,
    Ed25519NoteSigner,
    Ed25519NoteVerifier,
    MalformedVerifierKey,
    Note,
    NoteSignature,
    UnsupportedKey,
    UnverifiedNote,
    open_note,
)
from messages.signing import Ed25519Signer
from tests.unit.test_checkpoint import REAL_CHECKPOINT, REAL_LOG, REAL_ORIGIN
from tests.unit.test_note import P256Signer

# The remora.n621.de witness's vkey, whose cosignature REAL_CHECKPOINT carries.
REMORA_VKEY = "remora.n621.de+da77ade7+BOvN63jn/bLvkieywe8R6UYAtVtNbZpXh34x7onlmtw2"
REMORA = CosignatureVerifier.from_vkey(REMORA_VKEY)

LOG = Ed25519NoteSigner("log.example/audit", Ed25519Signer.from_seed(bytes(range(32))))
WITNESS = CosignatureSigner("witness.example/w1", Ed25519Signer.from_seed(bytes(range(2, 34))))
CHECKPOINT = Checkpoint("log.example/audit", 3, Tree([b"a", b"b", b"c"]).root())


def test_real_witness_cosignature_verifies() -> None:
    signed = open_checkpoint(REAL_CHECKPOINT, REAL_ORIGIN, REAL_LOG, [REMORA])
    assert signed.note.signed_by(REMORA)
    (cosignature,) = cosignatures(signed, [REMORA])
    assert cosignature.name == "remora.n621.de"
    assert cosignature.key_id.hex() == "da77ade7"
    assert cosignature.timestamp == 1779573024
    assert REMORA.vkey == REMORA_VKEY


def test_real_cosignature_alone_does_not_sign_the_note_as_the_log() -> None:
    opened = open_note(REAL_CHECKPOINT, [REMORA])
    assert not opened.signed_by(REAL_LOG)


def test_transparency_dev_timestamp_vectors() -> None:
    def line(encoded: str) -> NoteSignature:
        raw = base64.b64decode(encoded)
        return NoteSignature("w", raw[:4], raw[4:])

    good = line(
        "ZGhGuQAAAABm/qTPeyKXD+R2rzyQsxPiP8mXum7qq/iF0u4vanlqJyocWODBt97w9uL+8qT7S5gxEHWWOworDcFi"
        "EBYJXORmnFBOBA=="
    )
    assert Cosignature.from_note_signature(good).timestamp == 1727964367
    ed25519_note_signature = line(
        "eQjRQm6eSKzFoiYalgwCPXu2y3ijtg68is9M46JKxuZB+dRfTmeQeDBoXnvxZx2ugnkyV+MUMLXpWs1hPb/W/4xk"
        "NQY="
    )
    with pytest.raises(MalformedCosignature):
        Cosignature.from_note_signature(ed25519_note_signature)


def test_transparency_dev_vkeys() -> None:
    plain = "TEST+7997405c+AQcC+FTVKf0jlTdHDY3rbevmnKxxPjigCXlVtGe6RIr6"
    assert Ed25519NoteVerifier.from_vkey(plain).name == "TEST"
    with pytest.raises(MalformedVerifierKey):
        CosignatureVerifier.from_vkey(plain)
    with pytest.raises(MalformedVerifierKey):
        Ed25519NoteVerifier.from_vkey(REMORA_VKEY)
    for bad in (
        "bananas.sigstore.dev+12344556",
        "rekor.sigstore.dev+12345678+THIS_IS_NOT_BASE64!",
        "rekor.sigstore.dev+12345678+AwEB",
        REMORA_VKEY.replace("da77ade7", "00000000"),
    ):
        with pytest.raises(MalformedVerifierKey):
            CosignatureVerifier.from_vkey(bad)


def test_message_layout() -> None:
    assert cosigned_message(CHECKPOINT.text(), 1679315147) == (
        b"cosignature/v1\ntime 1679315147\n" + CHECKPOINT.text().encode()
    )
    assert cosigned_message("x\n", 0) == b"cosignature/v1\ntime 0\nx\n"


def test_cosign_and_verify() -> None:
    line = WITNESS.cosign(CHECKPOINT, 1_700_000_000)
    assert len(line.signature) == 8 + 64
    assert line.key_id == WITNESS.verifier.key_id
    note = CHECKPOINT.sign(LOG).with_signature(line)
    signed = open_checkpoint(note.encode(), CHECKPOINT.origin, LOG.verifier, [WITNESS.verifier])
    assert cosignatures(signed, [WITNESS.verifier]) == (
        Cosignature(WITNESS.name, WITNESS.verifier.key_id, 1_700_000_000, line.signature[8:]),
    )
    assert Cosignature.from_note_signature(line).note_signature() == line


def test_a_cosignature_covers_extension_lines() -> None:
    extended = Checkpoint(CHECKPOINT.origin, CHECKPOINT.size, CHECKPOINT.root, ("Extendo",))
    line = WITNESS.cosign(extended, 1)
    changed = Checkpoint(CHECKPOINT.origin, CHECKPOINT.size, CHECKPOINT.root, ("Extende",))
    note = Note(changed.text(), (line,))
    with pytest.raises(BadNoteSignature):
        open_note(note.encode(), [WITNESS.verifier])


def test_a_changed_timestamp_fails() -> None:
    line = WITNESS.cosign(CHECKPOINT, 1_700_000_000)
    moved = Cosignature.from_note_signature(line)
    moved = Cosignature(moved.name, moved.key_id, moved.timestamp + 1, moved.signature)
    with pytest.raises(BadNoteSignature):
        open_note(Note(CHECKPOINT.text(), (moved.note_signature(),)), [WITNESS.verifier])


def test_timestamps_out_of_range_are_refused() -> None:
    with pytest.raises(MalformedCosignature):
        WITNESS.cosign(CHECKPOINT, MAX_TIMESTAMP + 1)
    with pytest.raises(MalformedCosignature):
        WITNESS.cosign(CHECKPOINT, -1)
    with pytest.raises(MalformedCosignature):
        cosigned_message("x\n", True)
    line = WITNESS.cosign(CHECKPOINT, MAX_TIMESTAMP)
    too_late = (MAX_TIMESTAMP + 1).to_bytes(8, "big") + line.signature[8:]
    with pytest.raises(BadNoteSignature):
        open_note(
            Note(CHECKPOINT.text(), (NoteSignature(line.name, line.key_id, too_late),)),
            [WITNESS.verifier],
        )


def test_a_plain_note_key_cannot_open_a_cosignature() -> None:
    """The same key as type 0x01 has another key ID, so the cosignature stays unknown."""
    plain = Ed25519NoteVerifier(WITNESS.name, WITNESS.verifier.public_key)
    note = Note(CHECKPOINT.text(), (WITNESS.cosign(CHECKPOINT, 5),))
    assert plain.key_id != WITNESS.verifier.key_id
    with pytest.raises(UnverifiedNote):
        open_note(note, [plain])


def test_cosigners_need_an_ed25519_key() -> None:
    with pytest.raises(UnsupportedKey):
        CosignatureSigner("w", P256Signer())


@settings(max_examples=100, deadline=None)
@given(
    st.integers(0, MAX_TIMESTAMP), st.integers(0, 2**64 - 1), st.binary(min_size=32, max_size=32)
)
def test_cosignatures_round_trip(timestamp: int, size: int, root: bytes) -> None:
    checkpoint = Checkpoint("log.example/audit", size, root)
    note = checkpoint.sign(LOG).with_signature(WITNESS.cosign(checkpoint, timestamp))
    signed = open_checkpoint(note.encode(), checkpoint.origin, LOG.verifier, [WITNESS.verifier])
    assert [c.timestamp for c in cosignatures(signed, [WITNESS.verifier])] == [timestamp]
