"""The files a verifying client keeps: the pins it trusts and the state it carries between runs."""

from __future__ import annotations

from pathlib import Path

from messages.canonical import canonical
from messages.documents import DocumentError, load_json
from messages.errors import MessageError
from messages.pins import Pins
from messages.verification import PinsError, StateError
from messages.verifier_state import VerifierState
from transport.files import write_file


def load_pins(path: Path) -> Pins:
    """The pins in the JSON file ``path``; raises :class:`PinsError`."""
    try:
        return Pins.from_json(load_json(Path(path).read_bytes()))
    except (OSError, DocumentError, MessageError) as exc:
        raise PinsError(f"cannot read pins: {exc}", path=str(path)) from exc


def save_pins(path: Path, pins: Pins) -> None:
    """Write ``pins`` to ``path`` whole or not at all."""
    write_file(path, canonical(pins.to_json()) + b"\n")


def load_state(path: Path) -> VerifierState:
    """The verifier state in ``path``, or the empty state if the file does not exist; raises
    :class:`StateError`."""
    path = Path(path)
    if not path.exists():
        return VerifierState()
    try:
        return VerifierState.from_json(load_json(path.read_bytes()))
    except (OSError, DocumentError, MessageError) as exc:
        raise StateError(f"cannot read verifier state: {exc}", path=str(path)) from exc


def save_state(path: Path, state: VerifierState) -> None:
    """Write ``state`` to ``path`` whole or not at all."""
    write_file(path, state.to_bytes() + b"\n")
