"""Commit proofs: only a quorum of genuine acceptances of exactly this value proves a commit."""

import pytest

from messages import Ed25519Signer
from messages.commit_proof import CommitProof, verify_proof
from messages.membership import Membership
from messages.quorum import (
    Accepted,
    BadProof,
    Ballot,
    ProofOfAnotherConfiguration,
    Refusal,
    value_digest,
)
from transport.outbox import Outbox

VALUE = b"record"


@pytest.fixture
def fleet():
    signers = {f"m{i}": Ed25519Signer.generate() for i in range(1, 4)}
    return Membership.majority("f", signers), {m: Outbox(m, s) for m, s in signers.items()}


def accepted(outbox, *, digest=None, ballot=4, key="k", fleet="f", epoch=1):
    body = Accepted(
        fleet=fleet,
        epoch=epoch,
        proposer="m1",
        keys=("other", key),
        ballots=(9, ballot),
        digests=(b"x", value_digest(VALUE) if digest is None else digest),
    )
    return outbox.envelope(body).encode()


def proof(*votes, key="k"):
    return CommitProof("f", key, Ballot(4, "m1"), value_digest(VALUE), tuple(votes))


def test_a_quorum_of_acceptances_proves_the_value(fleet):
    membership, out = fleet
    verify_proof(proof(accepted(out["m1"]), accepted(out["m3"])), membership, VALUE)


def test_another_value_is_not_proven(fleet):
    membership, out = fleet
    with pytest.raises(BadProof, match="not the one"):
        verify_proof(proof(accepted(out["m1"]), accepted(out["m2"])), membership, b"other")


def test_one_member_twice_is_not_a_quorum(fleet):
    membership, out = fleet
    with pytest.raises(BadProof, match="fewer"):
        verify_proof(proof(accepted(out["m1"]), accepted(out["m1"])), membership, VALUE)


def test_a_refusal_is_no_acceptance(fleet):
    membership, out = fleet
    body = Accepted(
        fleet="f",
        epoch=1,
        proposer="m1",
        keys=("k",),
        ballots=(4,),
        digests=(b"",),
        refusals=(Refusal(index=0, seen=9, seen_by="m3", accepted=9, accepted_by="m3"),),
    )
    with pytest.raises(BadProof, match="does not accept"):
        verify_proof(
            proof(accepted(out["m1"]), out["m2"].envelope(body).encode()), membership, VALUE
        )


def test_votes_that_do_not_accept_this_value_break_the_proof(fleet):
    membership, out = fleet
    for bad in (
        accepted(out["m2"], digest=b"y" * 32),
        accepted(out["m2"], ballot=5),
        accepted(out["m2"], key="j"),
        accepted(out["m2"], fleet="g"),
    ):
        with pytest.raises(BadProof, match="does not accept"):
            verify_proof(proof(accepted(out["m1"]), bad), membership, VALUE)


def test_forged_or_foreign_votes_break_the_proof(fleet):
    membership, out = fleet
    outsider = Outbox("m2", Ed25519Signer.generate())
    with pytest.raises(BadProof, match="does not verify"):
        verify_proof(proof(accepted(out["m1"]), accepted(outsider)), membership, VALUE)
    narrowed = membership.next(accept_set=frozenset({"m1", "m3"}), prepare_quorum=2)
    with pytest.raises(BadProof, match="outside the accept set"):
        votes = (accepted(out["m1"], epoch=2), accepted(out["m2"], epoch=2))
        verify_proof(proof(*votes), narrowed, VALUE)
    other_fleet = CommitProof("g", "k", Ballot(4, "m1"), value_digest(VALUE), ())
    with pytest.raises(BadProof, match="another fleet"):
        verify_proof(other_fleet, membership, VALUE)


def test_acceptances_of_another_configuration_prove_nothing(fleet):
    """Two acceptances were no quorum of four (quorum 3); after the fleet shrank to three
    (quorum 2) they must not become a proof."""
    membership, out = fleet
    four = membership.next(accept_quorum=3, prepare_quorum=3)
    three = four.next(accept_quorum=2, prepare_quorum=2)
    cast_under_four = proof(accepted(out["m1"], epoch=2), accepted(out["m2"], epoch=2))
    with pytest.raises(BadProof, match="fewer"):
        verify_proof(cast_under_four, four, VALUE)
    with pytest.raises(ProofOfAnotherConfiguration):
        verify_proof(cast_under_four, three, VALUE)
    verify_proof(proof(accepted(out["m1"], epoch=3), accepted(out["m2"], epoch=3)), three, VALUE)


def test_a_vote_of_another_configuration_is_outdated_even_under_a_key_no_longer_trusted(fleet):
    """A member replaced since (its key gone from the configuration) cast a vote under the old
    one: the proof is outdated, which the caller can mend by a read, not forged."""
    membership, out = fleet
    replaced = Outbox("m2", Ed25519Signer.generate())
    votes = (accepted(out["m1"], epoch=0), accepted(replaced, epoch=0))
    with pytest.raises(ProofOfAnotherConfiguration) as outdated:
        verify_proof(proof(*votes), membership, VALUE)
    assert outdated.value.detail == {"member": "m1", "epoch": 0, "current": 1}
