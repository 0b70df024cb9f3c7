"""Identity-key rotation decisions: a genuine answer records the new key (the old one kept in the
node's history); each bad answer is refused with its own reason, recorded, and leaves the node's
identity as it was."""

from __future__ import annotations

import dataclasses

import pytest

from messages.attestation import Attestation
from messages.canonical import digest
from messages.events import ChallengeIssued, NodeEnrolled
from messages.node_keys import (
    AdoptionAnswer,
    IdentityAdopted,
    IdentityRotation,
    NodeKeyAdopted,
    NodeKeyChallenged,
    NodeKeyRotated,
    NodeKeyRotationRefused,
    RotateNodeKey,
    RotationAnswer,
    RotationProof,
)
from messages.rejected import Rejected
from messages.signing import Ed25519Signer
from orchestrator.core import node_keys
from orchestrator.core.errors import UnknownNode
from orchestrator.core.state import evolve
from tests.replay.kit import T0, Device, PureLog, Vendor
from tests.unit.test_core import announce, policy
from tests.unit.test_enrollment import answer as enrollment_answer
from tests.unit.test_enrollment import challenge as enrollment_challenge
from transport.outbox import Outbox

TTL = 30_000


@pytest.fixture
def vendor() -> Vendor:
    return Vendor()


@pytest.fixture
def device(vendor) -> Device:
    return vendor.device("n1")


@pytest.fixture
def log(vendor, device) -> PureLog:
    """A log where n1 is enrolled with ``device``'s first identity key."""
    log = PureLog()
    log.take_lease(1)
    log.decide(policy(vendor, ttl=TTL))
    log.decide(announce("n1", "dc-1"))
    issued = enrollment_challenge(log)
    (enrolled,) = enrollment_answer(log, issued, device.answer(issued.nonce))
    assert isinstance(enrolled, NodeEnrolled)
    return log


def challenge(log: PureLog, node_id: str = "n1", now_ms: int = T0) -> NodeKeyChallenged:
    (issued,) = log.decide(RotateNodeKey(node_id=node_id, requested_by="op"), now_ms=now_ms)
    assert isinstance(issued, NodeKeyChallenged)
    return issued


@dataclasses.dataclass
class Rotation:
    """A node's answer, built piece by piece so that tests can spoil one piece."""

    device: Device
    old: Ed25519Signer
    new: Ed25519Signer
    nonce: bytes

    @classmethod
    def of(cls, device: Device, nonce: bytes) -> Rotation:
        return cls(device, device.identity, Ed25519Signer.generate(), nonce)

    def attestation(self, nonce: bytes | None = None, **changes) -> Attestation:
        held = self.device.identity
        self.device.identity = self.new
        try:
            att = self.device.attestation(self.nonce if nonce is None else nonce)
        finally:
            self.device.identity = held
        return dataclasses.replace(att, **changes)

    def proof(self, att: Attestation, signer: Ed25519Signer | None = None, **changes) -> bytes:
        fields = {
            "node_id": self.device.node_id,
            "identity_alg": att.identity_alg,
            "identity_key": att.identity_key,
            "nonce": self.nonce,
            "attestation_digest": digest(att.to_json()).hex(),
            **changes,
        }
        return (signer or self.old).sign(RotationProof(**fields).signing_bytes())

    def reply(
        self,
        att: Attestation | None = None,
        proof: bytes | None = None,
        envelope_signer: Ed25519Signer | None = None,
        node_id: str | None = None,
    ) -> bytes:
        att = att or self.attestation()
        body = IdentityRotation(
            node_id=node_id or self.device.node_id,
            attestation=att,
            previous_kid=self.old.kid,
            proof=self.proof(att) if proof is None else proof,
        )
        outbox = Outbox(self.device.node_id, envelope_signer or self.new)
        return outbox.envelope(body).encode()


def send(log: PureLog, issued: NodeKeyChallenged, reply: bytes, now_ms: int = T0 + 100):
    return log.decide(
        RotationAnswer(rotation_id=issued.rotation_id, node_id=issued.node_id, reply=reply),
        now_ms=now_ms,
    )


def refused_for(log: PureLog, issued: NodeKeyChallenged, reply: bytes, now_ms=T0 + 100) -> str:
    before = log.state.nodes[issued.node_id]
    (event,) = send(log, issued, reply, now_ms)
    assert isinstance(event, NodeKeyRotationRefused)
    after = log.state.nodes[issued.node_id]
    assert after.identity == before.identity and after.identity_version == 1
    assert after.past_identities == ()
    rotation = log.state.rotations[issued.rotation_id]
    assert (rotation.status, rotation.reason) == ("refused", event.reason)
    assert node_keys.waiting(log.state) == []
    return event.reason


