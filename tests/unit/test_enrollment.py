"""Enrollment decisions: a genuine answer admits the node; each bad answer is rejected with its
own reason, admits nothing, and is recorded."""

from __future__ import annotations

import dataclasses

import pytest

from messages.attestation import AttestationStatement
from messages.events import NodeEnrolled, NodeRejected
from messages.inputs import AttestationAnswer, EnrollNode
from messages.rejected import Rejected
from messages.signing import Ed25519Signer
from orchestrator.core.decisions import ReattestationRequired, open_enrollments
from orchestrator.core.errors import UnknownEnrollment
from tests.replay.kit import DAY_MS, T0, PureLog, Vendor
from tests.unit.test_core import announce, policy
from transport.outbox import Outbox


@pytest.fixture
def vendor() -> Vendor:
    return Vendor()


@pytest.fixture
def log(vendor) -> PureLog:
    log = PureLog()
    log.take_lease(1)
    log.decide(policy(vendor))
    log.decide(announce("n1", "dc-1"))
    return log


def challenge(log: PureLog, node_id: str = "n1", now_ms: int = T0):
    (issued,) = log.decide(EnrollNode(node_id=node_id, requested_by="op"), now_ms=now_ms)
    return issued


def answer(log: PureLog, issued, reply: bytes, now_ms: int = T0 + 100):
    return log.decide(
        AttestationAnswer(enrollment_id=issued.enrollment_id, node_id=issued.node_id, reply=reply),
        now_ms=now_ms,
    )


def rejected_for(log: PureLog, issued, reply: bytes, now_ms: int = T0 + 100) -> str:
    (event,) = answer(log, issued, reply, now_ms)
    assert isinstance(event, NodeRejected)
    node = log.state.nodes[issued.node_id]
    assert node.status == "rejected" and node.identity is None
    assert log.state.enrollments[issued.enrollment_id].status == "rejected"
    assert open_enrollments(log.state) == []
    return event.reason


def test_genuine_answer_enrolls_the_node(log, vendor):
    device = vendor.device("n1")
    issued = challenge(log)
    (event,) = answer(log, issued, device.answer(issued.nonce))
    assert isinstance(event, NodeEnrolled)
    assert event.domain == "dc-1"
    assert event.identity_key == device.identity.public_key
    node = log.state.nodes["n1"]
    assert node.status == "enrolled"
    assert node.identity.attestation_digest == event.attestation_digest
    # the outcome is on record: a repeated answer changes nothing
    assert answer(log, issued, device.answer(issued.nonce)) == []


def test_an_enrolled_node_announces_what_it_runs_but_cannot_change_it(log, vendor):
    """A change of HSM or software is a re-attestation, not an announcement; an unchanged
    announcement records nothing."""
    device = vendor.device("n1")
    issued = challenge(log)
    answer(log, issued, device.answer(issued.nonce))
    entries, node = len(log.entries), log.state.nodes["n1"]
    assert log.decide(announce("n1", "dc-1")) == []
    for changed in ({"hsm": "pkcs11"}, {"measurement": "sha256:" + "cd" * 32}):
        with pytest.raises(ReattestationRequired):
            log.decide(dataclasses.replace(announce("n1", "dc-1"), **changed))
    assert len(log.entries) == entries and log.state.nodes["n1"] == node


def test_chain_to_an_unknown_root(log):
    stranger = Vendor("Other Vendor").device("n1")
    issued = challenge(log)
    assert rejected_for(log, issued, stranger.answer(issued.nonce)) == "unknown_root"


@pytest.mark.parametrize(
    ("window", "reason"),
    [
        ((T0 - 10 * DAY_MS, T0 - DAY_MS), "expired"),
        ((T0 + DAY_MS, T0 + 9 * DAY_MS), "not_yet_valid"),
    ],
)
def test_certificate_outside_its_validity(log, vendor, window, reason):
    device = vendor.device("n1", not_before_ms=window[0], not_after_ms=window[1])
    issued = challenge(log)
    assert rejected_for(log, issued, device.answer(issued.nonce)) == reason


def test_measurement_not_on_the_allow_list(log, vendor):
    issued = challenge(log)
    reply = vendor.device("n1").answer(issued.nonce, measurement="sha256:" + "00" * 32)
    assert rejected_for(log, issued, reply) == "measurement_not_allowed"


