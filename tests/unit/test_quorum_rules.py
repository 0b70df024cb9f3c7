"""The acceptor rules of CASPaxos: what is promised, accepted and refused."""

from hypothesis import given
from hypothesis import strategies as st

from messages.quorum import NO_BALLOT, Ballot
from node.quorum import rules
from node.quorum.rules import EMPTY, Slot

ballots = st.builds(Ballot, st.integers(0, 20), st.sampled_from(["m1", "m2", "m3"]))


def test_ballots_order_by_counter_then_member():
    assert Ballot(2, "m1") > Ballot(1, "m9")
    assert Ballot(2, "m2") > Ballot(2, "m1")
    assert Ballot(1, "") > NO_BALLOT


def test_prepare_promises_only_above_everything_seen():
    promised = rules.prepare(EMPTY, Ballot(3, "m1"))
    assert promised == Slot(promised=Ballot(3, "m1"))
    assert rules.prepare(promised, Ballot(3, "m1")) is None
    assert rules.prepare(promised, Ballot(2, "m9")) is None
    assert rules.prepare(promised, Ballot(3, "m2")).promised == Ballot(3, "m2")


def test_prepare_keeps_the_accepted_value():
    slot = Slot(accepted=Ballot(1, "m1"), value=b"v")
    assert rules.prepare(slot, Ballot(1, "m1")) is None
    again = rules.prepare(slot, Ballot(2, "m2"))
    assert again == Slot(Ballot(2, "m2"), Ballot(1, "m1"), b"v")


def test_accept_needs_the_promise_or_higher_and_erases_it():
    slot = Slot(promised=Ballot(3, "m1"))
    assert rules.accept(slot, Ballot(2, "m1"), b"x") is None
    accepted = rules.accept(slot, Ballot(3, "m1"), b"x")
    assert accepted == Slot(NO_BALLOT, Ballot(3, "m1"), b"x")
    assert rules.accept(accepted, Ballot(3, "m1"), b"y") is None, "a ballot is accepted once"
    assert rules.accept(slot, Ballot(4, "m2"), b"z").value == b"z"


def test_accept_then_promise_leaves_the_next_ballot_promised():
    slot = rules.accept_then_promise(EMPTY, Ballot(1, "m1"), b"a", Ballot(2, "m1"))
    assert slot == Slot(Ballot(2, "m1"), Ballot(1, "m1"), b"a")
    assert rules.prepare(slot, Ballot(2, "m2")).promised == Ballot(2, "m2")
    assert rules.prepare(slot, Ballot(1, "m3")) is None
    assert rules.accept_then_promise(slot, Ballot(1, "m2"), b"b", Ballot(2, "m2")) is None


def test_adopting_a_copy_follows_the_accept_rule():
    promised = Slot(promised=Ballot(5, "m2"), accepted=Ballot(1, "m1"), value=b"old")
    assert rules.adopt(promised, Ballot(4, "m1"), b"late") is None
    assert rules.adopt(promised, Ballot(6, "m3"), b"new").value == b"new"


@given(st.lists(st.tuples(st.booleans(), ballots), max_size=30))
def test_seen_never_decreases_and_accepted_values_only_move_up(steps):
    slot = EMPTY
    for is_prepare, ballot in steps:
        new = (
            rules.prepare(slot, ballot)
            if is_prepare
            else rules.accept(slot, ballot, str(ballot).encode())
        )
        if new is None:
            assert ballot <= slot.seen
            continue
        assert new.seen >= slot.seen
        assert new.accepted >= slot.accepted
        if new.accepted != slot.accepted:
            assert new.value == str(new.accepted).encode()
        slot = new