def test_genuine_answer_records_the_new_key_and_keeps_the_old(log, device):
    old_identity = log.state.nodes["n1"].identity
    issued = challenge(log)
    assert log.state.rotation_of("n1").status == "open"
    rotation = Rotation.of(device, issued.nonce)
    (event,) = send(log, issued, rotation.reply())
    assert isinstance(event, NodeKeyRotated)
    assert (event.version, event.previous_kid) == (2, device.identity.kid)
    assert event.identity_key == rotation.new.public_key
    node = log.state.nodes["n1"]
    assert node.identity.identity_key == rotation.new.public_key
    assert node.identity.kid == rotation.new.kid
    assert (node.identity_version, node.past_identities) == (2, (old_identity,))
    assert node.status == "enrolled"
    assert log.state.rotations[issued.rotation_id].status == "rotated"
    # waiting now for the node to adopt the key
    assert [r.rotation_id for r in node_keys.waiting(log.state)] == [issued.rotation_id]
    # the outcome is on record: a repeated answer changes nothing
    assert send(log, issued, rotation.reply()) == []


def test_adoption_signed_by_the_new_key_is_recorded(log, device):
    issued = challenge(log)
    rotation = Rotation.of(device, issued.nonce)
    send(log, issued, rotation.reply())
    adopted = IdentityAdopted(node_id="n1", identity_kid=rotation.new.kid)

    def adopt(signer, body=adopted):
        reply = Outbox("n1", signer).envelope(body).encode()
        return log.decide(AdoptionAnswer(issued.rotation_id, "n1", reply))

    with pytest.raises(node_keys.AdoptionRefused):
        adopt(rotation.old)  # the old key does not speak for the node any more
    with pytest.raises(node_keys.AdoptionRefused):
        adopt(rotation.new, IdentityAdopted(node_id="n1", identity_kid=rotation.old.kid))
    assert log.state.rotations[issued.rotation_id].status == "rotated"
    assert adopt(rotation.new) == [NodeKeyAdopted(issued.rotation_id, "n1")]
    assert log.state.rotations[issued.rotation_id].status == "adopted"
    assert node_keys.waiting(log.state) == []
    assert adopt(rotation.new) == []


def test_a_second_rotation_is_proved_with_the_first_rotated_key(log, device):
    first = challenge(log)
    one = Rotation.of(device, first.nonce)
    send(log, first, one.reply())
    second = challenge(log, now_ms=T0 + 200)
    # a new challenge stands in for the first rotation's adoption
    assert [r.rotation_id for r in node_keys.waiting(log.state)] == [second.rotation_id]
    device.identity = one.new
    two = Rotation.of(device, second.nonce)
    (event,) = send(log, second, two.reply(), now_ms=T0 + 300)
    assert isinstance(event, NodeKeyRotated)
    assert (event.version, event.previous_kid) == (3, one.new.kid)
    node = log.state.nodes["n1"]
    assert [i.identity_key for i in node.past_identities] == [
        one.old.public_key,
        one.new.public_key,
    ]


def test_old_key_proof_by_another_key(log, device):
    issued = challenge(log)
    rotation = Rotation.of(device, issued.nonce)
    att = rotation.attestation()
    forged = rotation.proof(att, signer=Ed25519Signer.generate())
    assert refused_for(log, issued, rotation.reply(att, forged)) == "bad_old_key_proof"


@pytest.mark.parametrize(
    "change",
    [
        {"nonce": b"\x01" * 32},
        {"attestation_digest": "00" * 32},
        {"identity_key": Ed25519Signer.generate().public_key},
        {"node_id": "n2"},
    ],
)
def test_old_key_proof_over_other_facts(log, device, change):
    issued = challenge(log)
    rotation = Rotation.of(device, issued.nonce)
    att = rotation.attestation()
    proof = rotation.proof(att, **change)
    assert refused_for(log, issued, rotation.reply(att, proof)) == "bad_old_key_proof"


def test_attestation_from_an_unknown_vendor(log, device):
    issued = challenge(log)
    stranger = Vendor("Other Vendor").device("n1")
    stranger.identity = device.identity
    rotation = Rotation.of(stranger, issued.nonce)
    assert refused_for(log, issued, rotation.reply()) == "unknown_root"


def test_attestation_of_software_not_allowed(log, device):
    issued = challenge(log)
    rotation = Rotation.of(device, issued.nonce)
    held = device.attestation
    device.attestation = lambda nonce: held(nonce, measurement="sha256:" + "cd" * 32)
    assert refused_for(log, issued, rotation.reply()) == "measurement_not_allowed"


def test_attestation_claiming_a_key_the_device_did_not_sign(log, device):
    issued = challenge(log)
    rotation = Rotation.of(device, issued.nonce)
    att = rotation.attestation(identity_key=Ed25519Signer.generate().public_key)
    assert refused_for(log, issued, rotation.reply(att)) == "key_mismatch"


def test_attestation_from_another_device_of_the_vendor(log, vendor, device):
    issued = challenge(log)
    other = vendor.device("n1")
    other.identity = device.identity
    rotation = Rotation.of(other, issued.nonce)
    assert refused_for(log, issued, rotation.reply()) == "device_changed"


