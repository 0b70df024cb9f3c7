"""The linearizability checker itself, on known-good and known-bad histories."""

import math
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.faults.linearizability import UNKNOWN, Operation, check
from tests.faults.models import CasRegister, VaultUser, secret

INF = math.inf


def op(client, input, output, call, ret=INF):
    return Operation(client, input, output, call, ret)


def reg(*ops):
    return check(CasRegister(), list(ops))


def test_an_empty_history_is_linearizable():
    assert reg().ok


def test_a_sequential_history_is_linearizable_in_its_own_order():
    result = reg(
        op(1, ("write", "a"), "ok", 0, 1),
        op(1, ("read",), "a", 2, 3),
        op(2, ("cas", "a", "b"), True, 4, 5),
        op(2, ("read",), "b", 6, 7),
    )
    assert result.ok
    assert [o.call for o in result.order] == [0, 2, 4, 6]


def test_a_read_that_misses_an_acknowledged_write_is_not_linearizable():
    assert not reg(op(1, ("write", "a"), "ok", 0, 1), op(2, ("read",), None, 2, 3)).ok


def test_a_read_overlapping_a_write_may_see_either_value():
    for seen in (None, "a"):
        assert reg(op(1, ("write", "a"), "ok", 0, 10), op(2, ("read",), seen, 1, 2)).ok


def test_writes_cannot_be_reordered_against_real_time():
    history = [
        op(1, ("write", "a"), "ok", 0, 1),
        op(1, ("write", "b"), "ok", 2, 3),
        op(2, ("read",), "a", 4, 5),
    ]
    assert not reg(*history).ok


def test_a_pending_write_may_take_effect_once_or_never():
    pending = op(1, ("write", "x"), UNKNOWN, 0)
    assert reg(pending, op(2, ("read",), None, 5, 6)).ok
    assert reg(pending, op(2, ("read",), "x", 5, 6)).ok
    assert reg(pending, op(2, ("read",), None, 5, 6), op(2, ("read",), "x", 7, 8)).ok
    assert not reg(pending, op(2, ("read",), "x", 5, 6), op(2, ("read",), None, 7, 8)).ok


def test_two_compare_and_sets_cannot_both_win():
    both = [
        op(1, ("cas", None, "a"), True, 0, 5),
        op(2, ("cas", None, "b"), True, 1, 6),
    ]
    assert not reg(*both).ok
    one = [both[0], op(2, ("cas", None, "b"), False, 1, 6), op(3, ("read",), "a", 7, 8)]
    assert reg(*one).ok


def vault(limit, *ops):
    return check(VaultUser(limit), list(ops))


FIRST = ("register", 1, None)


def test_a_good_vault_history():
    assert vault(
        3,
        op(1, FIRST, "ok", 0, 1),
        op(2, ("recover", 0), ("wrong_guess", 2), 2, 5),
        op(3, ("recover", 0), ("wrong_guess", 1), 3, 6),
        op(1, ("recover", 1), ("ok", secret(1)), 7, 8),
        op(2, ("recover", 0), ("wrong_guess", 2), 9, 10),
        op(1, ("register", 2, 1), "ok", 11, 12),
        op(2, ("recover", 0), ("wrong_guess", 2), 13, 14),
        op(1, ("recover", 2), ("ok", secret(2)), 15, 16),
    ).ok


def test_a_guess_counted_twice_or_not_at_all_is_caught():
    twice = [
        op(1, FIRST, "ok", 0, 1),
        op(2, ("recover", 0), ("wrong_guess", 2), 2, 5),
        op(3, ("recover", 0), ("wrong_guess", 2), 3, 6),
    ]
    assert not vault(3, *twice).ok
    uncounted = [op(1, FIRST, "ok", 0, 1), op(2, ("recover", 0), ("wrong_guess", 3), 2, 3)]
    assert not vault(3, *uncounted).ok


def test_a_guess_may_report_fewer_remaining_never_more():
    fewer = [op(1, FIRST, "ok", 0, 1), op(2, ("recover", 0), ("wrong_guess", 0), 2, 3)]
    assert vault(3, *fewer).ok


def test_more_guesses_than_the_limit_are_caught():
    history = [op(1, FIRST, "ok", 0, 1)]
    history += [op(i, ("recover", 0), ("wrong_guess", 2 - i), 2 + i, 100) for i in range(3)]
    assert vault(3, *history).ok
    history.append(op(9, ("recover", 0), ("wrong_guess", 0), 101, 102))
    assert not vault(3, *history).ok
    history[-1] = op(9, ("recover", 0), "budget_exhausted", 101, 102)
    assert vault(3, *history).ok


