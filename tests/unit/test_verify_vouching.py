"""Who counts towards k, how fresh a checkpoint is, and how far ahead a timestamp may be
(``messages/SPEC.md`` 4.7 and 7, steps 3.6 to 4.1), over bundles made by the real cosigner code
(the world of :mod:`tests.unit.test_verify`), with cosignature lines added by the cosigners'
own keys."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import pytest

from cosigner.testbed import COSIGNERS
from messages.checkpoint import Checkpoint, open_checkpoint
from messages.cosignature import CosignatureSigner, cosignatures
from messages.documents import MalformedDocument
from messages.keyring import Keyring
from messages.log_proofs import MAX_CLOCK_SKEW_S, witnesses_of
from messages.note import Ed25519NoteVerifier, Note
from messages.pins import LOGGED, WITNESSED, Pins
from messages.signing import Ed25519Signer
from messages.verification import BelowThreshold, FutureCosignature, StaleView
from messages.verifier_state import VerifierState
from messages.verify import verify_bundle
from ops import cli
from ops.verifier_files import load_pins
from tests.unit.test_verify import NOW, World, build_world

A, B = (name for _, name, _ in COSIGNERS)
NOW_S = NOW // 1000
STRANGER = ("cosigner-z.example/log", bytes(range(9, 41)))


@pytest.fixture(scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return await build_world(tmp_path_factory.mktemp("vouching-world"))


def _cosigned(note: str, name: str, seed: bytes, timestamp: int) -> str:
    """``note`` with a cosignature by ``name``'s key (from ``seed``) at ``timestamp``."""
    parsed = Note.parse(note)
    signer = CosignatureSigner(name, Ed25519Signer.from_seed(seed))
    line = signer.cosign(Checkpoint.from_text(parsed.text), timestamp)
    return parsed.with_signature(line).encode().decode()


def _by(name: str, timestamp: int) -> tuple[str, bytes, int]:
    seed = next(s for _, n, s in COSIGNERS if n == name) if name != STRANGER[0] else STRANGER[1]
    return name, seed, timestamp


def _bundle(world: World, lines: dict[str, list[tuple[str, bytes, int]]], only=None) -> dict:
    """``world.first`` with cosignature ``lines`` added to each log's checkpoint (log name ->
    lines), keeping only the proofs of the logs in ``only`` if given; witness lines already
    there are dropped first, so only the ones given count."""
    raw = copy.deepcopy(world.first.to_json())
    if only is not None:
        raw["proofs"] = [p for p in raw["proofs"] if p["statement"]["log"] in only]
    for proof in raw["proofs"]:
        log = proof["statement"]["log"]
        parsed = Note.parse(proof["checkpoint"])
        note = Note(parsed.text, tuple(s for s in parsed.signatures if s.name == log))
        proof["checkpoint"] = note.encode().decode()
        for name, seed, timestamp in lines.get(log, []):
            proof["checkpoint"] = _cosigned(proof["checkpoint"], name, seed, timestamp)
    return raw


def _verify(world: World, bundle: dict, **pins_changes):
    pins = dataclasses.replace(world.pins, **pins_changes)
    return verify_bundle(bundle, pins, VerifierState(), NOW)


def test_pins_state_the_policy_and_default_to_the_stronger_one(world: World) -> None:
    raw = world.pins.to_json()
    assert "vouching" not in raw  # pins written before the policy keep their bytes
    assert Pins.from_json(raw).vouching == LOGGED
    witnessed = Pins.from_json({**raw, "vouching": WITNESSED})
    assert witnessed.vouching == WITNESSED and witnessed.to_json()["vouching"] == WITNESSED
    with pytest.raises(MalformedDocument):
        Pins.from_json({**raw, "vouching": "seen"})


def test_by_default_only_logs_count_towards_k(world: World) -> None:
    """B cosigning A's checkpoint saw A's log, not the artifact: one party checked it."""
    bundle = _bundle(world, {A: [_by(B, NOW_S)]}, only={A})
    with pytest.raises(BelowThreshold) as caught:
        _verify(world, bundle)
    assert caught.value.detail["vouchers"] == [A]
    assert _verify(world, bundle, vouching=WITNESSED).vouchers == (A, B)
    assert _verify(world, _bundle(world, {})).vouchers == (A, B)  # each logged it


