"""Client verification over validation bundles made by the real cosigner code.

Two real cosigners (durable logs, their own keys, witnessing each other) log a fleet's chain and
artifacts; the operator countersigns; the verifier must accept the genuine bundles and refuse
each negative vector with its own error: tampered artifact, missing cosigner, wrong
countersigner, bad inclusion proof, split view, rollback, freeze, and the quorum floor.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS

from cosigner.testbed import DAY_MS, MEMBERS, Testbed, sample_artifact, sample_chain
from messages.canonical import b64
from messages.cosignature import SIG_COSIGNATURE_V1
from messages.documents import MalformedDocument
from messages.ids import parse_time
from messages.log_proofs import needed_proofs
from messages.note import Note, NoteSignature, key_id
from messages.pins import WITNESSED, CosignerPin, OperatorPin, Pins, QuorumFloor
from messages.signing import Ed25519Signer
from messages.statement import Countersignature
from messages.validation import Consistency, ValidationBundle
from messages.verification import (
    BadCheckpoint,
    BadCountersignature,
    BadInclusionProof,
    BadStatementSignature,
    BelowThreshold,
    DigestMismatch,
    EpochConflict,
    Expired,
    MalformedBundle,
    MissingConsistencyProof,
    NotYetValid,
    PinsError,
    QuorumBelowFloor,
    Rollback,
    SplitView,
    StaleCheckpoint,
    StateError,
    StatementMismatch,
    VerificationError,
)
from messages.verifier_state import VerifierState
from messages.verify import Accepted, verify_bundle
from ops.verifier_files import load_pins, load_state, save_state

START = parse_time("2026-01-01T00:00:00.000Z")
NOW = START + DAY_MS
ED25519_ORDER = 2**252 + 27742317777372353535851937790883648493
A, B = "cosigner-a.example/log", "cosigner-b.example/log"


@dataclasses.dataclass
class World:
    """Bundles made by one run of two cosigners, and a fork of the same logs."""

    pins: Pins
    first: ValidationBundle  # fleet-1 epoch 1, right after its chain
    second: ValidationBundle  # fleet-1 epoch 2, with the epoch-1 vault key as legacy
    first_again: ValidationBundle  # epoch 1 again, proved against the newest checkpoint
    rival: ValidationBundle  # fleet-2 starting at epoch 2: same epoch as ``second``
    forked: ValidationBundle  # same keys and origins, another history: a split view
    proofs: dict  # every consistency proof between sizes of the main logs
    fork_proofs: dict  # consistency proofs the forked logs give for their own history


async def build_world(directory: Path, nc: NATS | None = None) -> World:
    """Run the cosigners in process, or served on NATS through ``nc`` when given."""
    bed = Testbed.create(directory / "main")
    if nc is not None:
        await bed.serve(nc)
    try:
        first_artifact = sample_artifact(members=MEMBERS[:3])
        for bundle in sample_chain(artifact=first_artifact):
            await bed.client.log(bundle)
        first = await bed.client.publish(first_artifact)
        bed.clock.advance(1000)
        second = await bed.client.publish(sample_artifact(epoch=2, legacy=True))
        first_again = await bed.client.publish(first_artifact)
        rival = await bed.client.publish(sample_artifact("fleet-2", epoch=2))
        pins = bed.pins()
        proofs = _all_proofs(bed)
        assert len(bed.services) == (2 if nc else 0)
        assert all(service.gate.accepted > 10 for service in bed.services)
    finally:
        await bed.close()
    fork = Testbed.create(directory / "fork")
    if nc is not None:
        await fork.serve(nc)
    try:
        for bundle in sample_chain("fleet-9"):
            await fork.client.log(bundle)
        await fork.client.log(sample_artifact("fleet-9"))
        forked = await fork.client.publish(sample_artifact(epoch=3))
        fork_proofs = {k: v for k, v in _all_proofs(fork).items() if k[1] == 5 and k[2] == 6}
    finally:
        await fork.close()
    return World(pins, first, second, first_again, rival, forked, proofs, fork_proofs)


def _all_proofs(bed: Testbed) -> dict:
    return {
        (c.name, old, new): c.notary.consistency_proof(old, new)
        for c in bed.cosigners
        for new in range(1, c.notary.size + 1)
        for old in range(1, new)
    }


@pytest.fixture(scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return await build_world(tmp_path_factory.mktemp("verify-world"))


def _raw(bundle: ValidationBundle) -> dict:
    return copy.deepcopy(bundle.to_json())


def _accept(world: World, bundle, state: VerifierState | None = None, **kw) -> Accepted:
    """Verify at NOW with the world's pins and, unless told otherwise, the main logs' proofs."""
    pins = kw.pop("pins", world.pins)
    proofs = kw.pop("proofs", world.proofs)
    return verify_bundle(bundle, pins, state or VerifierState(), NOW, proofs)


def _without_cosignature_of(note: str, name: str) -> str:
    parsed = Note.parse(note)
    kept = tuple(s for s in parsed.signatures if not (s.name == name and len(s.signature) == 72))
    return Note(parsed.text, kept).encode().decode()


# --- genuine bundles --------------------------------------------------------------------


def test_genuine_bundle_is_accepted_and_the_state_records_it(world: World) -> None:
    accepted = _accept(world, world.first)
    assert accepted.vouchers == (A, B)
    assert accepted.artifact == world.first.artifact
    assert accepted.state.epoch == 1
    assert accepted.state.digest == world.first.digest
    assert set(accepted.state.checkpoints) == {A, B}
    assert accepted.state.checkpoints[A].size == 5


def test_bundle_bytes_and_state_survive_a_round_trip(world: World, tmp_path: Path) -> None:
    accepted = _accept(world, world.first.to_bytes())
    save_state(tmp_path / "state.json", accepted.state)
    state = load_state(tmp_path / "state.json")
    assert state == accepted.state
    again = verify_bundle(world.first.to_bytes(), world.pins, state, NOW)
    assert again.state == state


def test_later_epochs_follow_with_consistent_checkpoints(world: World) -> None:
    state = _accept(world, world.first).state
    accepted = _accept(world, world.second, state)
    assert accepted.state.epoch == 2
    assert accepted.state.checkpoints[A].size > state.checkpoints[A].size
    legacy = [k for k in accepted.artifact.keys if k.legacy_until]
    assert legacy and accepted.artifact.keys_usable_at(NOW) == accepted.artifact.keys


def test_a_witness_counts_towards_k_only_when_the_pins_say_so(world: World) -> None:
    """By default k counts the cosigners that logged the artifact; B only cosigning A's
    checkpoint saw A's log, not the artifact."""
    raw = _raw(world.first)
    raw["proofs"] = [p for p in raw["proofs"] if p["statement"]["log"] == A]
    with pytest.raises(BelowThreshold) as caught:
        _accept(world, raw)
    assert caught.value.detail["vouchers"] == [A]
    witnessed = dataclasses.replace(world.pins, vouching=WITNESSED)
    assert _accept(world, raw, pins=witnessed).vouchers == (A, B)


