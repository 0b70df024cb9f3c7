"""User records: the budget is per user, survives re-registration, is never handed back."""

import os

import pytest

from messages.ids import IdSource, make_id
from messages.vault import (
    BudgetExhausted,
    NoRecord,
    ReplayedRequest,
    StaleRegistration,
)
from node.vault import record as r

KEY = os.urandom(32)
IDS = IdSource()


def attempted(rec, member):
    """An attempt under a fresh request id."""
    return r.attempted(rec, member, IDS.new())


def sealed(user="alice", reg="01A", pin=b"1234", secret=b"s"):
    return r.seal_registration(KEY, user, reg, pin, secret, os.urandom(12))


def registered(limit=3):
    return r.registered(None, "alice", "01A", sealed(), limit)


def test_a_first_registration_starts_generation_one_with_a_full_budget():
    rec = registered()
    assert (rec.generation, rec.failures, rec.remaining) == (1, 0, 3)
    assert r.decode(r.encode(rec)) == rec
    assert r.check_guess(KEY, rec, b"1234") == b"s"
    assert r.check_guess(KEY, rec, b"0000") is None


def test_attempts_count_as_failures_until_a_right_guess_clears_them():
    rec = registered()
    first = attempted(rec, "m1")
    assert (first.failures, first.seq, first.evaluator) == (1, 1, "m1")
    second = attempted(first, "m2")
    assert (second.failures, second.seq, second.evaluator) == (2, 2, "m2")
    cleared = r.after_success(second, first)
    assert cleared.failures == 1, "the attempt after the right guess stays counted"


def test_re_registration_keeps_the_budget():
    rec = attempted(attempted(registered(), "m1"), "m1")
    again = r.registered(rec, "alice", "01B", sealed(reg="01B", pin=b"9"), 3)
    assert (again.generation, again.failures, again.remaining) == (2, 2, 1)
    assert r.check_guess(KEY, again, b"9") == b"s"


def test_the_last_wrong_guess_destroys_the_record_for_good():
    rec = registered(limit=2)
    rec = r.after_failure(attempted(rec, "m1"))
    assert rec.sealed is not None
    rec = r.after_failure(attempted(rec, "m1"))
    assert rec.destroyed and rec.remaining == 0
    with pytest.raises(BudgetExhausted):
        attempted(rec, "m1")
    with pytest.raises(BudgetExhausted):
        r.registered(rec, "alice", "01C", sealed(reg="01C"), 2)


def test_a_record_at_its_limit_is_destroyed_by_the_next_attempt():
    rec = attempted(registered(limit=1), "m1")  # evaluated, but never settled (a crash)
    destroyed = attempted(rec, "m2")
    assert destroyed.destroyed and destroyed.seq == rec.seq


def test_attempts_on_a_user_never_registered_are_refused():
    with pytest.raises(NoRecord):
        attempted(None, "m1")


def test_an_older_or_replayed_registration_is_refused():
    rec = registered()
    with pytest.raises(StaleRegistration):
        r.registered(rec, "alice", "01A", sealed(), 3)
    with pytest.raises(StaleRegistration):
        r.registered(rec, "alice", "00Z", sealed(reg="00Z"), 3)


def test_a_sealed_registration_opens_only_for_its_user_and_request():
    rec = registered()
    moved = r.UserRecord(user="bob", limit=3, generation=1, registered_by="01A", sealed=rec.sealed)
    with pytest.raises(r.DamagedRecord):
        r.check_guess(KEY, moved, b"1234")
    with pytest.raises(r.DamagedRecord):
        r.check_guess(os.urandom(32), rec, b"1234")
    with pytest.raises(r.DamagedRecord):
        r.decode(b"{not json")


def test_a_replayed_recovery_spends_no_guess():
    rec = registered()
    request = IDS.new()
    first = r.attempted(rec, "m1", request)
    assert first.recent == (request,)
    with pytest.raises(ReplayedRequest):
        r.attempted(first, "m2", request)
    again = r.registered(first, "alice", "01B", sealed(reg="01B"), 3)
    with pytest.raises(ReplayedRequest, match="already made"):
        r.attempted(again, "m1", request)


def test_request_ids_are_kept_for_three_freshness_windows_and_bounded():
    rec = registered(limit=1000)
    start = 1_800_000_000_000
    old = make_id(start, bytes(10))
    rec = r.attempted(rec, "m1", old)
    within = make_id(start + r.RECENT_MS, bytes(10))
    rec = r.attempted(rec, "m1", within)
    assert rec.recent == (old, within)
    beyond = make_id(start + r.RECENT_MS + 1, bytes(10))
    rec = r.attempted(rec, "m1", beyond)
    assert rec.recent == (within, beyond), "ids past the two windows are forgotten"
    for i in range(r.MAX_RECENT - 2):
        rec = r.attempted(rec, "m1", make_id(start + r.RECENT_MS + 2 + i, bytes(10)))
    assert len(rec.recent) == r.MAX_RECENT and rec.recent[0] == within
    latest = make_id(start + r.RECENT_MS + 1000, bytes(10))
    rec = r.attempted(rec, "m1", latest)
    assert len(rec.recent) == r.MAX_RECENT, "the oldest id makes room"
    assert rec.recent[0] == beyond and rec.recent[-1] == latest


def test_a_late_success_does_not_revive_a_destroyed_record():
    rec = registered(limit=2)
    right = attempted(rec, "m1")
    wrong = r.after_failure(attempted(right, "m2"))
    assert wrong.destroyed
    assert r.after_success(wrong, right) == wrong
