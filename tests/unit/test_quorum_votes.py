"""Counting signed votes: good ones count once; every defect is its own typed, counted error."""

from dataclasses import replace

import pytest

from messages import Ed25519Signer, Envelope
from messages.membership import Membership
from messages.quorum import (
    Accept,
    Accepted,
    Prepare,
    Promise,
    Refusal,
    VoteBadSignature,
    VoteFromNonMember,
    VoteOldBallot,
    VoteReplayed,
    VoteWrongValue,
    value_digest,
)
from node.quorum.votes import Tally
from transport.gate import Gate
from transport.outbox import Outbox

KEYS = ("a", "b")


def _source(vote_and_data):
    return Envelope.decode(vote_and_data[1])


@pytest.fixture
def fleet():
    signers = {f"m{i}": Ed25519Signer.generate() for i in range(1, 4)}
    membership = Membership.majority("f", signers)
    outboxes = {m: Outbox(m, s) for m, s in signers.items()}
    return membership, outboxes


def prepare_tally(membership, outboxes):
    body = Prepare(fleet="f", epoch=1, keys=KEYS, ballots=(5, 7))
    request = outboxes["m1"].envelope(body)
    return Tally(Gate(membership.trust()), request, body, membership)


def promise(tally, refusals=(), **changes):
    body = Promise(
        fleet="f",
        epoch=1,
        proposer=tally.request.source,
        keys=tally.body.keys,
        ballots=tally.body.ballots,
        accepteds=(0, 3),
        accepted_bys=("", "m2"),
        values=(None, b"v"),
        justifications=(None, None),
        refusals=refusals,
    )
    return replace(body, **changes)


def refusal(index, seen, accepted=0):
    return Refusal(index=index, seen=seen, seen_by="m3", accepted=accepted, accepted_by="m3")


def vote(outbox, body, causation):
    return outbox.envelope(body, causation=causation).encode()


def accept_tally(membership, outboxes):
    """A tally of m1's accept of ``x`` for record ``a``, and the request it counts for."""
    body = Accept(
        fleet="f",
        epoch=1,
        keys=("a",),
        ballots=(5,),
        next_ballots=(6,),
        values=(b"x",),
        justifications=(None,),
    )
    request = outboxes["m1"].envelope(body)
    return Tally(Gate(membership.trust()), request, body, membership), request


def test_a_quorum_of_good_votes_decides(fleet):
    membership, outboxes = fleet
    tally = prepare_tally(membership, outboxes)
    tally.add(vote(outboxes["m1"], promise(tally), tally.request.id))
    assert not tally.decided
    tally.add(vote(outboxes["m2"], promise(tally), tally.request.id))
    assert tally.decided
    assert tally.granted(0) and tally.granted(1)
    assert tally.granted_by(0) == {"m1", "m2"}
    assert [v.source for v in map(_source, tally.granting(1))] == ["m1", "m2"]


def test_refusals_settle_a_prepare_once_a_quorum_is_out_of_reach(fleet):
    membership, outboxes = fleet
    tally = prepare_tally(membership, outboxes)
    tally.add(vote(outboxes["m1"], promise(tally, (refusal(0, 8),)), tally.request.id))
    tally.add(vote(outboxes["m2"], promise(tally, (refusal(0, 9),)), tally.request.id))
    assert tally.decided
    assert not tally.granted(0) and tally.granted(1)
    assert tally.highest_seen(0) == 9 and tally.highest_seen(1) == 0
    assert not tally.refused_by_all(0)


def test_an_accept_waits_for_everyone_when_a_record_is_refused(fleet):
    membership, outboxes = fleet
    tally, request = accept_tally(membership, outboxes)
    refused = accepted_vote(grants=False, seen=8, accepted=3)
    tally.add(vote(outboxes["m2"], refused, request.id))
    tally.add(vote(outboxes["m3"], refused, request.id))
    assert not tally.decided, "the third acceptor may have accepted"
    assert not tally.refused_by_all(0), "the refusers only promised a higher ballot"
    tally.add(vote(outboxes["m1"], accepted_vote(grants=True, seen=5, accepted=3), request.id))
    assert tally.decided and not tally.granted(0) and not tally.refused_by_all(0)


def accepted_vote(*, grants, seen, accepted):
    return Accepted(
        fleet="f",
        proposer="m1",
        keys=("a",),
        ballots=(5,),
        digests=(value_digest(b"x") if grants else b"",),
        refusals=() if grants else (refusal(0, seen, accepted),),
    )