def test_logs_the_verifier_does_not_pin_prove_nothing(world: World) -> None:
    only_a = dataclasses.replace(world.pins, cosigners=(world.pins.cosigner(A),), threshold=1)
    accepted = _accept(world, world.first, pins=only_a)
    assert accepted.vouchers == (A,)
    assert set(accepted.state.checkpoints) == {A}


# --- negative vectors -------------------------------------------------------------------


def test_tampered_artifact(world: World) -> None:
    raw = _raw(world.first)
    raw["artifact"]["keys"][0]["public_key"] = _flip(world.first.artifact.keys[0].public_key)
    with pytest.raises(DigestMismatch):
        _accept(world, raw)


def test_tampered_artifact_with_a_matching_digest(world: World) -> None:
    raw = _raw(world.first)
    raw["artifact"]["quorum"]["threshold"] = 3
    raw["digest"] = ValidationBundle.from_json(raw).artifact.digest
    with pytest.raises(StatementMismatch):
        _accept(world, raw)


def test_missing_cosigner(world: World) -> None:
    raw = _raw(world.first)
    raw["proofs"] = [p for p in raw["proofs"] if p["statement"]["log"] == A]
    raw["proofs"][0]["checkpoint"] = _without_cosignature_of(raw["proofs"][0]["checkpoint"], B)
    with pytest.raises(BelowThreshold) as caught:
        _accept(world, raw)
    assert caught.value.detail["vouchers"] == [A]
    assert _accept(world, raw, pins=dataclasses.replace(world.pins, threshold=1)).vouchers == (A,)


