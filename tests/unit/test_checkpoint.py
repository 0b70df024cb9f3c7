"""C2SP checkpoints: the spec's example, a real cosigned checkpoint, strict parsing."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from messages.checkpoint import (
    Checkpoint,
    CheckpointError,
    MalformedCheckpoint,
    UnsignedCheckpoint,
    WrongOrigin,
    open_checkpoint,
)
from messages.merkle import Tree
from messages.note import BadNoteSignature, Ed25519NoteSigner, Ed25519NoteVerifier, Note
from messages.signing import Ed25519Signer

# c2sp.org/tlog-checkpoint, the example's note text.
C2SP_TEXT = "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"

# A checkpoint of the arche2025h1 staging CT log (transparency.dev), as published with its
# log signature (type 0x01), an RFC 6962 tree-head signature (type 0x05) and four witness
# cosignatures (type 0x04); the vkeys are the log's and the remora.n621.de witness's.
REAL_ORIGIN = "arche2025h1.staging.ct.transparency.dev"
REAL_CHECKPOINT = """arche2025h1.staging.ct.transparency.dev
1432088532
U7WM79jrzyhGZ5/GUBTpM7NzwdyfFx61t3RovgcC4Ro=

— arche2025h1.staging.ct.transparency.dev zTM8sQAAAZ5W0WdjBAMARjBEAiBjW5IQf9pvsYLfQFX6hoGREPMHbdQ3urbllzalApkptQIgIpwtEroeW2BXaHAI4kJXFbon5Ch9MNL5zRNZ55lvGt0=
— arche2025h1.staging.ct.transparency.dev ui8GwCF1+kWqZrxGdhj4aX3gcw7XUlXQQabg/27lefwhUkzbC3NygNI75MdhL1bfTW9g8Ei59RA23oHP7Ry1k3ZFWwQ=
— transparency.dev/DEV:witness-little-garden 2AQqhwAAAABqEiEgzgFIqqhbUoDwjMWE6UP8nd8/KYTzwZ2rhIgcqoXHAwVkjZr4AscylP3v7sEodkRAErumC2q44vdgJY096st5BQ==
— witness1.smartit.nu/witness1 pIyCDwAAAABqEiEghIp82KWebrw7/oHQwlTAm3g2RKS4+eebl8eO0WH+/iEcxZ75W3u5hNI7TOQtmJbqmNWVuE0tgh0XwzdZsDsUAQ==
— remora.n621.de 2net5wAAAABqEiEgPlfF3V06o0Y+fHM+J5J9s27wgxxcOVSpZ/2g/KSiXCg9DEZI+aVCIobWX9sXTynk5XeU/zZ0WBxtqB0DrAWfBw==
— witness.stagemole.eu Z/euoAAAAABqEiEgw0i+7g2ENfDAWHmtRzCfKTHSDwYDJA2NmKeGi9Y8FtEyOUvVr+AJmIY/2TUFucgKi7lI7cUiOvKFYe/TmN9DAg==
"""  # noqa: E501
REAL_LOG_VKEY = (
    "arche2025h1.staging.ct.transparency.dev+ba2f06c0+AU0vHmlGCS/PdN8b2OaGmKprLI8HKM+dJ472xgFYh15f"
)
REAL_LOG = Ed25519NoteVerifier.from_vkey(REAL_LOG_VKEY)

LOG = Ed25519NoteSigner("log.example/audit", Ed25519Signer.from_seed(bytes(range(32))))
OTHER = Ed25519NoteSigner("other.example/w", Ed25519Signer.from_seed(bytes(range(1, 33))))
ROOT = Tree([b"a", b"b", b"c"]).root()


def test_c2sp_example_parses_and_formats() -> None:
    checkpoint = Checkpoint.from_text(C2SP_TEXT)
    assert checkpoint.origin == "example.com/behind-the-sofa"
    assert checkpoint.size == 20852163
    assert checkpoint.root.hex().startswith("0ac5186a")
    assert checkpoint.extensions == ()
    assert checkpoint.text() == C2SP_TEXT


def test_real_checkpoint_opens() -> None:
    signed = open_checkpoint(REAL_CHECKPOINT.encode(), REAL_ORIGIN, REAL_LOG)
    assert signed.checkpoint.size == 1432088532
    assert signed.checkpoint.text() == signed.note.text
    assert signed.note.signed_by(REAL_LOG)
    assert len(signed.note.unverified) == 5


def test_real_checkpoint_with_a_changed_size_is_refused() -> None:
    tampered = REAL_CHECKPOINT.replace("1432088532", "1432088533")
    with pytest.raises(BadNoteSignature):
        open_checkpoint(tampered, REAL_ORIGIN, REAL_LOG)


def test_sign_and_open_round_trip() -> None:
    checkpoint = Checkpoint("log.example/audit", 3, ROOT, ("ext one", "ext two"))
    note = checkpoint.sign(LOG)
    signed = open_checkpoint(note.encode(), "log.example/audit", LOG.verifier)
    assert signed.checkpoint == checkpoint
    assert signed.note.verified == note.signatures


def test_open_needs_the_log_signature_and_its_origin() -> None:
    checkpoint = Checkpoint("log.example/audit", 3, ROOT)
    by_other = Note(checkpoint.text()).with_signature(OTHER.sign(checkpoint.text()))
    with pytest.raises(UnsignedCheckpoint):
        open_checkpoint(by_other.encode(), "log.example/audit", LOG.verifier, [OTHER.verifier])
    with pytest.raises(UnsignedCheckpoint):
        open_checkpoint(by_other.encode(), "log.example/audit", LOG.verifier)
    with pytest.raises(WrongOrigin):
        open_checkpoint(checkpoint.sign(LOG), "log.example/other", LOG.verifier)


def test_a_signed_note_that_is_no_checkpoint_is_refused() -> None:
    text = "log.example/audit\n3\n"
    note = Note(text).with_signature(LOG.sign(text))
    with pytest.raises(MalformedCheckpoint):
        open_checkpoint(note.encode(), "log.example/audit", LOG.verifier)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "o\n1\n",
        "o\n1\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=",  # no final newline
        "\n1\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n",  # empty origin
        "o\n01\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n",  # leading zero
        "o\n+1\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n",
        "o\n 1\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n",
        "o\n1_0\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n",
        "o\n\uff11\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n",  # a fullwidth digit
        "o\n\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n",
        "o\n18446744073709551616\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n",  # 2**64
        "o\n" + "9" * 5000 + "\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n",
        "o\n1\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2J=\n",  # non-canonical base64
        "o\n1\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxqw==\n",  # 31 bytes
        "o\n1\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I\n",  # missing padding
        "o\n1\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n\next\n",  # empty extension
        "o\n1\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\nbad\x01ext\n",
        "o\r\n1\r\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\r\n",  # CRLF
        "o\n1\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I= \n",  # trailing space
        "o\n\u0661\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n",  # an Arabic-Indic 1
    ],
)
def test_strict_parsing(text: str) -> None:
    with pytest.raises(MalformedCheckpoint):
        Checkpoint.from_text(text)


def test_construction_is_checked() -> None:
    for bad in (
        dict(origin="", size=1, root=ROOT),
        dict(origin="a\nb", size=1, root=ROOT),
        dict(origin="o", size=-1, root=ROOT),
        dict(origin="o", size=2**64, root=ROOT),
        dict(origin="o", size=True, root=ROOT),
        dict(origin="o", size=1, root=ROOT[:31]),
        dict(origin="o", size=1, root=ROOT, extensions=("",)),
    ):
        with pytest.raises(MalformedCheckpoint):
            Checkpoint(**bad)
    assert Checkpoint("o", 2**64 - 1, ROOT).size == 2**64 - 1
    assert Checkpoint.from_text(Checkpoint("o", 0, ROOT).text()).size == 0


def test_error_kinds_are_distinct() -> None:
    classes = (CheckpointError, MalformedCheckpoint, WrongOrigin, UnsignedCheckpoint)
    assert len({c.kind for c in classes}) == len(classes)


origins = st.text(
    st.characters(min_codepoint=0x21, blacklist_categories=("Cs",)), min_size=1, max_size=20
)


@settings(max_examples=150, deadline=None)
@given(
    origins,
    st.integers(0, 2**64 - 1),
    st.binary(min_size=32, max_size=32),
    st.lists(origins, max_size=3),
)
def test_checkpoints_round_trip(origin: str, size: int, root: bytes, ext: list[str]) -> None:
    checkpoint = Checkpoint(origin, size, root, tuple(ext))
    assert Checkpoint.from_text(checkpoint.text()) == checkpoint
    note = checkpoint.sign(LOG)
    assert open_checkpoint(note.encode(), origin, LOG.verifier).checkpoint == checkpoint
