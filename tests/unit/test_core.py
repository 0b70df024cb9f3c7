"""The pure core: leases fence decisions, announcements, commands, determinism."""

from __future__ import annotations

import pytest

from messages.attestation import NodeAnnounce, NodeHeartbeat
from messages.errors import BadSubject
from messages.events import ChallengeIssued, LeaseTaken, NodeAnnounced, PolicySet
from messages.inputs import EnrollNode, SetPolicy, TakeLease, Tick
from orchestrator.core.context import Context
from orchestrator.core.decisions import decide
from orchestrator.core.errors import (
    CommandRefused,
    EnrollmentConflict,
    Fenced,
    NoPolicy,
    UnknownNode,
)
from orchestrator.core.state import State
from tests.replay.kit import MEASUREMENT, T0, PureLog, Vendor


def announce(node_id: str = "n1", domain: str = "dc-1") -> NodeAnnounce:
    return NodeAnnounce(node_id=node_id, domain=domain, hsm="soft", measurement=MEASUREMENT)


def policy(vendor: Vendor, *, auto: bool = False, ttl: int = 30_000) -> SetPolicy:
    return SetPolicy(
        vendor_roots=(vendor.root_der,),
        allowed_measurements=(MEASUREMENT,),
        nonce_ttl_ms=ttl,
        auto_enroll=auto,
    )


@pytest.fixture
def log() -> PureLog:
    log = PureLog()
    log.take_lease(1)
    return log


def test_takeover_needs_a_newer_epoch():
    state = State()
    events = decide(state, TakeLease(), Context(T0, b"s", 5, "orch-a"))
    assert events == [LeaseTaken(holder="orch-a", epoch=5)]
    log = PureLog()
    log.take_lease(5)
    with pytest.raises(Fenced):
        decide(log.state, TakeLease(), Context(T0, b"s", 5, "orch-b"))


@pytest.mark.parametrize(("holder", "epoch"), [("orch-b", 1), ("orch-a", 2), ("orch-a", 0)])
def test_decisions_outside_the_lease_are_fenced(log, holder, epoch):
    with pytest.raises(Fenced):
        decide(log.state, announce(), Context(T0, b"s", epoch, holder))


def test_announce_records_the_failure_domain_once(log):
    assert log.decide(announce()) == [
        NodeAnnounced(node_id="n1", domain="dc-1", hsm="soft", measurement=MEASUREMENT)
    ]
    assert log.decide(announce()) == []
    assert log.decide(announce(domain="dc-2"))[0].domain == "dc-2"
    assert log.state.nodes["n1"].domain == "dc-2"
    assert log.state.nodes["n1"].status == "announced"


def test_announce_with_an_unsafe_id_is_refused(log):
    with pytest.raises(BadSubject):
        log.decide(announce(node_id="n1.*"))
    assert len(log.state.nodes) == 0


def test_enroll_refuses_unknown_nodes_and_missing_policy(log):
    with pytest.raises(UnknownNode):
        log.decide(EnrollNode(node_id="ghost", requested_by="op"))
    log.decide(announce())
    with pytest.raises(NoPolicy):
        log.decide(EnrollNode(node_id="n1", requested_by="op"))


def test_enroll_issues_one_fresh_nonce_at_a_time(log):
    log.decide(policy(Vendor()))
    log.decide(announce())
    (challenge,) = log.decide(EnrollNode(node_id="n1", requested_by="op"), now_ms=T0 + 5)
    assert isinstance(challenge, ChallengeIssued)
    assert len(challenge.nonce) == 32
    assert challenge.expires_ms == T0 + 5 + 30_000
    assert log.state.nodes["n1"].status == "enrolling"
    with pytest.raises(EnrollmentConflict):
        log.decide(EnrollNode(node_id="n1", requested_by="op"))


def test_policy_is_recorded_only_when_it_changes(log):
    vendor = Vendor()
    assert isinstance(log.decide(policy(vendor))[0], PolicySet)
    assert log.decide(policy(vendor)) == []
    assert log.decide(policy(vendor, auto=True))[0].auto_enroll is True


@pytest.mark.parametrize(
    "bad",
    [
        SetPolicy(
            vendor_roots=(b"not a cert",),
            allowed_measurements=(),
            nonce_ttl_ms=1,
            auto_enroll=False,
        ),
        SetPolicy(vendor_roots=(), allowed_measurements=(), nonce_ttl_ms=0, auto_enroll=False),
    ],
)
def test_bad_policy_is_refused(log, bad):
    with pytest.raises(CommandRefused):
        log.decide(bad)
    assert log.state.policy is None


def test_auto_enroll_challenges_new_nodes_only(log):
    log.decide(policy(Vendor(), auto=True))
    first = log.decide(announce())
    assert [type(e) for e in first] == [NodeAnnounced, ChallengeIssued]
    assert first[1].requested_by == "policy:auto_enroll"
    assert log.decide(announce()) == []


def test_decide_is_deterministic_and_leaves_the_state_alone(log):
    log.decide(policy(Vendor()))
    log.decide(announce())
    before = log.state
    ctx = Context(T0, b"seed", 1, "orch-a")
    first = decide(log.state, EnrollNode(node_id="n1", requested_by="op"), ctx)
    second = decide(log.state, EnrollNode(node_id="n1", requested_by="op"), ctx)
    assert first == second
    assert log.state is before and before.nodes["n1"].status == "announced"
    other = decide(
        log.state, EnrollNode(node_id="n1", requested_by="op"), Context(T0, b"x", 1, "orch-a")
    )
    assert other[0].nonce != first[0].nonce


def test_tick_closes_overdue_challenges_in_id_order(log):
    log.decide(policy(Vendor(), ttl=1_000))
    for i in range(5):
        log.decide(announce(f"n{i}"))
        log.decide(EnrollNode(node_id=f"n{i}", requested_by="op"), now_ms=T0 + i)
    assert log.decide(Tick(), now_ms=T0 + 1_000) == []
    closed = log.decide(Tick(), now_ms=T0 + 1_003)
    assert [e.node_id for e in closed] == ["n0", "n1", "n2"]
    assert {e.reason for e in closed} == {"no_answer"}
    assert sorted(log.state.open_enrollments.values()) == ["n3", "n4"]


def test_heartbeat_of_an_unheard_node_records_it(log):
    beat = NodeHeartbeat(node_id="n5", domain="dc-3", seq=4, uptime_ms=9, hsm_ok=True)
    (event,) = log.decide(beat)
    assert (event.node_id, event.domain, event.hsm) == ("n5", "dc-3", "unknown")
    assert log.decide(beat) == []
    (event,) = log.decide(announce("n5", "dc-3"))
    assert (event.hsm, event.measurement) == ("soft", MEASUREMENT)