def test_wrong_nonce(log, vendor):
    issued = challenge(log)
    reply = vendor.device("n1").answer(b"\x01" * 32)
    assert rejected_for(log, issued, reply) == "wrong_nonce"


def test_reused_nonce(log, vendor):
    device = vendor.device("n1")
    first = challenge(log)
    answer(log, first, device.answer(first.nonce, measurement="sha256:" + "00" * 32))
    second = challenge(log)
    assert second.nonce != first.nonce
    assert rejected_for(log, second, device.answer(first.nonce)) == "nonce_reused"


def test_answer_after_the_nonce_expired(log, vendor):
    issued = challenge(log)
    late = issued.expires_ms + 1
    reply = vendor.device("n1").answer(issued.nonce)
    assert rejected_for(log, issued, reply, now_ms=late) == "nonce_expired"


def test_claimed_keys_differ_from_the_certified_ones(log, vendor):
    device = vendor.device("n1")
    issued = challenge(log)
    att = device.attestation(issued.nonce)
    other = vendor.device("n1")
    forged = dataclasses.replace(att, identity_key=other.identity.public_key)
    assert rejected_for(log, issued, device.reply(forged)) == "key_mismatch"


def test_statement_signed_by_another_device(log, vendor):
    device, impostor = vendor.device("n1"), vendor.device("n1")
    issued = challenge(log)
    att = device.attestation(issued.nonce)
    stolen = dataclasses.replace(att, signature=impostor.attestation(issued.nonce).signature)
    assert rejected_for(log, issued, device.reply(stolen)) == "wrong_device"


def test_answer_for_another_node(log, vendor):
    log.decide(announce("n2", "dc-2"))
    issued = challenge(log, "n2")
    assert rejected_for(log, issued, vendor.device("n1").answer(issued.nonce)) == "node_mismatch"


@pytest.mark.parametrize(
    "mangle",
    [
        lambda reply: reply[: len(reply) // 2],
        lambda reply: b"\xff\xfe not json",
        lambda reply: reply.replace(b'"chain":[', b'"chain":["!!",'),
    ],
    ids=["truncated", "not-json", "garbled-certificate"],
)
def test_truncated_or_garbled_answer(log, vendor, mangle):
    issued = challenge(log)
    assert rejected_for(log, issued, mangle(vendor.device("n1").answer(issued.nonce))) == "garbled"


def test_answer_of_another_type_is_garbled(log, vendor):
    issued = challenge(log)
    device = vendor.device("n1")
    stmt = AttestationStatement.from_json(
        {**device.attestation(issued.nonce).to_json(), "nonce": "AA=="}
    )
    assert rejected_for(log, issued, device.outbox.envelope(stmt).encode()) == "garbled"


@pytest.mark.parametrize("sender", ["unsigned", "another-key", "another-source"])
def test_answer_not_signed_by_the_attested_identity_key(log, vendor, sender):
    device = vendor.device("n1")
    issued = challenge(log)
    attestation = device.attestation(issued.nonce)
    outbox = {
        "unsigned": Outbox("n1"),
        "another-key": Outbox("n1", Ed25519Signer.generate()),
        "another-source": Outbox("n2", device.identity),
    }[sender]
    reply = outbox.envelope(attestation).encode()
    assert rejected_for(log, issued, reply) == "bad_answer_signature"


def test_node_refusing_the_challenge(log):
    issued = challenge(log)
    reply = Outbox("n1").envelope(Rejected(kind="internal", reason="hsm down")).encode()
    assert rejected_for(log, issued, reply) == "refused"


def test_answer_to_an_unknown_challenge_is_refused(log, vendor):
    issued = challenge(log)
    with pytest.raises(UnknownEnrollment):
        log.decide(AttestationAnswer(enrollment_id="nope", node_id="n1", reply=b"{}"))
    with pytest.raises(UnknownEnrollment):
        log.decide(AttestationAnswer(enrollment_id=issued.enrollment_id, node_id="n9", reply=b"{}"))
    assert log.state.nodes["n1"].status == "enrolling"


def test_rejected_node_may_be_enrolled_again(log, vendor):
    device = vendor.device("n1")
    first = challenge(log)
    answer(log, first, device.answer(b"\x02" * 32))
    second = challenge(log)
    (event,) = answer(log, second, device.answer(second.nonce))
    assert isinstance(event, NodeEnrolled)
    assert log.state.nodes["n1"].status == "enrolled"
