"""Signer-key rotation, fleet retirement and freshness, over real cosigners (durable logs, their
own keys, witnessing each other) and a verifier pinned to the original keys.

The world: a fleet's chain and epoch-1 artifact are logged; the operator rotates its
countersigning key twice (v1 -> v3) and cosigner A its log key twice (v1 -> v3), each rotation
logged by both cosigners; then the epoch-2 artifact is published. The verifier that accepted
epoch 1 walks the chain to the current keys and accepts epoch 2; every bad input is refused with
its own error and changes nothing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path

import pytest

from cosigner.testbed import COSIGNERS, DAY_MS, MEMBERS, Testbed, sample_artifact, sample_chain
from messages.audit import BrokenChain, audit_entries, own_keys
from messages.checkpoint import Checkpoint
from messages.cosignature import CosignatureSigner
from messages.documents import MalformedDocument, time_ms
from messages.ids import format_time
from messages.keyring import Keyring, pinned_keys
from messages.log_proofs import check_logged
from messages.note import Ed25519NoteSigner, Note, NoteSignature
from messages.origin import OPERATOR
from messages.pins import WITNESSED, OperatorPin, Pins
from messages.retirement import FleetRetired, FleetRetirement, RetirementEpochMismatch
from messages.rotation import (
    KeyRotation,
    RotationBadKey,
    RotationSingleSigned,
    RotationVersionGap,
    RotationWrongOldKey,
    StaleRotation,
)
from messages.signing import Ed25519Signer
from messages.statement import parse_logged_bytes
from messages.validation import LoggedNotice, ValidationBundle, with_rotations
from messages.verification import (
    BadCheckpoint,
    BadStatementSignature,
    BelowThreshold,
    LegacyKeyExpired,
    MalformedBundle,
    StaleView,
    StatePinsMismatch,
    SupersededKey,
    UnknownFleetKey,
)
from messages.verifier_state import KeyInForce, VerifierState
from messages.verify import (
    RotationNotLogged,
    check_fleet_key,
    ingest_retirement,
    ingest_rotations,
    parse_bundle,
    verify_bundle,
)
from ops import cli
from ops.verifier_files import load_state, save_pins
from tests.unit.test_small_order_keys import SmallOrderSigner

A, B = "cosigner-a.example/log", "cosigner-b.example/log"
OPERATOR_KEYS = [Ed25519Signer.from_seed(bytes([n]) * 32) for n in (101, 102, 103)]


@dataclasses.dataclass
class World:
    pins: Pins
    first: ValidationBundle  # epoch 1, before any rotation, countersigned by operator v1
    second: ValidationBundle  # epoch 2, after all rotations, with the rotation chain
    late: ValidationBundle  # ``second`` proved again two days later; its chain as it was
    chain: list[LoggedNotice]  # operator v2, A v2, operator v3, A v3, in logged order
    state: VerifierState  # what the verifier stored when it accepted ``first``
    retirement: LoggedNotice  # fleet-1 retired after epoch 2
    old_operator_bundle: ValidationBundle  # epoch 2 countersigned by operator v1
    a_old_seed: bytes
    now: int
    refusals: dict[str, str]  # what each cosigner answered to the bad rotations
    proofs: dict  # every consistency proof between sizes of both logs
    a_log: tuple[str, list[bytes]]  # A's latest checkpoint note and all its entries


def _verify(world: World, bundle, state: VerifierState, **kw):
    """Verify with the world's pins, time and consistency proofs unless told otherwise."""
    pins = kw.pop("pins", world.pins)
    now = kw.pop("now", world.now)
    return verify_bundle(bundle, pins, state, now, world.proofs, **kw)


async def _rotate_operator(bed: Testbed, version: int) -> LoggedNotice:
    old, new = OPERATOR_KEYS[version - 2], OPERATOR_KEYS[version - 1]
    bed.clock.advance(1000)
    rotation = KeyRotation.make(OPERATOR, version, old, new, format_time(bed.clock()))
    logged = await bed.client.log(rotation)
    bed.client.operator = new
    return bed.client.notice(logged)


async def _rotate_cosigner(bed: Testbed, cid: str) -> LoggedNotice:
    bed.clock.advance(1000)
    rotation = await bed.cosigner(cid).rotate_key()
    return bed.client.notice(await bed.client.log(rotation))