def test_wrong_countersigner(world: World) -> None:
    raw = _raw(world.first)
    impostor = Ed25519Signer.from_seed(bytes(32))
    signature = world.first.proofs[0].signature
    raw["proofs"][0]["countersignature"] = Countersignature.make(impostor, signature).to_json()
    with pytest.raises(BadCountersignature):
        _accept(world, raw)


def test_countersignature_over_another_signature(world: World) -> None:
    raw = _raw(world.first)
    raw["proofs"][0]["countersignature"] = raw["proofs"][1]["countersignature"]
    with pytest.raises(BadCountersignature):
        _accept(world, raw)


def test_bad_inclusion_proof(world: World) -> None:
    raw = _raw(world.first)
    proof = world.first.proofs[0].inclusion
    raw["proofs"][0]["inclusion"] = [_flip(proof[0]), *raw["proofs"][0]["inclusion"][1:]]
    with pytest.raises(BadInclusionProof):
        _accept(world, raw)


def test_inclusion_proof_against_another_checkpoint(world: World) -> None:
    raw = _raw(world.first)
    raw["proofs"][0]["checkpoint"] = _raw(world.second)["proofs"][0]["checkpoint"]
    with pytest.raises(BadInclusionProof):
        _accept(world, raw)


def test_statement_signature_by_another_cosigner(world: World) -> None:
    raw = _raw(world.first)
    raw["proofs"][0]["signature"] = raw["proofs"][1]["signature"]
    with pytest.raises(BadStatementSignature):
        _accept(world, raw)


def test_a_statement_signature_in_its_malleable_form_is_refused(world: World) -> None:
    """``S + L`` verifies under lax Ed25519 implementations; the signature must be unique."""
    signature = world.first.proofs[0].signature
    s = int.from_bytes(signature[32:], "little") + ED25519_ORDER
    raw = _raw(world.first)
    raw["proofs"][0]["signature"] = b64(signature[:32] + s.to_bytes(32, "little"))
    with pytest.raises(BadStatementSignature):
        _accept(world, raw)


@pytest.mark.parametrize(
    ("field", "value"),
    [("index", 0), ("fleet", "fleet-2"), ("seq", 2), ("logged_at", "2025-01-01T00:00:00.000Z")],
)
def test_an_altered_statement_fails_its_signature_first(
    world: World, field: str, value: object
) -> None:
    """Nothing in a statement is read before its signature verifies."""
    raw = _raw(world.first)
    assert raw["proofs"][0]["statement"][field] != value
    raw["proofs"][0]["statement"][field] = value
    with pytest.raises(BadStatementSignature):
        _accept(world, raw)


def test_a_failing_cosignature_by_a_pinned_witness_refuses_the_checkpoint(world: World) -> None:
    raw = _raw(world.first)
    note = Note.parse(raw["proofs"][0]["checkpoint"])
    line = next(s for s in note.signatures if s.name == B)
    broken = NoteSignature(B, line.key_id, line.signature[:8] + bytes(64))
    raw["proofs"][0]["checkpoint"] = note.with_signature(broken).encode().decode()
    with pytest.raises(BadCheckpoint):
        _accept(world, raw)


