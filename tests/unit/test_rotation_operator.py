"""The operator rotates its countersigning key inside its software HSM (v1 -> v3), a cosigner
rotates its log key and the operator has it logged; a verifier pinned to the original keys
accepts the next bundle carrying the kept chain. A rotation the cosigners could not log is left
pending and resumed with the very same statement."""

from __future__ import annotations

from pathlib import Path

import pytest

from cosigner.engine import Cosigner
from cosigner.local import LocalTransport
from cosigner.testbed import DAY_MS, MEMBERS, Testbed, sample_artifact, sample_chain
from messages.ids import format_time
from messages.origin import OPERATOR
from messages.pins import OperatorPin
from messages.rotation import KeyRotation, RotationWrongOldKey
from messages.signing import Ed25519Signer
from messages.validation import with_rotations
from messages.verifier_state import VerifierState
from messages.verify import verify_bundle
from node.hsm.sealing import new_operator_key
from orchestrator.shell.config import Settings
from orchestrator.shell.cosigning import Cosigning
from orchestrator.shell.keys import load_rotation_chain, make_operator_key, operator_signer
from orchestrator.shell.signer_rotation import (
    RotationFailed,
    log_cosigner_rotation,
    pending_path,
    rotate_operator_key,
)
from transport.cosign_client import CosigningClient


def _settings(tmp_path: Path) -> Settings:
    (tmp_path / "operator.key").write_text(new_operator_key() + "\n")
    return Settings(
        holder="orch-a",
        key_file=tmp_path / "orchestrator.key",
        vendor_roots=(),
        allowed_measurements=(),
        operator_hsm=tmp_path / "operator-hsm",
        operator_hsm_key=tmp_path / "operator.key",
    )


async def test_operator_and_cosigner_rotations_reach_a_pinned_verifier(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    v1 = make_operator_key(settings)
    bed = Testbed.create(tmp_path / "bed", operator=v1)
    client = CosigningClient(LocalTransport(bed.cosigners), bed.peers, v1, 2)
    pins = bed.pins()
    pins = type(pins)(pins.cosigners, 2, OperatorPin(v1.alg, v1.public_key))
    steps: list[str] = []
    try:
        artifact = sample_artifact(members=MEMBERS[:3])
        for bundle in sample_chain(artifact=artifact):
            await client.log(bundle)
        now = bed.clock() + DAY_MS
        state = verify_bundle(await client.publish(artifact), pins, VerifierState(), now).state

        for version in (2, 3):
            bed.clock.advance(1000)
            notice = await rotate_operator_key(
                settings, client, bed.clock(), lambda step, **_: steps.append(step)
            )
            assert (notice.logged.signer, notice.logged.version) == (OPERATOR, version)
            assert operator_signer(settings).public_key == notice.logged.new.public_key
            assert client.operator.public_key == notice.logged.new.public_key
        assert steps == ["key", "statement", "logged", "adopted"] * 2

        bed.clock.advance(1000)
        rotation = await bed.cosigner("cosigner-a").rotate_key()
        await log_cosigner_rotation(settings, client, rotation)
        chain = load_rotation_chain(settings)
        assert [(n.logged.signer, n.logged.version) for n in chain] == [
            (OPERATOR, 2),
            (OPERATOR, 3),
            (rotation.signer, 2),
        ]
        await log_cosigner_rotation(settings, client, rotation)  # again: kept once
        assert len(load_rotation_chain(settings)) == 3

        # A second orchestrator process's clients follow the chain whatever the plan pinned.
        follower = Cosigning(LocalTransport(bed.cosigners), operator_signer(settings))
        follower.follow(chain)
        assert follower._rotations[0][0] == rotation

        bed.clock.advance(1000)
        second = await client.publish(sample_artifact(epoch=2, legacy=True))
        proofs = {
            (c.name, old, c.notary.size): c.notary.consistency_proof(old, c.notary.size)
            for c in bed.cosigners
            for old in range(1, c.notary.size)
        }
        accepted = verify_bundle(with_rotations(second, chain), pins, state, now, proofs)
        assert [(r.signer, r.version) for r in accepted.rotations] == [
            (OPERATOR, 2),
            (OPERATOR, 3),
            (rotation.signer, 2),
        ]

        # Cosigner B stops: the rotation to v4 cannot be logged by two; it stays pending.
        b = bed.cosigner("cosigner-b")
        await b.close()
        with pytest.raises(RotationFailed):
            await rotate_operator_key(settings, client, bed.clock())
        pending = KeyRotation.parse(pending_path(settings).read_bytes())
        assert len(load_rotation_chain(settings)) == 3
        assert operator_signer(settings).public_key == chain[1].logged.new.public_key
        reopened = Cosigner.open(bed.directory / "cosigner-b", bed.clock)
        bed.cosigners[1] = reopened
        client.transport = LocalTransport(bed.cosigners)
        bed.clock.advance(5000)
        notice = await rotate_operator_key(settings, client, bed.clock())
        assert notice.logged.digest == pending.digest  # the same statement, not a new one
        assert notice.logged.version == 4 and not pending_path(settings).exists()
    finally:
        await bed.close()


async def test_cosigners_log_only_operator_rotations_that_start_from_the_pinned_key(
    tmp_path: Path,
) -> None:
    """Whoever may submit documents cannot start the operator's chain with a key of its own:
    the cosigners pin the operator's first key and refuse the rotation, logging nothing."""
    bed = Testbed.create(tmp_path / "bed")
    mallory, next_key = Ed25519Signer.generate(), Ed25519Signer.generate()
    forged = KeyRotation.make(OPERATOR, 2, mallory, next_key, format_time(bed.clock()))
    try:
        for cosigner in bed.cosigners:
            with pytest.raises(RotationWrongOldKey):
                await cosigner.sign(forged.to_json())
            assert cosigner.notary.size == 0
            assert cosigner.notary.rejects == {"rotation_wrong_old_key": 1}
        genuine = KeyRotation.make(OPERATOR, 2, bed.operator, next_key, format_time(bed.clock()))
        for cosigner in bed.cosigners:
            assert (await cosigner.sign(genuine.to_json())).statement.index == 0
    finally:
        await bed.close()
