"""Property tests: signed notes round-trip, and no single-bit change of a signed note opens."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from messages.note import Ed25519NoteSigner, Note, NoteError, open_note
from messages.signing import Ed25519Signer

LOG = Ed25519NoteSigner("log.example/a", Ed25519Signer.from_seed(bytes(range(32))))
WITNESS = Ed25519NoteSigner("witness.example/b", Ed25519Signer.from_seed(bytes(range(1, 33))))

line = st.text(
    st.characters(min_codepoint=0x20, blacklist_categories=("Cs",)), min_size=0, max_size=30
)
texts = st.lists(line, min_size=1, max_size=5).map(lambda lines: "".join(x + "\n" for x in lines))


@settings(max_examples=150, deadline=None)
@given(texts)
def test_signed_notes_round_trip(text: str) -> None:
    note = Note(text).with_signature(LOG.sign(text)).with_signature(WITNESS.sign(text))
    data = note.encode()
    assert Note.parse(data) == note
    opened = open_note(data, [LOG.verifier])
    assert opened.text == text
    assert opened.verified == (LOG.sign(text),)
    assert opened.unverified == (WITNESS.sign(text),)


@settings(max_examples=300, deadline=None)
@given(texts, st.data())
def test_no_single_bit_change_opens(text: str, data) -> None:
    encoded = bytearray(Note(text).with_signature(LOG.sign(text)).encode())
    bit = data.draw(st.integers(0, 8 * len(encoded) - 1))
    encoded[bit // 8] ^= 1 << (bit % 8)
    try:
        open_note(bytes(encoded), [LOG.verifier])
    except NoteError:
        return
    raise AssertionError(f"a changed note opened: {bytes(encoded)!r}")
