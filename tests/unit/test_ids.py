import pytest

from messages.errors import MalformedMessage
from messages.ids import format_time, id_time_ms, make_id, parse_time
from transport.outbox import IdSource


def test_ids_sort_by_time_and_carry_it():
    a = make_id(1_000, bytes(10))
    b = make_id(1_001, bytes(10))
    assert a < b
    assert id_time_ms(b) == 1_001


def test_same_inputs_give_the_same_id():
    assert make_id(42, b"\x07" * 10) == make_id(42, b"\x07" * 10)


def test_source_is_strictly_increasing_within_one_millisecond():
    ids = IdSource(clock_ms=lambda: 5_000)
    made = [ids.new() for _ in range(1000)]
    assert made == sorted(made)
    assert len(set(made)) == 1000


def test_source_never_goes_back_when_the_clock_does():
    ticks = iter([10_000, 9_000, 9_500])
    ids = IdSource(clock_ms=lambda: next(ticks))
    first, second, third = ids.new(), ids.new(), ids.new()
    assert first < second < third


def test_time_round_trip():
    ms = 1_795_000_123_456
    assert format_time(ms) == "2026-11-18T11:08:43.456Z"
    assert parse_time(format_time(ms)) == ms


@pytest.mark.parametrize("bad", ["yesterday", "2026-11-18T09:08:43", ""])
def test_bad_times_are_malformed(bad):
    with pytest.raises(MalformedMessage):
        parse_time(bad)


def test_bad_id_is_malformed():
    with pytest.raises(MalformedMessage):
        id_time_ms("not-a-ulid")