def test_a_value_one_acceptor_took_is_never_known_dead(fleet):
    """m1 accepted; m2 and m3 refused because they accepted higher ballots. Those ballots' values
    may have been computed from m1's copy of ours (a prepare quorum {m1, m2} reads it), so the
    change may have taken effect: the outcome is unknown, and retrying could apply it twice."""
    membership, outboxes = fleet
    tally, request = accept_tally(membership, outboxes)
    tally.add(vote(outboxes["m2"], accepted_vote(grants=False, seen=9, accepted=9), request.id))
    assert not tally.decided, "nobody accepted yet: all may still refuse"
    tally.add(vote(outboxes["m1"], accepted_vote(grants=True, seen=5, accepted=3), request.id))
    assert not tally.decided, "m3 may still accept"
    tally.add(vote(outboxes["m3"], accepted_vote(grants=False, seen=7, accepted=7), request.id))
    assert tally.decided and not tally.granted(0) and not tally.refused_by_all(0)


def test_an_accept_out_of_reach_after_a_grant_is_settled_early():
    signers = {f"m{i}": Ed25519Signer.generate() for i in range(1, 6)}
    membership = Membership.majority("f", signers)
    outboxes = {m: Outbox(m, s) for m, s in signers.items()}
    tally, request = accept_tally(membership, outboxes)
    for m in ("m2", "m3", "m4"):
        refused = accepted_vote(grants=False, seen=9, accepted=9)
        tally.add(vote(outboxes[m], refused, request.id))
    assert not tally.decided, "three refusals: out of reach, but all five may refuse"
    tally.add(vote(outboxes["m1"], accepted_vote(grants=True, seen=5, accepted=3), request.id))
    assert tally.decided, "one acceptor took it: unknown whatever m5 says"
    assert not tally.granted(0) and not tally.refused_by_all(0)


def test_a_value_every_acceptor_refused_is_dead(fleet):
    membership, outboxes = fleet
    tally, request = accept_tally(membership, outboxes)
    for m in ("m1", "m2", "m3"):
        tally.add(vote(outboxes[m], accepted_vote(grants=False, seen=9, accepted=9), request.id))
    assert tally.decided and tally.refused_by_all(0)


def test_a_vote_with_a_bad_signature_is_ignored(fleet):
    membership, outboxes = fleet
    tally = prepare_tally(membership, outboxes)
    env = outboxes["m2"].envelope(promise(tally), causation=tally.request.id)
    sig = bytearray(env.sig.value)
    sig[3] ^= 1
    forged = env.with_signature(replace(env.sig, value=bytes(sig)))
    with pytest.raises(VoteBadSignature):
        tally.add(forged.encode())
    with pytest.raises(VoteBadSignature):
        tally.add(b"{not json")
    assert tally.answered == 0


def test_a_vote_from_a_non_member_is_ignored(fleet):
    membership, outboxes = fleet
    tally = prepare_tally(membership, outboxes)
    outsider = Outbox("m2", Ed25519Signer.generate())
    with pytest.raises(VoteFromNonMember):
        tally.add(vote(outsider, promise(tally), tally.request.id))
    narrowed = membership.next(prepare_set=frozenset({"m1", "m2"}), accept_quorum=3)
    narrow = Tally(tally.gate, tally.request, tally.body, narrowed)
    with pytest.raises(VoteFromNonMember, match="not asked"):
        narrow.add(vote(outboxes["m3"], promise(tally), tally.request.id))


def test_a_vote_for_another_round_or_ballot_is_ignored(fleet):
    membership, outboxes = fleet
    tally = prepare_tally(membership, outboxes)
    with pytest.raises(VoteOldBallot):
        tally.add(vote(outboxes["m2"], promise(tally), "01ANOTHERREQUEST0000000000"))
    with pytest.raises(VoteOldBallot):
        tally.add(vote(outboxes["m2"], promise(tally, ballots=(4, 7)), tally.request.id))
    with pytest.raises(VoteOldBallot):
        tally.add(vote(outboxes["m2"], promise(tally, proposer="m3"), tally.request.id))
    with pytest.raises(VoteOldBallot):
        tally.add(vote(outboxes["m2"], promise(tally, fleet="g"), tally.request.id))
    with pytest.raises(VoteOldBallot):
        tally.add(vote(outboxes["m2"], promise(tally, epoch=2), tally.request.id))
    assert tally.answered == 0