async def _refusal(bed: Testbed, cid: str, document: dict) -> str:
    try:
        await bed.cosigner(cid).sign(document)
    except Exception as exc:
        return exc.kind
    return "accepted"


async def build_world(directory: Path) -> World:
    bed = Testbed.create(directory, operator=OPERATOR_KEYS[0])
    try:
        pins = bed.pins()
        first_artifact = sample_artifact(members=MEMBERS[:3])
        for bundle in sample_chain(artifact=first_artifact):
            await bed.client.log(bundle)
        first = await bed.client.publish(first_artifact)
        now = bed.clock() + DAY_MS
        state = verify_bundle(first, pins, VerifierState(), now).state

        chain = [await _rotate_operator(bed, 2), await _rotate_cosigner(bed, "cosigner-a")]
        chain += [await _rotate_operator(bed, 3), await _rotate_cosigner(bed, "cosigner-a")]

        at = format_time(bed.clock())
        v3, stranger = OPERATOR_KEYS[2], Ed25519Signer.from_seed(bytes([9]) * 32)
        good = KeyRotation.make(OPERATOR, 4, v3, stranger, at)
        bad = {
            "single": dataclasses.replace(good, new_signature=v3.sign(good.signing_bytes())),
            "gap": KeyRotation.make(OPERATOR, 5, v3, stranger, at),
            "wrong_old": KeyRotation.make(OPERATOR, 4, OPERATOR_KEYS[0], stranger, at),
            "stale": KeyRotation.make(OPERATOR, 3, v3, stranger, at),
            "small_order": KeyRotation.make(OPERATOR, 4, v3, SmallOrderSigner(), at),
        }
        refusals = {k: await _refusal(bed, "cosigner-b", r.to_json()) for k, r in bad.items()}

        bed.clock.advance(1000)
        second_artifact = sample_artifact(epoch=2, legacy=True)
        logged = await bed.client.log(second_artifact)
        second = with_rotations(bed.client.bundle(logged), chain)
        bed.client.operator = OPERATOR_KEYS[0]
        old_operator_bundle = with_rotations(bed.client.bundle(logged), chain)
        bed.client.operator = OPERATOR_KEYS[2]

        retirement = FleetRetirement(
            fleet="fleet-1",
            last_epoch=2,
            successor="fleet-2",
            retired_at=format_time(bed.clock()),
            reason="replaced by fleet-2",
        )
        wrong = dataclasses.replace(retirement, last_epoch=1)
        refusals["retire_wrong_epoch"] = await _refusal(bed, "cosigner-a", wrong.to_json())
        notice = bed.client.notice(await bed.client.log(retirement))
        third = sample_artifact(epoch=3, not_before=format_time(bed.clock()))
        refusals["after_retirement"] = await _refusal(bed, "cosigner-a", third.to_json())
        proofs = {
            (c.name, old, new): c.notary.consistency_proof(old, new)
            for c in bed.cosigners
            for new in range(1, c.notary.size + 1)
            for old in range(1, new)
        }
        a = bed.cosigner("cosigner-a")
        a_log = (a.notary.checkpoint(), a.notary.entries(0, a.notary.size))
        bed.clock.advance(2 * DAY_MS)
        late = await bed.client.refresh(second)
    finally:
        await bed.close()
    return World(
        pins,
        first,
        second,
        late,
        chain,
        state,
        notice,
        old_operator_bundle,
        COSIGNERS[0][2],
        now,
        refusals,
        proofs,
        a_log,
    )


