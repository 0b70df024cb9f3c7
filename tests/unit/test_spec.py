"""``messages/SPEC.md`` holds the example the code produces today, and that example verifies."""

from __future__ import annotations

import json
import re

import pytest

from cosigner.spec_example import SPEC, embedded, section
from messages import verify  # noqa: F401 - loads every module a verifier's refusals live in
from messages.ids import parse_time
from messages.pins import Pins
from messages.verification import DigestMismatch, VerificationError
from messages.verifier_state import VerifierState
from messages.verify import verify_bundle


def _json_blocks(text: str) -> list[dict]:
    return [json.loads(block) for block in re.findall(r"```json\n(.*?)\n```", text, re.S)]


@pytest.fixture(scope="module")
def spec_example() -> str:
    return embedded(SPEC.read_text())


def test_the_example_is_what_the_code_generates(spec_example: str) -> None:
    assert spec_example == section(), "run: python -m cosigner.spec_example --write"


def test_the_example_bundle_verifies_and_yields_the_stated_state(spec_example: str) -> None:
    pins, bundle, state = _json_blocks(spec_example)
    now = re.search(r"runs at `([^`]+)`", spec_example).group(1)
    accepted = verify_bundle(bundle, Pins.from_json(pins), VerifierState(), parse_time(now))
    assert accepted.state.to_json() == state
    bundle["artifact"]["epoch"] = 2
    with pytest.raises(DigestMismatch):
        verify_bundle(bundle, Pins.from_json(pins), VerifierState(), parse_time(now))


def test_every_error_kind_named_in_the_spec_exists() -> None:
    text = SPEC.read_text()
    refusals = _subclasses(VerificationError)
    # A root of several refusals (``retirement``) is never raised itself.
    kinds = {c.kind for c in refusals if not c.__subclasses__()}
    missing = sorted(k for k in kinds if f"`{k}`" not in text)
    assert not missing


def _subclasses(cls: type) -> list[type]:
    """Every class below ``cls`` (the verifier's refusals live in several modules)."""
    return [c for sub in cls.__subclasses__() for c in (sub, *_subclasses(sub))]
