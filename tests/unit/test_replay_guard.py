"""Replay and freshness at the gate: each refusal has its own typed error, is counted, and leaves
the guard as it was; forged copies cannot burn a genuine message's id."""

from __future__ import annotations

from dataclasses import replace

import pytest

from messages.envelope import Envelope
from messages.errors import BadSignature, ReplayedMessage, StaleMessage
from messages.replay import FutureMessage, ReplayGuard, ReplayWindowFull
from messages.signing import sign_envelope
from tests.unit.sample_messages import Ping, registry
from transport.gate import Gate
from transport.outbox import IdSource, Outbox

NOW = 1_800_000_000_000
WINDOW = 60_000


class Clock:
    """The receiver's clock, moved by the test."""

    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


@pytest.fixture
def clock() -> Clock:
    return Clock(NOW)


@pytest.fixture
def guarded(trust, clock) -> Gate:
    return Gate(trust, registry=registry, replay=ReplayGuard(WINDOW, capacity=3), clock_ms=clock)


def sent_at(alice, ms: int, label: str = "x") -> bytes:
    """A ping signed by alice whose id and ``at`` say ``ms``."""
    return Outbox("alice", alice, IdSource(lambda: ms)).envelope(Ping(1, label)).encode()


def refused(gate: Gate, data: bytes, error: type[Exception]) -> None:
    """``data`` is refused with exactly ``error``, counted, and nothing is remembered."""
    remembered, accepted = len(gate.replay), gate.accepted
    with pytest.raises(error) as caught:
        gate.admit(data, "tester")
    assert type(caught.value) is error
    assert gate.rejects[caught.value.kind] >= 1
    assert (len(gate.replay), gate.accepted) == (remembered, accepted)


def test_a_replay_inside_the_window_is_refused(guarded, alice, clock):
    data = sent_at(alice, NOW)
    guarded.admit(data, "tester")
    clock.ms = NOW + WINDOW
    refused(guarded, data, ReplayedMessage)
    assert guarded.rejects == {"replayed": 1}


def test_a_message_older_than_the_window_is_stale(guarded, alice):
    guarded.admit(sent_at(alice, NOW - WINDOW), "tester")  # the edge is still inside
    refused(guarded, sent_at(alice, NOW - WINDOW - 1), StaleMessage)
    assert guarded.rejects == {"stale": 1}


def test_a_message_ahead_of_the_window_is_from_the_future(guarded, alice):
    guarded.admit(sent_at(alice, NOW + WINDOW), "tester")
    refused(guarded, sent_at(alice, NOW + WINDOW + 1), FutureMessage)
    assert guarded.rejects == {"future": 1}


def test_an_id_is_forgotten_only_once_its_message_is_stale(guarded, alice, clock):
    data = sent_at(alice, NOW)
    guarded.admit(data, "tester")
    clock.ms = NOW + WINDOW + 1
    refused(guarded, data, StaleMessage)
    guarded.admit(sent_at(alice, clock.ms), "tester")  # expiry ran: the old id is gone
    assert len(guarded.replay) == 1


def test_a_full_guard_refuses_until_ids_expire(guarded, alice, clock):
    for i in range(3):
        guarded.admit(sent_at(alice, NOW + i), "tester")
    refused(guarded, sent_at(alice, NOW + 3), ReplayWindowFull)
    assert guarded.rejects == {"replay_window_full": 1}
    clock.ms = NOW + WINDOW + 1  # the first id's message is now stale
    guarded.admit(sent_at(alice, NOW + 3), "tester")
    assert len(guarded.replay) == 3


def test_a_forged_copy_does_not_burn_the_genuine_id(guarded, alice):
    genuine = sent_at(alice, NOW, label="pay")
    forged = genuine.replace(b'"pay"', b'"PAY"')
    refused(guarded, forged, BadSignature)
    guarded.admit(genuine, "tester")


def test_the_id_not_the_bytes_is_what_counts(guarded, alice):
    """A re-signed copy under the same id (new bytes, same message) is still a replay."""
    data = sent_at(alice, NOW)
    guarded.admit(data, "tester")
    env = Envelope.decode(data)
    again = sign_envelope(replace(env, corr="another-flow"), alice)
    refused(guarded, again.encode(), ReplayedMessage)