@pytest.fixture(scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return await build_world(tmp_path_factory.mktemp("rotation-world"))


def test_a_verifier_pinned_to_v1_walks_to_v3_and_accepts(world: World) -> None:
    accepted = _verify(world, world.second, world.state)
    assert accepted.artifact.epoch == 2
    assert [(r.signer, r.version) for r in accepted.rotations] == [
        (OPERATOR, 2),
        (A, 2),
        (OPERATOR, 3),
        (A, 3),
    ]
    keys = accepted.state.keys
    assert keys[OPERATOR][-1].public_key == OPERATOR_KEYS[2].public_key
    assert [k.version for k in keys[A]] == [1, 2, 3]
    assert B not in keys
    # The walked state persists, and a later bundle without the chain is still accepted.
    again = VerifierState.from_json(accepted.state.to_json())
    bare = dataclasses.replace(world.second, extra={})
    assert _verify(world, bare, again).rotations == ()


def test_the_rotation_chain_travels_in_the_bundle_and_old_bundles_still_decode(
    world: World,
) -> None:
    data = world.second.to_bytes()
    assert b'"rotations"' in data
    assert len(parse_bundle(data).rotations) == 4
    assert parse_bundle(world.first.to_bytes()).rotations == ()


def test_without_the_chain_the_new_keys_are_unknown(world: World) -> None:
    bare = dataclasses.replace(world.second, extra={})
    with pytest.raises(BadStatementSignature):  # A's statement is by a key not pinned
        _verify(world, bare, world.state)


def test_old_statements_stay_good_under_the_walked_keys(world: World) -> None:
    state, steps = ingest_rotations(world.chain, world.pins, VerifierState(), world.now)
    assert len(steps) == 4
    assert _verify(world, world.first, state).artifact.epoch == 1


def test_a_chain_given_twice_is_walked_once(world: World) -> None:
    state, _ = ingest_rotations(world.chain, world.pins, VerifierState(), world.now)
    again, steps = ingest_rotations(world.chain, world.pins, state, world.now)
    assert steps == () and again == state


def _tampered(notice: LoggedNotice, **changes: object) -> LoggedNotice:
    rotation = dataclasses.replace(notice.logged, **changes)
    return dataclasses.replace(notice, document=rotation.to_json())


def test_a_rotation_signed_by_one_key_only_is_refused(world: World) -> None:
    rotation = world.chain[0].logged
    forged = _tampered(world.chain[0], new_signature=rotation.old_signature)
    with pytest.raises(RotationSingleSigned):
        _verify(world, world.second, world.state, rotations=[forged])
    assert world.refusals["single"] == "rotation_single_signed"


def _forged(world: World, rotation: KeyRotation) -> LoggedNotice:
    """A notice of ``rotation`` (never logged) carrying the first real notice's proofs."""
    return dataclasses.replace(world.chain[0], document=rotation.to_json())


def test_a_rotation_that_skips_a_version_is_refused(world: World) -> None:
    v1, v3 = OPERATOR_KEYS[0], OPERATOR_KEYS[2]
    skip = _forged(world, KeyRotation.make(OPERATOR, 3, v1, v3, "2026-01-01T00:00:09.000Z"))
    with pytest.raises(RotationVersionGap):
        _verify(world, world.second, world.state, rotations=[skip])
    assert world.refusals["gap"] == "rotation_version_gap"
    with pytest.raises(RotationWrongOldKey):  # the chain without its first step
        _verify(world, world.second, world.state, rotations=world.chain[2:])


def test_a_rotation_from_another_old_key_is_refused(world: World) -> None:
    stranger = Ed25519Signer.from_seed(bytes([7]) * 32)
    rotation = KeyRotation.make(OPERATOR, 2, stranger, OPERATOR_KEYS[1], "2026-01-01T00:00:09.000Z")
    with pytest.raises(RotationWrongOldKey):
        _verify(world, world.second, world.state, rotations=[_forged(world, rotation)])
    assert world.refusals["wrong_old"] == "rotation_wrong_old_key"
    assert world.refusals["stale"] == "stale_rotation"


def test_a_walked_version_rotated_to_another_key_is_refused(world: World) -> None:
    state, _ = ingest_rotations(world.chain, world.pins, VerifierState(), world.now)
    other = Ed25519Signer.from_seed(bytes([8]) * 32)
    rotation = KeyRotation.make(OPERATOR, 2, OPERATOR_KEYS[0], other, "2026-01-01T00:00:09.000Z")
    with pytest.raises(StaleRotation):
        ingest_rotations([_forged(world, rotation)], world.pins, state, world.now)


def test_a_countersignature_by_a_superseded_operator_key_is_refused(world: World) -> None:
    with pytest.raises(SupersededKey):
        _verify(world, world.old_operator_bundle, world.state)


def _check_a_checkpoint(world: World, note: str) -> None:
    """Check ``world.second``'s proof from A with ``note`` as its checkpoint, A's keys walked."""
    proof = next(p for p in world.second.proofs if p.log == A)
    state, _ = ingest_rotations(world.chain, world.pins, VerifierState(), world.now)
    check_logged(
        world.pins.cosigner(A),
        world.second.artifact,
        proof.statement,
        proof.signature,
        proof.inclusion,
        note,
        Keyring.of(world.pins, state).witnesses(),
        keys=state.keys[A],
    )


def test_a_checkpoint_signed_by_a_superseded_log_key_is_refused(world: World) -> None:
    proof = next(p for p in world.second.proofs if p.log == A)
    text = Note.parse(proof.checkpoint).text
    old = Ed25519NoteSigner(A, Ed25519Signer.from_seed(world.a_old_seed))
    with pytest.raises(SupersededKey):
        _check_a_checkpoint(world, Checkpoint.from_text(text).sign(old).encode().decode())


def test_a_checkpoint_is_read_then_its_known_signatures_then_its_log_key(world: World) -> None:
    """Step 3.3's order: the text decides which key must have signed, so a malformed text is
    refused first; a failing signature by any known key comes before the missing log key."""
    proof = next(p for p in world.second.proofs if p.log == A)
    parsed = Note.parse(proof.checkpoint)
    old = Ed25519NoteSigner(A, Ed25519Signer.from_seed(world.a_old_seed))
    by_old = Checkpoint.from_text(parsed.text).sign(old)
    failing = next(s for s in parsed.signatures if s.name == B)
    failing = NoteSignature(B, failing.key_id, failing.signature[:8] + bytes(64))
    malformed = parsed.text.replace("\n", "\n\n", 1)  # an empty line is no extension
    for note, refusal in (
        (Note(malformed, (old.sign(malformed),)), BadCheckpoint),
        (by_old.with_signature(failing), BadCheckpoint),
        (by_old, SupersededKey),
    ):
        with pytest.raises(refusal):
            _check_a_checkpoint(world, note.encode().decode())


def test_a_cosigners_old_key_cosigns_only_before_its_successors_since(world: World) -> None:
    """Step 3.6: a cosignature by a superseded key counts while dated before the rotation's
    ``at`` (its successor's ``since``), for k and for freshness; not after."""
    since = time_ms(world.chain[1].logged.at, "at") // 1000  # A's move from v1 to v2
    old = CosignatureSigner(A, Ed25519Signer.from_seed(world.a_old_seed))
    pins = dataclasses.replace(world.pins, vouching=WITNESSED, max_checkpoint_age=10**9)
    for timestamp, vouchers in ((since - 1, (A, B)), (since, None)):
        proof = next(p for p in world.second.proofs if p.log == B)
        parsed = Note.parse(proof.checkpoint)
        kept = Note(parsed.text, tuple(s for s in parsed.signatures if s.name == B))
        line = old.cosign(Checkpoint.from_text(parsed.text), timestamp)
        checkpoint = kept.with_signature(line).encode().decode()
        alone = dataclasses.replace(proof, checkpoint=checkpoint)
        bundle = dataclasses.replace(world.second, proofs=(alone,))
        if vouchers is None:
            with pytest.raises(BelowThreshold):
                _verify(world, bundle, world.state, pins=pins)
        else:
            assert _verify(world, bundle, world.state, pins=pins).vouchers == vouchers


def test_a_cosigner_rotation_without_its_own_log_is_refused(world: World) -> None:
    notice = world.chain[1]
    elsewhere = dataclasses.replace(notice, proofs=tuple(p for p in notice.proofs if p.log != A))
    chain = [world.chain[0], elsewhere]
    with pytest.raises(RotationNotLogged):
        ingest_rotations(chain, world.pins, world.state, world.now)


def test_a_refused_chain_leaves_the_state_as_it_was(world: World) -> None:
    before = world.state.to_bytes()
    forged = _tampered(world.chain[3], new_signature=world.chain[3].logged.old_signature)
    with pytest.raises(RotationSingleSigned):
        _verify(world, world.second, world.state, rotations=[*world.chain[:3], forged])
    assert world.state.to_bytes() == before


def test_a_retired_fleet_is_refused_after_the_notice(world: World) -> None:
    state = ingest_retirement(
        world.retirement.to_bytes(), world.pins, world.state, world.now, world.chain
    )
    assert state.retired == {"fleet-1": 2}
    assert world.state.retired == {}
    with pytest.raises(FleetRetired):
        _verify(world, world.second, state)
    saved = VerifierState.from_json(state.to_json())
    with pytest.raises(FleetRetired):
        _verify(world, world.first, saved)


def test_cosigners_refuse_a_retired_fleets_documents_and_a_wrong_last_epoch(
    world: World,
) -> None:
    assert world.refusals["after_retirement"] == FleetRetired.kind
    assert world.refusals["retire_wrong_epoch"] == RetirementEpochMismatch.kind


def test_a_retirement_notice_with_too_few_cosigners_is_refused(world: World) -> None:
    proof = world.retirement.proofs[0]
    parsed = Note.parse(proof.checkpoint)
    log_only = Note(parsed.text, tuple(s for s in parsed.signatures if len(s.signature) == 64))
    alone = dataclasses.replace(proof, checkpoint=log_only.encode().decode())
    one = dataclasses.replace(world.retirement, proofs=(alone,))
    with pytest.raises(BelowThreshold):
        ingest_retirement(one, world.pins, world.state, world.now, world.chain)


def test_fleet_keys_in_and_after_the_overlap(world: World) -> None:
    artifact = world.second.artifact
    legacy = next(k for k in artifact.keys if k.legacy_until is not None)
    current = next(k for k in artifact.keys if k.legacy_until is None)
    start = artifact.not_before_ms
    assert check_fleet_key(artifact, legacy.public_key, "vault", start + DAY_MS) == legacy
    assert check_fleet_key(artifact, current.public_key, current.role, start + 40 * DAY_MS)
    with pytest.raises(LegacyKeyExpired):
        check_fleet_key(artifact, legacy.public_key, "vault", start + 30 * DAY_MS)
    with pytest.raises(UnknownFleetKey):
        check_fleet_key(artifact, b"\x01" * 32, "vault", start + DAY_MS)
    with pytest.raises(UnknownFleetKey):  # the right bytes under another role
        check_fleet_key(artifact, legacy.public_key, "transport", start + DAY_MS)


def test_a_checkpoint_older_than_the_maximum_age_is_refused(world: World) -> None:
    pins = dataclasses.replace(world.pins, max_checkpoint_age=3600)
    with pytest.raises(StaleView):
        _verify(world, world.second, world.state, pins=pins)
    # The witnesses' cosignatures are timestamped when the bundle was made: fresh then.
    assert _verify(world, world.second, world.state, pins=pins, now=world.now - DAY_MS + 60_000)


def test_pins_refuse_a_non_positive_maximum_age(world: World) -> None:
    with pytest.raises(MalformedDocument):
        dataclasses.replace(world.pins, max_checkpoint_age=0)
    raw = world.pins.to_json()
    assert "max_checkpoint_age" not in raw and "version" not in raw["operator"]


def test_an_audit_walks_the_logs_own_rotations_and_sees_the_retirement(world: World) -> None:
    note, entries = world.a_log
    documents = [parse_logged_bytes(e) for e in entries]
    keys = own_keys(A, pinned_keys(world.pins, VerifierState(), A)[0], documents)
    assert [k.version for k in keys] == [1, 2, 3]
    assert keys[1].from_index == next(
        i for i, d in enumerate(documents) if isinstance(d, KeyRotation) and d.signer == A
    )
    audit = audit_entries(Checkpoint.from_text(Note.parse(note).text), entries)
    assert [(r.signer, r.version) for _, r in audit.rotations] == [
        (OPERATOR, 2),
        (A, 2),
        (OPERATOR, 3),
        (A, 3),
    ]
    assert audit.fleets["fleet-1"].retirement[1].last_epoch == 2
    # A log whose own chain does not follow from the pinned key fails the audit.
    stranger = KeyInForce(
        "ed25519", Ed25519Signer.from_seed(bytes([5]) * 32).public_key, 1, 0, None
    )
    with pytest.raises(BrokenChain):
        own_keys(A, stranger, documents)


def _hsmfleet(argv: list[str]) -> int:
    """Run a ``hsmfleet`` verb in this process (without reconfiguring logging)."""
    args = cli.build_parser().parse_args(argv)
    return asyncio.run(args.run(args))


def test_hsmfleet_verify_walks_the_chain_and_ingests_retirements(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    save_pins(tmp_path / "pins.json", world.pins)
    (tmp_path / "second.json").write_bytes(world.second.to_bytes())
    (tmp_path / "retired.json").write_bytes(world.retirement.to_bytes())
    now = format_time(world.now)
    base = ["verify", str(tmp_path / "second.json"), "--pins", str(tmp_path / "pins.json")]
    base += ["--now", now, "--json", "--state", str(tmp_path / "state.json")]
    assert _hsmfleet(base) == 0
    result = json.loads(capsys.readouterr().out)
    assert [(r["signer"], r["version"]) for r in result["rotations"]] == [
        (OPERATOR, 2),
        (A, 2),
        (OPERATOR, 3),
        (A, 3),
    ]
    assert _hsmfleet([*base, "--retirement", str(tmp_path / "retired.json")]) == 1
    result = json.loads(capsys.readouterr().out)
    assert (result["kind"], result["retired"]) == (
        "fleet_retired",
        [{"fleet": "fleet-1", "last_epoch": 2}],
    )
    state = load_state(tmp_path / "state.json")
    assert state.retired == {"fleet-1": 2} and state.epoch == 2


def test_a_malformed_rotation_chain_is_a_malformed_bundle(world: World) -> None:
    for chain in ("x", [{"format": "hsmfleet/logged-notice/v1"}], [world.retirement.to_json()]):
        bad = dataclasses.replace(world.second, extra={"rotations": chain})
        with pytest.raises(MalformedBundle):
            _verify(world, bad, world.state)
        with pytest.raises(MalformedBundle):
            parse_bundle(bad.to_json())


def test_cosigners_refuse_a_rotation_to_a_key_of_small_order(world: World) -> None:
    assert world.refusals["small_order"] == RotationBadKey.kind


def test_a_client_offline_for_long_walks_an_old_chain_with_a_fresh_bundle(world: World) -> None:
    """Rotations are facts of the past: their notices keep the proofs they were logged with,
    however old; only the bundle's own checkpoints must be fresh."""
    pins = dataclasses.replace(world.pins, max_checkpoint_age=3600)
    now = world.now + DAY_MS + 60_000  # a minute after the late bundle was made
    accepted = _verify(world, world.late, world.state, pins=pins, now=now)
    assert [(r.signer, r.version) for r in accepted.rotations][-1] == (A, 3)
    with pytest.raises(StaleView):  # the bundle as first made is two days old by then
        _verify(world, world.second, world.state, pins=pins, now=now)
    assert ingest_retirement(world.retirement, pins, world.state, now, world.chain).retired


def _repinned(world: World, version: int, key: Ed25519Signer) -> Pins:
    return dataclasses.replace(world.pins, operator=OperatorPin("ed25519", key.public_key, version))


def test_stored_keys_must_hold_the_pinned_key_at_its_version(world: World) -> None:
    walked, _ = ingest_rotations(world.chain, world.pins, VerifierState(), world.now)
    stranger = Ed25519Signer.from_seed(bytes([6]) * 32)
    with pytest.raises(StatePinsMismatch):  # version 1 pinned, another key stored for it
        _verify(world, world.second, walked, pins=_repinned(world, 1, stranger))
    with pytest.raises(StatePinsMismatch):  # a key the walk reached, pinned as another version
        _verify(world, world.second, walked, pins=_repinned(world, 2, OPERATOR_KEYS[2]))
    # Pins that moved on with the walk agree with it.
    assert _verify(world, world.second, walked, pins=_repinned(world, 3, OPERATOR_KEYS[2]))
    # A pin newer than every stored key of its signer stands alone.
    older, _ = ingest_rotations(world.chain[:2], world.pins, world.state, world.now)
    assert [k.version for k in older.keys[OPERATOR]] == [1, 2]
    moved = _verify(world, world.second, older, pins=_repinned(world, 3, OPERATOR_KEYS[2]))
    assert OPERATOR not in moved.state.keys
    assert [k.version for k in moved.state.keys[A]] == [1, 2, 3]


def test_a_rotation_to_another_signers_key_is_refused(world: World) -> None:
    a_key = Ed25519Signer.from_seed(world.a_old_seed)  # cosigner A's pinned key
    rotation = KeyRotation.make(OPERATOR, 2, OPERATOR_KEYS[0], a_key, "2026-01-01T00:00:09.000Z")
    with pytest.raises(RotationBadKey):
        ingest_rotations([_forged(world, rotation)], world.pins, world.state, world.now)
