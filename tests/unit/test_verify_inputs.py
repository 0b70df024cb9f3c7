"""What a verifier takes in, as ``messages/SPEC.md`` states it: each rule an independent
implementation found ambiguous, with the input it refuses (and the kind it refuses it with) and
the nearest input it accepts. Bundles come from the world of :mod:`tests.unit.test_verify`."""

from __future__ import annotations

import asyncio
import copy
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from cosigner.testbed import COSIGNERS, sample_artifact
from messages.artifact import FleetKeyArtifact
from messages.canonical import b64
from messages.documents import MAX_INPUT_BYTES, MalformedDocument, time_ms
from messages.origin import MAX_ORIGIN_CHARS, OPERATOR, is_origin
from messages.pins import CosignerPin, Pins, QuorumFloor
from messages.rotation import KeyRotation
from messages.signing import ECDSA_P256, Ed25519Signer, verify_bytes
from messages.statement import Statement
from messages.verification import MalformedBundle, PinsError, StateError
from messages.verifier_state import VerifierState
from messages.verify import parse_bundle, verify_bundle
from ops import cli
from ops.verifier_files import load_pins, load_state, save_pins
from tests.unit.test_verify import NOW, World, build_world

A = COSIGNERS[0][1]
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


@pytest.fixture(scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return await build_world(tmp_path_factory.mktemp("inputs-world"))


def _raw(world: World) -> dict:
    return copy.deepcopy(world.first.to_json())


def _statement(**changes: object) -> dict:
    raw = {
        "format": "hsmfleet/statement/v1",
        "log": A,
        "index": 0,
        "kind": "fleet-keys",
        "fleet": "fleet-1",
        "seq": 1,
        "digest": "ab" * 32,
        "logged_at": "2026-01-01T00:00:00.000Z",
    }
    return raw | changes


# --- section 1: conventions ------------------------------------------------------------------


def test_nesting_depth_counts_from_the_document_object() -> None:
    """The document object is at depth 0; a value may be 16 deep, not 17."""

    def nested(levels: int) -> object:
        value: object = 0
        for _ in range(levels):
            value = [value]
        return value

    raw = sample_artifact().to_json()
    assert FleetKeyArtifact.from_json({**raw, "x": nested(15)})  # the 0 is at depth 16
    with pytest.raises(MalformedDocument, match="nested too deeply"):
        FleetKeyArtifact.from_json({**raw, "x": nested(16)})


def test_a_leap_second_is_refused() -> None:
    assert time_ms("2016-12-31T23:59:59.999Z", "t")
    for spelling in ("2016-12-31T23:59:60.000Z", "2016-12-31T24:00:00.000Z"):
        with pytest.raises(MalformedDocument):
            time_ms(spelling, "t")


# --- section 2: signatures ---------------------------------------------------------------------


def test_ecdsa_signatures_are_strict_der_and_either_s_verifies() -> None:
    key = ec.derive_private_key(7, ec.SECP256R1())
    point = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    data = b"countersigned bytes"
    der = key.sign(data, ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    assert verify_bytes(ECDSA_P256, point, der, data)
    assert verify_bytes(ECDSA_P256, point, _der(r, P256_ORDER - s), data)  # high S: no low-S rule
    body = der[2:]
    for ber in (
        bytes([0x30, 0x81, len(body)]) + body,  # long-form length
        der + b"\x00",  # trailing byte
        _der(r, s, pad=1),  # an INTEGER with a needless leading zero
    ):
        assert not verify_bytes(ECDSA_P256, point, ber, data)
    compressed = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint
    )
    assert not verify_bytes(ECDSA_P256, compressed, der, data)  # keys are uncompressed points


def _der(r: int, s: int, pad: int = 0) -> bytes:
    def integer(value: int, zeros: int = 0) -> bytes:
        raw = bytes(zeros) + value.to_bytes(value.bit_length() // 8 + 1, "big")
        return bytes([0x02, len(raw)]) + raw

    body = integer(r, pad) + integer(s)
    return bytes([0x30, len(body)]) + body


# --- section 4: documents ----------------------------------------------------------------------


def test_the_size_limit_is_on_canonical_bytes_and_raw_input_has_its_own(world: World) -> None:
    indented = json.dumps(world.first.to_json(), indent=2000).encode()
    assert 256 * 1024 < len(indented) <= MAX_INPUT_BYTES
    assert verify_bundle(indented, world.pins, VerifierState(), NOW, world.proofs)
    with pytest.raises(MalformedBundle, match="too large"):
        parse_bundle(b" " * (MAX_INPUT_BYTES + 1))
    raw = _raw(world)
    raw["note"] = "x" * (256 * 1024)  # small text, canonical form above the limit
    with pytest.raises(MalformedBundle, match="too large"):
        parse_bundle(json.dumps(raw))


def test_a_rotation_statement_names_its_signer_where_others_name_a_fleet() -> None:
    assert Statement.from_json(_statement(kind="key-rotation", fleet=OPERATOR, seq=2))
    assert Statement.from_json(_statement(kind="key-rotation", fleet=A, seq=2))
    for bad in (
        _statement(fleet=A),  # an origin is no fleet id
        _statement(kind="key-rotation", fleet="not a signer"),
        _statement(kind="fleet-notes"),  # kinds are a closed list
    ):
        with pytest.raises(MalformedDocument):
            Statement.from_json(bad)


def test_an_origin_is_defined_and_operator_is_not_one() -> None:
    key = Ed25519Signer.from_seed(bytes([3]) * 32).public_key
    assert is_origin("x" * MAX_ORIGIN_CHARS) and is_origin("cosigner-a.example/log")
    for bad in (OPERATOR, "x" * (MAX_ORIGIN_CHARS + 1), "hsmfleet/v1/log", "a b", "a+b", ""):
        assert not is_origin(bad)
    with pytest.raises(MalformedDocument):  # it would share the operator's keys in S.keys
        CosignerPin(OPERATOR, key)
    with pytest.raises(MalformedDocument):
        Statement.from_json(_statement(log=OPERATOR))
    with pytest.raises(MalformedDocument):
        KeyRotation.from_json(_rotation(signer="not a signer"))
    assert KeyRotation.from_json(_rotation(signer=OPERATOR)).signer == OPERATOR


def _rotation(**changes: object) -> dict:
    old, new = (Ed25519Signer.from_seed(bytes([n]) * 32) for n in (3, 4))
    at = "2026-01-01T00:00:00.000Z"
    return KeyRotation.make(A, 2, old, new, at).to_json() | changes


def test_every_proof_carries_its_consistency_member(world: World) -> None:
    raw = _raw(world)
    del raw["proofs"][0]["consistency"]
    with pytest.raises(MalformedBundle, match="consistency"):
        parse_bundle(raw)


def _with_hashes(world: World, member: str, hashes: list[str]) -> dict:
    raw = _raw(world)
    proof = raw["proofs"][0]
    proof[member] = hashes if member == "inclusion" else [{"old_size": 1, "proof": hashes}]
    return raw


@pytest.mark.parametrize("member", ["inclusion", "consistency"])
def test_proof_hashes_are_32_bytes_or_the_bundle_is_malformed(world: World, member: str) -> None:
    """A malformed proof is a malformed bundle, not a proof that fails (section 4.6)."""
    with pytest.raises(MalformedBundle, match="32-byte"):
        parse_bundle(_with_hashes(world, member, [b64(bytes(31))]))
    with pytest.raises(MalformedBundle, match="at most 64"):
        parse_bundle(_with_hashes(world, member, [b64(bytes(32))] * 65))


# --- section 4.7: pins and state -------------------------------------------------------------


def test_a_floor_defaults_to_one_and_refuses_values_out_of_range(world: World) -> None:
    raw = world.pins.to_json()
    assert Pins.from_json({**raw, "floor": {}}).floor == QuorumFloor(1, 1, 1, False)
    assert Pins.from_json({k: v for k, v in raw.items() if k != "floor"}).floor == QuorumFloor()
    assert QuorumFloor(min_members=1024, min_threshold=1024, min_domains=1024)
    for bad in ({"min_members": 0}, {"min_threshold": -1}, {"min_domains": 1025}):
        with pytest.raises(MalformedDocument):
            QuorumFloor(**bad)


def test_empty_keys_and_retired_are_left_out_of_the_state() -> None:
    empty = {"format": "hsmfleet/verifier-state/v1", "epoch": None, "digest": None}
    state = VerifierState.from_json(empty | {"checkpoints": {}, "keys": {}, "retired": {}})
    assert state.to_json() == empty | {"checkpoints": {}}


def _hsmfleet(argv: list[str]) -> int:
    args = cli.build_parser().parse_args(argv)
    return asyncio.run(args.run(args))


@pytest.mark.parametrize(
    ("file", "content", "kind"),
    [
        ("pins", {"format": "hsmfleet/pins/v1"}, PinsError.kind),
        ("state", {"format": "hsmfleet/verifier-state/v1", "epoch": 0}, StateError.kind),
    ],
)
def test_unusable_pins_or_state_have_their_kind_and_verify_nothing(
    world: World,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    file: str,
    content: dict,
    kind: str,
) -> None:
    paths = {name: tmp_path / f"{name}.json" for name in ("pins", "state", "bundle")}
    save_pins(paths["pins"], world.pins)
    paths["bundle"].write_bytes(world.first.to_bytes())
    paths[file].write_text(json.dumps(content))
    before = paths["state"].read_bytes() if paths["state"].exists() else None
    argv = ["verify", str(paths["bundle"]), "--pins", str(paths["pins"])]
    argv += ["--state", str(paths["state"]), "--json"]
    assert _hsmfleet(argv) == 2
    result = json.loads(capsys.readouterr().out)
    assert (result["accepted"], result["kind"]) == (False, kind)
    assert (paths["state"].read_bytes() if paths["state"].exists() else None) == before
    with pytest.raises(PinsError if file == "pins" else StateError):
        (load_pins if file == "pins" else load_state)(paths[file])


def test_an_artifact_whose_vault_policy_is_out_of_range_makes_the_bundle_malformed(
    world: World,
) -> None:
    raw = _raw(world)
    raw["artifact"]["vault"] = {
        "limit": 0,
        "authority_alg": "ed25519",
        "authority_key": b64(bytes(32)),
        "replace_interval_s": 0,
        "login_ttl_s": 120,
    }
    with pytest.raises(MalformedBundle, match="guess limit"):
        parse_bundle(raw)