def test_replayed_votes_and_second_votes_are_ignored(fleet):
    membership, outboxes = fleet
    tally = prepare_tally(membership, outboxes)
    data = vote(outboxes["m2"], promise(tally), tally.request.id)
    tally.add(data)
    with pytest.raises(VoteReplayed):
        tally.add(data)
    with pytest.raises(VoteReplayed, match="already voted"):
        tally.add(vote(outboxes["m2"], promise(tally), tally.request.id))
    assert tally.answered == 1 and tally.grants == [1, 1]


def test_refusals_must_name_distinct_records_of_the_batch(fleet):
    from messages.errors import SchemaViolation

    membership, outboxes = fleet
    tally = prepare_tally(membership, outboxes)
    with pytest.raises(SchemaViolation):
        promise(tally, (refusal(0, 1), refusal(0, 2)))
    with pytest.raises(SchemaViolation):
        promise(tally, (refusal(5, 1),))


def test_an_acceptance_of_another_value_is_ignored(fleet):
    membership, outboxes = fleet
    tally, request = accept_tally(membership, outboxes)
    other = replace(accepted_vote(grants=True, seen=5, accepted=3), digests=(value_digest(b"y"),))
    with pytest.raises(VoteWrongValue):
        tally.add(vote(outboxes["m2"], other, request.id))
    assert tally.answered == 0 and tally.grants == [0]
    tally.add(vote(outboxes["m2"], accepted_vote(grants=True, seen=5, accepted=3), request.id))
    assert tally.grants == [1] and tally.digests == (value_digest(b"x"),)


def test_requests_name_each_record_once():
    from messages.errors import SchemaViolation

    with pytest.raises(SchemaViolation, match="twice"):
        Prepare(fleet="f", epoch=1, keys=("a", "a"), ballots=(5, 6))
    with pytest.raises(SchemaViolation, match="twice"):
        Accept(
            fleet="f",
            epoch=1,
            keys=("a", "a"),
            ballots=(5, 6),
            next_ballots=(0, 0),
            values=(b"x", b"y"),
            justifications=(None, None),
        )


def test_a_value_refused_by_every_member_asked_is_dead(fleet):
    """A thrifty proposer asked m1 and m2 only: m3 never received the value."""
    membership, outboxes = fleet
    tally, request = accept_tally(membership, outboxes)
    tally.asked = frozenset({"m1", "m2"})
    refused = accepted_vote(grants=False, seen=9, accepted=0)
    tally.add(vote(outboxes["m3"], refused, request.id))  # answered though not asked
    tally.add(vote(outboxes["m2"], refused, request.id))
    assert not tally.decided and not tally.refused_by_all(0), "m1 may still accept"
    tally.add(vote(outboxes["m1"], refused, request.id))
    assert tally.decided and tally.refused_by_all(0)


def test_asking_more_members_reopens_a_record(fleet):
    membership, outboxes = fleet
    tally, request = accept_tally(membership, outboxes)
    tally.asked = frozenset({"m1", "m2"})
    refused = accepted_vote(grants=False, seen=9, accepted=0)
    tally.add(vote(outboxes["m1"], refused, request.id))
    tally.add(vote(outboxes["m2"], refused, request.id))
    assert tally.decided and tally.refused_by_all(0)
    tally.ask(frozenset({"m3"}))
    assert not tally.decided and not tally.refused_by_all(0), "m3 may accept it now"
    tally.add(vote(outboxes["m3"], accepted_vote(grants=True, seen=5, accepted=3), request.id))
    assert tally.decided and not tally.refused_by_all(0) and tally.grants == [1]


@pytest.mark.parametrize(
    ("kinds", "verdict"),
    [
        (("transition_refused", "predecessor_superseded"), "transition_refused"),
        (("predecessor_superseded", "proof_of_another_configuration"), ""),
        (("", "predecessor_superseded"), ""),
    ],
)
def test_only_a_refusal_that_judges_the_value_makes_it_invalid(fleet, kinds, verdict):
    """An HSM that refuses because it accepted a later value than the value's predecessor, or
    cannot check a proof of a configuration it never applied, says nothing of the value: other
    members may accept it, so it counts like a ballot conflict, not as the value refused."""
    membership, outboxes = fleet
    tally, request = accept_tally(membership, outboxes)
    for member, kind in zip(("m2", "m3"), kinds, strict=True):
        body = accepted_vote(grants=False, seen=5, accepted=3)
        body = replace(body, refusals=(replace(body.refusals[0], kind=kind),))
        tally.add(vote(outboxes[member], body, request.id))
    assert tally.refused_as_invalid(0) == verdict