def test_answer_over_an_earlier_nonce(log, device):
    first = challenge(log)
    send(log, first, Rotation.of(device, first.nonce).reply(envelope_signer=device.identity))
    second = challenge(log, now_ms=T0 + 200)
    stale = Rotation.of(device, first.nonce)
    assert refused_for(log, second, stale.reply(), now_ms=T0 + 300) == "nonce_reused"


def test_answer_over_a_nonce_never_sent(log, device):
    issued = challenge(log)
    rotation = Rotation.of(device, b"\x07" * 32)
    assert refused_for(log, issued, rotation.reply()) == "wrong_nonce"


def test_answer_after_the_nonce_expired(log, device):
    issued = challenge(log)
    reply = Rotation.of(device, issued.nonce).reply()
    assert refused_for(log, issued, reply, now_ms=issued.expires_ms + 1) == "nonce_expired"


def test_answer_not_signed_by_the_new_key(log, device):
    issued = challenge(log)
    rotation = Rotation.of(device, issued.nonce)
    assert refused_for(log, issued, rotation.reply(envelope_signer=rotation.old)) == (
        "bad_answer_signature"
    )


def test_answer_rotating_to_a_key_the_node_had(log, device):
    issued = challenge(log)
    rotation = Rotation.of(device, issued.nonce)
    rotation.new = rotation.old
    assert refused_for(log, issued, rotation.reply()) == "key_not_new"


def test_answer_for_another_node(log, device):
    issued = challenge(log)
    rotation = Rotation.of(device, issued.nonce)
    assert refused_for(log, issued, rotation.reply(node_id="n2")) == "node_mismatch"


def test_node_refuses_or_garbles(log, device):
    issued = challenge(log)
    refusal = Outbox("n1").envelope(Rejected(kind="hsm", reason="no")).encode()
    assert refused_for(log, issued, refusal) == "refused"
    again = challenge(log, now_ms=T0 + 200)
    assert refused_for(log, again, b"{not json", now_ms=T0 + 300) == "garbled"
    third = challenge(log, now_ms=T0 + 400)
    wrong_type = device.outbox.envelope(device.attestation(third.nonce)).encode()
    assert refused_for(log, third, wrong_type, now_ms=T0 + 500) == "garbled"


def test_node_not_enrolled_is_refused_on_record(log, vendor):
    log.decide(announce("n2", "dc-2"))
    (event,) = log.decide(RotateNodeKey(node_id="n2", requested_by="op"))
    assert isinstance(event, NodeKeyRotationRefused) and event.reason == "not_enrolled"
    assert log.state.rotation_of("n2").status == "refused"
    assert log.state.nodes["n2"].identity is None
    with pytest.raises(UnknownNode):
        log.decide(RotateNodeKey(node_id="nobody", requested_by="op"))


def test_node_enrolling_again_when_the_answer_arrives(log, device):
    issued = challenge(log)
    # a rollout challenges its members again, enrolled or not
    again = ChallengeIssued("e-again", "n1", b"\x05" * 32, T0 + TTL, "rollout:r1")
    log.state = evolve(log.state, again)
    rotation = Rotation.of(device, issued.nonce)
    assert log.state.nodes["n1"].status == "enrolling"
    (event,) = send(log, issued, rotation.reply())
    assert isinstance(event, NodeKeyRotationRefused) and event.reason == "not_enrolled"


def test_one_rotation_at_a_time_until_its_challenge_expires(log):
    issued = challenge(log)
    with pytest.raises(node_keys.RotationConflict):
        log.decide(RotateNodeKey(node_id="n1", requested_by="op"), now_ms=T0 + 1)
    later = issued.expires_ms + 1
    closed, fresh = log.decide(RotateNodeKey(node_id="n1", requested_by="op"), now_ms=later)
    assert closed == NodeKeyRotationRefused(issued.rotation_id, "n1", "no_answer")
    assert isinstance(fresh, NodeKeyChallenged) and fresh.nonce != issued.nonce


def test_unknown_rotation_is_refused_without_record(log):
    issued = challenge(log)
    entries = len(log.entries)
    with pytest.raises(node_keys.UnknownRotation):
        log.decide(RotationAnswer(rotation_id=issued.rotation_id, node_id="n2", reply=b"{}"))
    with pytest.raises(node_keys.UnknownRotation):
        log.decide(RotationAnswer(rotation_id="nope", node_id="n1", reply=b"{}"))
    assert len(log.entries) == entries


def test_tick_closes_overdue_rotation_challenges(log):
    issued = challenge(log)
    assert not node_keys.overdue(log.state, issued.expires_ms)
    assert node_keys.overdue(log.state, issued.expires_ms + 1)
    ctx = log.context(issued.expires_ms + 1)
    assert node_keys.tick(log.state, ctx) == [
        NodeKeyRotationRefused(issued.rotation_id, "n1", "no_answer")
    ]


def test_recorded_rotation_replays_to_the_same_state(log, device):
    issued = challenge(log)
    send(log, issued, Rotation.of(device, issued.nonce).reply())
    resumed = PureLog.resume(log.entries, log.signer, log.holder)
    assert resumed.state == log.state
    assert resumed.state.nodes["n1"].identity_version == 2