def test_checkpoint_not_signed_by_its_log(world: World) -> None:
    raw = _raw(world.first)
    raw["proofs"][0]["checkpoint"] = raw["proofs"][1]["checkpoint"]
    with pytest.raises(BadCheckpoint):
        _accept(world, raw)


def test_split_view(world: World) -> None:
    state = _accept(world, world.first).state
    with pytest.raises(MissingConsistencyProof):
        _accept(world, world.forked, state, proofs={})
    with pytest.raises(SplitView):
        _accept(world, world.forked, state, proofs=world.fork_proofs)
    # Without history the forked bundle is genuine: only the stored checkpoint exposes it.
    assert _accept(world, world.forked).state.epoch == 3


def test_stale_checkpoint(world: World) -> None:
    state = _accept(world, world.second).state
    with pytest.raises(StaleCheckpoint):
        _accept(world, world.first, state)


def test_rollback(world: World) -> None:
    state = _accept(world, world.second).state
    with pytest.raises(Rollback):
        _accept(world, world.first_again, state)
    assert _accept(world, world.first_again).state.epoch == 1


def test_epoch_conflict(world: World) -> None:
    state = _accept(world, world.second).state
    with pytest.raises(EpochConflict):
        _accept(world, world.rival, state)
    assert _accept(world, world.second, state).state == state


def test_freeze(world: World) -> None:
    not_after = parse_time(world.first.artifact.not_after)
    with pytest.raises(Expired):
        verify_bundle(world.first, world.pins, VerifierState(), not_after)
    verify_bundle(world.first, world.pins, VerifierState(), not_after - 1)
    verify_bundle(world.first, world.pins, VerifierState(), START)  # not_before is inclusive
    with pytest.raises(NotYetValid):
        verify_bundle(world.first, world.pins, VerifierState(), START - 1)


@pytest.mark.parametrize(
    "floor",
    [
        QuorumFloor(min_members=5),
        QuorumFloor(min_threshold=3),
        QuorumFloor(min_domains=3),
        QuorumFloor(survive_domain_loss=True),
    ],
)
def test_quorum_below_floor(world: World, floor: QuorumFloor) -> None:
    with pytest.raises(QuorumBelowFloor):
        _accept(world, world.first, pins=dataclasses.replace(world.pins, floor=floor))
    _accept(world, world.second, pins=dataclasses.replace(world.pins, floor=floor))


def test_malformed_bundles(world: World) -> None:
    for data in (b"not json", b"{}", b'{"format": "hsmfleet/validation-bundle/v1"}'):
        with pytest.raises(MalformedBundle):
            _accept(world, data)
    raw = _raw(world.first)
    raw["proofs"].append(raw["proofs"][0])
    with pytest.raises(MalformedBundle, match="one proof per log"):
        _accept(world, raw)
    raw = _raw(world.first)
    raw["artifact"]["comment"] = "\ud800"
    with pytest.raises(MalformedBundle, match="no canonical form"):
        _accept(world, raw)


def test_each_refusal_has_its_own_kind() -> None:
    kinds = [cls.kind for cls in _subclasses(VerificationError)]
    assert len(kinds) == len(set(kinds)) >= 16


def test_a_refused_bundle_leaves_the_state_as_it_was(world: World) -> None:
    state = _accept(world, world.second).state
    before = state.to_bytes()
    with pytest.raises(Rollback):
        _accept(world, world.first_again, state)
    assert state.to_bytes() == before


