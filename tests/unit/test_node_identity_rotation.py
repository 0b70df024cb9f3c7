"""A node's identity versions in its HSM: a pending key beside the one in force, adoption,
the record a restart reads, and the vote key a replication configuration names."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from messages.attestation import AttestRequest
from messages.canonical import digest
from messages.node_keys import RotateIdentity, RotationProof
from messages.quorum import Config, MemberKey
from messages.signing import verify_bytes
from node.attest import BadAttestRequest, attest, prove_rotation
from node.hsm import SoftHsm
from node.identity import (
    IDENTITY,
    NODE_FILE,
    NodeIdentityError,
    UnknownIdentityKey,
    adopt,
    establish,
    prepare_rotation,
    vote_signer,
)
from node.vendor import VendorCA, provision

KEY = bytes(range(32))
DATA = b"a vote"


@pytest.fixture(scope="module")
def vendor(tmp_path_factory):
    return VendorCA.init(tmp_path_factory.mktemp("vendor"), datetime.now(UTC))


@pytest.fixture
def hsm(tmp_path, vendor):
    hsm = SoftHsm(tmp_path / "hsm", KEY)
    provision(hsm, vendor, datetime.now(UTC))
    return hsm


def config_naming(node_id: str, key) -> Config:
    member = MemberKey(member=node_id, alg=key.alg, public_key=key.public_key)
    return Config("f1", 1, (member,), (node_id,), (node_id,), 1, 1)


def test_pending_key_is_made_once_and_kept_until_adopted(tmp_path, hsm):
    node = establish(hsm, tmp_path, "n1")
    prepared = prepare_rotation(hsm, tmp_path, node)
    assert prepared.identity == node.identity
    assert prepared.pending.label == f"{IDENTITY}.2"
    assert prepare_rotation(hsm, tmp_path, prepared) == prepared
    # a restart before adoption: the old key in force, the same key pending
    again = establish(SoftHsm(tmp_path / "hsm", KEY), tmp_path)
    assert (again.identity, again.pending) == (node.identity, prepared.pending)
    adopted = adopt(tmp_path, prepared, prepared.pending.kid)
    assert (adopted.identity, adopted.pending) == (prepared.pending, None)
    assert adopt(tmp_path, adopted, adopted.identity.kid) == adopted
    restarted = establish(SoftHsm(tmp_path / "hsm", KEY), tmp_path)
    assert (restarted.identity, restarted.pending) == (prepared.pending, None)
    third = prepare_rotation(hsm, tmp_path, restarted)
    assert third.pending.label == f"{IDENTITY}.3"


def test_adopting_a_key_the_node_does_not_have_is_refused(tmp_path, hsm):
    node = prepare_rotation(hsm, tmp_path, establish(hsm, tmp_path, "n1"))
    record = (tmp_path / NODE_FILE).read_bytes()
    with pytest.raises(UnknownIdentityKey):
        adopt(tmp_path, node, "0" * 16)
    assert (tmp_path / NODE_FILE).read_bytes() == record


def test_a_record_naming_a_key_the_hsm_lacks_refuses_to_start(tmp_path, hsm):
    node = prepare_rotation(hsm, tmp_path, establish(hsm, tmp_path, "n1"))
    hsm.destroy(node.pending.label)
    with pytest.raises(NodeIdentityError, match="does not hold"):
        establish(hsm, tmp_path)
    record = json.loads((tmp_path / NODE_FILE).read_text())
    record["identity_label"] = "transport"
    record.pop("pending")
    (tmp_path / NODE_FILE).write_text(json.dumps(record))
    with pytest.raises(NodeIdentityError, match="does not hold"):
        establish(hsm, tmp_path)


def test_a_record_from_before_rotation_existed_still_loads(tmp_path, hsm):
    node = establish(hsm, tmp_path, "n1")
    (tmp_path / NODE_FILE).write_text(
        json.dumps({"node_id": "n1", "identity_kid": node.identity.kid})
    )
    assert establish(hsm, tmp_path) == node


def test_running_replicas_keep_the_key_they_joined_with(tmp_path, hsm):
    node = establish(hsm, tmp_path, "n1")
    joined = vote_signer(hsm, config_naming("n1", node.identity), "n1")
    replica_signer = hsm.signer(IDENTITY)  # what node.fleets hands a replica today
    rotated = adopt(tmp_path, *_pending(hsm, tmp_path, node))
    for signer in (joined, replica_signer):
        assert signer.kid == node.identity.kid
        assert verify_bytes(node.identity.alg, node.identity.public_key, signer.sign(DATA), DATA)
    # a reconfiguration naming the new key gets a signer over the new key
    moved = vote_signer(hsm, config_naming("n1", rotated.identity), "n1")
    assert moved.kid == rotated.identity.kid
    assert verify_bytes(rotated.identity.alg, rotated.identity.public_key, moved.sign(DATA), DATA)
    with pytest.raises(NodeIdentityError, match="does not name"):
        vote_signer(hsm, config_naming("n2", rotated.identity), "n1")
    with pytest.raises(NodeIdentityError, match="holds no identity key"):
        vote_signer(hsm, config_naming("n1", hsm.public_key("transport")), "n1")


def test_rotation_proof_is_the_old_key_over_the_new_key_and_nonce(tmp_path, hsm):
    node = prepare_rotation(hsm, tmp_path, establish(hsm, tmp_path, "n1"))
    request = RotateIdentity(nonce=b"\x02" * 32, expires_ms=0, identity_kid=node.identity.kid)
    answer = prove_rotation(node, hsm, "m", request)
    assert answer.attestation.identity_key == node.pending.public_key
    assert answer.previous_kid == node.identity.kid
    proof = RotationProof(
        node_id="n1",
        identity_alg=node.pending.alg,
        identity_key=node.pending.public_key,
        nonce=request.nonce,
        attestation_digest=digest(answer.attestation.to_json()).hex(),
    )
    assert proof.verify(node.identity.alg, node.identity.public_key, answer.proof)
    assert not proof.verify(node.pending.alg, node.pending.public_key, answer.proof)
    # an enrollment attestation still certifies the key in force
    plain = attest(node, hsm, "m", AttestRequest(nonce=b"\x02" * 32, expires_ms=0))
    assert plain.identity_key == node.identity.public_key
    with pytest.raises(BadAttestRequest):
        prove_rotation(node, hsm, "m", RotateIdentity(b"\x02" * 8, 0, node.identity.kid))
    with pytest.raises(BadAttestRequest):
        prove_rotation(establish(hsm, tmp_path / "other", "n2"), hsm, "m", request)


def _pending(hsm, state_dir, node):
    prepared = prepare_rotation(hsm, state_dir, node)
    return prepared, prepared.pending.kid