def test_a_login_is_counted_before_it_can_clear_and_a_lost_one_may_stay_counted():
    history = [
        op(1, FIRST, "ok", 0, 1),
        op(1, ("recover", 1), UNKNOWN, 2),
        op(2, ("recover", 0), ("wrong_guess", 1), 3, 4),
    ]
    assert vault(3, *history).ok, "the lost login counted, never cleared"
    cleared = op(2, ("recover", 0), ("wrong_guess", 2), 3, 4)
    assert vault(3, *history[:2], cleared).ok, "or it never counted, or it cleared"
    history.append(op(1, ("recover", 1), ("ok", secret(1)), 5, 6))
    history.append(op(2, ("recover", 0), ("wrong_guess", 2), 7, 8))
    assert vault(3, *history).ok, "a right PIN clears every failure counted before it"
    history[-1] = op(2, ("recover", 0), ("wrong_guess", 3), 7, 8)
    assert not vault(3, *history).ok, "and counts a guess after it"


def test_re_registering_without_the_pin_is_refused_and_resets_nothing():
    history = [
        op(1, FIRST, "ok", 0, 1),
        op(1, ("recover", 0), ("wrong_guess", 1), 2, 3),
        op(1, ("register", 2, None), "registration_exists", 4, 5),
        op(1, ("recover", 0), ("wrong_guess", 0), 6, 7),
    ]
    assert vault(2, *history).ok
    reset = [*history[:2], op(1, ("register", 2, None), "ok", 4, 5)]
    assert not vault(2, *reset).ok, "a registration over a live record without its PIN"
    wrong_pin = [*history[:2], op(1, ("register", 2, 0), "ok", 4, 5)]
    assert not vault(2, *wrong_pin).ok, "a registration proving a wrong PIN"


def test_re_registering_with_the_pin_clears_the_failures_as_a_right_guess_does():
    history = [
        op(1, FIRST, "ok", 0, 1),
        op(1, ("recover", 0), ("wrong_guess", 1), 2, 3),
        op(1, ("register", 2, 1), "ok", 4, 5),
        op(1, ("recover", 0), ("wrong_guess", 1), 6, 7),
    ]
    assert vault(2, *history).ok
    proof_wrong = [*history[:2], op(1, ("register", 2, 0), ("wrong_guess", 0), 4, 5)]
    assert vault(2, *proof_wrong, op(1, ("recover", 1), "budget_exhausted", 6, 7)).ok


def test_a_lost_acknowledged_registration_is_caught():
    history = [
        op(1, FIRST, "ok", 0, 1),
        op(1, ("register", 2, 1), "ok", 2, 3),
        op(1, ("recover", 2), ("wrong_guess", 4), 4, 5),
    ]
    assert not vault(5, *history).ok
    history[-1] = op(1, ("recover", 2), ("ok", secret(2)), 4, 5)
    assert vault(5, *history).ok


def test_a_stale_registration_cannot_overwrite_a_newer_one():
    history = [
        op(1, FIRST, "ok", 0, 1),
        op(1, ("register", 2, 1), UNKNOWN, 2),
        op(1, ("register", 3, 1), "ok", 3, 4),
        op(1, ("recover", 3), ("ok", secret(3)), 10, 11),
    ]
    assert vault(5, *history).ok
    history.append(op(1, ("recover", 2), ("ok", secret(2)), 12, 13))
    assert not vault(5, *history).ok


def simulated(seed: int, clients: int, count: int) -> list[Operation]:
    """A history of a linearizable register: each client calls one op at a time, each op takes
    effect at a random instant inside its interval, and some lose their answer (pending)."""
    rng = random.Random(seed)
    intervals = []
    for client in range(clients):
        now = rng.uniform(0, 1)
        for _ in range(count // clients):
            end = now + rng.uniform(0.1, 3)
            intervals.append((now, end, client))
            now = end + rng.uniform(0, 1)
    points = sorted((rng.uniform(s, e), s, e, c) for s, e, c in intervals)
    state, history = None, []
    for n, (_, start, end, client) in enumerate(points):
        kind = rng.choice(["write", "read", "cas"])
        if kind == "write":
            input, state, out = ("write", n), n, "ok"
        elif kind == "read":
            input, out = ("read",), state
        else:
            old = rng.choice([state, n - 1])
            input, out = ("cas", old, n), state == old
            state = n if out else state
        lost = rng.random() < 0.05
        output, ret = (UNKNOWN, INF) if lost else (out, end)
        history.append(Operation(client, input, output, start, ret))
    return history


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000))
def test_histories_of_a_linearizable_register_pass(seed):
    assert check(CasRegister(), simulated(seed, clients=5, count=40)).ok


def test_a_long_concurrent_history_checks_quickly():
    history = simulated(7, clients=6, count=300)
    result = check(CasRegister(), history)
    assert result.ok and result.explored < 200_000


def test_a_read_of_a_value_never_written_breaks_a_good_history():
    history = simulated(11, clients=4, count=60)
    reads = [i for i, o in enumerate(history) if o.input == ("read",) and not o.pending]
    bad = list(history)
    i = reads[len(reads) // 2]
    bad[i] = Operation(bad[i].client, ("read",), "never written", bad[i].call, bad[i].ret)
    assert check(CasRegister(), history).ok
    assert not check(CasRegister(), bad).ok