def test_one_key_pinned_under_two_names_is_refused(world: World, tmp_path: Path) -> None:
    """A cosignature does not sign the witness's name: relabelled to a second name of the same
    key it verifies again, so such pins would let one signature vouch twice."""
    b = world.pins.cosigner(B)
    alias = CosignerPin("cosigner-c.example/log", b.public_key)
    raw = _raw(world.first)
    raw["proofs"] = [p for p in raw["proofs"] if p["statement"]["log"] == A]
    note = Note.parse(raw["proofs"][0]["checkpoint"])
    line = next(s for s in note.signatures if s.name == B)
    relabelled = NoteSignature(
        alias.name, key_id(alias.name, SIG_COSIGNATURE_V1, b.public_key), line.signature
    )
    assert alias.witness_verifier.verify(note.text.encode(), relabelled.signature)
    raw["proofs"][0]["checkpoint"] = note.with_signature(relabelled).encode().decode()
    with pytest.raises(MalformedDocument, match="keys must be distinct"):
        dataclasses.replace(world.pins, cosigners=(*world.pins.cosigners, alias), threshold=3)
    # An unpinned name proves nothing, whatever key its line verifies under.
    witnessed = dataclasses.replace(world.pins, vouching=WITNESSED)
    assert _accept(world, raw, pins=witnessed).vouchers == (A, B)
    pins = world.pins.to_json()
    pins["cosigners"].append(alias.to_json())
    (tmp_path / "pins.json").write_text(json.dumps(pins))
    with pytest.raises(PinsError):
        load_pins(tmp_path / "pins.json")


def test_the_operator_key_is_no_cosigner_key(world: World) -> None:
    b = world.pins.cosigner(B)
    with pytest.raises(MalformedDocument, match="operator"):
        dataclasses.replace(world.pins, operator=OperatorPin("ed25519", b.public_key))


def test_pins_refuse_keys_anyone_can_sign_for() -> None:
    identity = bytes([1]) + bytes(31)
    with pytest.raises(MalformedDocument):
        CosignerPin(A, identity)
    with pytest.raises(MalformedDocument):
        OperatorPin("ed25519", identity)


@pytest.mark.parametrize(
    "state",
    [
        {"checkpoints": {A: {"size": -1, "root": b64(bytes(32))}}},
        {"checkpoints": {A: {"size": 1, "root": b64(bytes(31))}}},
        {"checkpoints": {"not an origin": {"size": 1, "root": b64(bytes(32))}}},
        {"epoch": 2, "digest": None, "checkpoints": {}},
        {"epoch": 0, "digest": "ab" * 32, "checkpoints": {}},
        {"epoch": 1, "digest": "AB" * 32, "checkpoints": {}},
    ],
)
def test_a_state_file_that_breaks_its_rules_is_refused(tmp_path: Path, state: dict) -> None:
    path = tmp_path / "state.json"
    path.write_text(json.dumps({"format": "hsmfleet/verifier-state/v1"} | state))
    with pytest.raises(StateError):
        load_state(path)


# --- consistency proofs carried or fetched -------------------------------------------------


def test_consistency_proofs_can_travel_in_the_bundle(world: World) -> None:
    state = _accept(world, world.first).state
    with pytest.raises(MissingConsistencyProof):
        _accept(world, world.second, state, proofs={})
    needed = needed_proofs(world.forked, world.pins, state)
    assert sorted(n[:3] for n in needed) == sorted(world.fork_proofs)
    raw = _raw(world.forked)
    for proof in raw["proofs"]:
        key = next(k for k in world.fork_proofs if k[0] == proof["statement"]["log"])
        proof["consistency"] = [Consistency(key[1], tuple(world.fork_proofs[key])).to_json()]
    assert needed_proofs(ValidationBundle.from_json(raw), world.pins, state) == []
    with pytest.raises(SplitView):
        _accept(world, raw, state, proofs={})
    raw = _raw(world.second)
    for proof in raw["proofs"]:
        key = (proof["statement"]["log"], 5, 6)
        proof["consistency"] = [Consistency(5, tuple(world.proofs[key])).to_json()]
    assert _accept(world, raw, state, proofs={}).state.epoch == 2


def _flip(data: bytes) -> str:
    return b64(bytes([data[0] ^ 1]) + data[1:])


def _subclasses(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out += [sub, *_subclasses(sub)]
    return out