def test_a_logs_own_cosignature_never_makes_it_its_own_witness(world: World) -> None:
    bundle = _bundle(world, {A: [_by(A, NOW_S)]}, only={A})
    with pytest.raises(BelowThreshold) as caught:
        _verify(world, bundle, vouching=WITNESSED)
    assert caught.value.detail["vouchers"] == [A]
    assert _verify(world, bundle, vouching=WITNESSED, threshold=1).vouchers == (A,)
    proof = bundle["proofs"][0]
    keyring = Keyring.of(world.pins, VerifierState())
    signed = open_checkpoint(
        proof["checkpoint"],
        A,
        Ed25519NoteVerifier(A, world.pins.cosigner(A).public_key),
        keyring.witnesses(),
    )
    dated = keyring.in_force(cosignatures(signed, keyring.witnesses()))
    assert [c.name for c in dated] == [A] and witnesses_of(dated, A) == set()


def test_freshness_is_the_newest_pinned_timestamp_whoever_made_it(world: World) -> None:
    """Step 3.6: every pinned cosignature in force on the checkpoint, the log's own and a
    witness's alike (counted towards k or not), and nothing else."""
    hour = 3600
    with pytest.raises(StaleView):
        _verify(world, _bundle(world, {}), max_checkpoint_age=hour)
    own = _bundle(world, {A: [_by(A, NOW_S - 10)], B: [_by(B, NOW_S - 10)]})
    assert _verify(world, own, max_checkpoint_age=hour)
    witnessed = _bundle(world, {A: [_by(B, NOW_S - 10)], B: [_by(A, NOW_S - 10)]})
    assert _verify(world, witnessed, max_checkpoint_age=hour).vouchers == (A, B)
    unpinned = _bundle(world, {A: [_by(STRANGER[0], NOW_S)], B: [_by(STRANGER[0], NOW_S)]})
    with pytest.raises(StaleView):
        _verify(world, unpinned, max_checkpoint_age=hour)


def test_a_cosignature_dated_beyond_the_clock_skew_is_refused(world: World) -> None:
    """Without a bound, a cosignature dated a year ahead keeps a view "fresh" for a year."""
    for name in (A, B):
        ahead = _bundle(world, {A: [_by(name, NOW_S + MAX_CLOCK_SKEW_S + 1)]})
        with pytest.raises(FutureCosignature) as caught:
            _verify(world, ahead)
        assert caught.value.detail["cosigners"] == [name]
    edge = _bundle(world, {A: [_by(B, NOW_S + MAX_CLOCK_SKEW_S)], B: [_by(B, NOW_S)]})
    assert _verify(world, edge, max_checkpoint_age=60)
    # A line no pinned key made is ignored, whatever its date.
    assert _verify(world, _bundle(world, {A: [_by(STRANGER[0], NOW_S + 10**9)]}))


def test_the_pins_verb_writes_the_policy_asked_for(world: World, tmp_path: Path) -> None:
    argv = ["pins", "--threshold", "2", "--operator-key", str(tmp_path / "operator.json")]
    (tmp_path / "operator.json").write_text(json.dumps(world.pins.operator.to_json()))
    for i, pin in enumerate(world.pins.cosigners):
        (tmp_path / f"{i}.pin").write_text(json.dumps(pin.to_json()))
        argv += ["--cosigner", str(tmp_path / f"{i}.pin")]
    for extra, policy in (([], LOGGED), (["--vouching", WITNESSED], WITNESSED)):
        out = tmp_path / f"{policy}.json"
        args = cli.build_parser().parse_args([*argv, *extra, "--out", str(out)])
        assert args.run(args) == 0
        assert load_pins(out).vouching == policy
        assert ("vouching" in json.loads(out.read_text())) == (policy != LOGGED)
