"""Replication configurations and the CASPaxos membership-change steps."""

import pytest

from messages import Ed25519Signer
from messages.membership import Membership, plan_join, plan_leave, quorums_intersect
from messages.quorum import BadConfig, Config


def members(n):
    return {f"m{i}": Ed25519Signer.generate() for i in range(1, n + 1)}


def test_majority_configuration():
    m = Membership.majority("f", members(5))
    assert m.prepare_quorum == m.accept_quorum == 3
    assert m.voters == {"m1", "m2", "m3", "m4", "m5"}
    assert m.majority_size == 3
    assert Membership.from_config(Config.from_json(m.to_config().to_json())) == m


def test_trust_store_holds_every_member_key_for_the_member_role():
    keys = members(3)
    trust = Membership.majority("f", keys).trust()
    assert len(trust) == 3
    assert trust.key_for(keys["m2"].kid, "member", "m2").owner == "m2"


@pytest.mark.parametrize(
    ("prepare", "qp", "accept", "qa", "ok"),
    [
        ("abc", 2, "abc", 2, True),
        ("abc", 1, "abc", 3, True),
        ("abc", 1, "abc", 2, False),
        ("abc", 2, "abcd", 3, True),
        ("abc", 2, "abcd", 2, False),
        ("abcd", 3, "abcd", 3, True),
        ("abcd", 2, "abcd", 3, True),
        ("abcd", 2, "abcd", 2, False),
        ("ab", 1, "cd", 2, False),
    ],
)
def test_quorum_intersection(prepare, qp, accept, qa, ok):
    assert quorums_intersect(frozenset(prepare), qp, frozenset(accept), qa) is ok


def test_inconsistent_configurations_are_refused():
    base = Membership.majority("f", members(3))
    with pytest.raises(BadConfig, match="non-members"):
        base.next(prepare_set=frozenset({"m1", "m2", "x"}))
    with pytest.raises(BadConfig, match="does not fit"):
        base.next(accept_quorum=4)
    with pytest.raises(BadConfig, match="could miss"):
        base.next(prepare_quorum=1)
    with pytest.raises(BadConfig, match="epoch"):
        base.next(epoch=0)
    twice = base.to_config()
    doubled = Config.from_json(
        {**twice.to_json(), "members": [m.to_json() for m in twice.members] * 2}
    )
    with pytest.raises(BadConfig, match="twice"):
        Membership.from_config(doubled)


def test_join_from_odd_widens_accept_then_prepare():
    keys = members(4)
    three = Membership.majority("f", {m: keys[m] for m in ("m1", "m2", "m3")})
    first, second = plan_join(three, "m4", keys["m4"])
    assert first.catch_up == "m4"
    assert first.membership.accept_set == {"m1", "m2", "m3", "m4"}
    assert first.membership.accept_quorum == 3
    assert first.membership.prepare_set == {"m1", "m2", "m3"}
    assert first.membership.prepare_quorum == 2
    assert second.catch_up is None
    assert second.membership.prepare_set == second.membership.accept_set
    assert second.membership.prepare_quorum == 3
    assert [first.membership.epoch, second.membership.epoch] == [2, 3]


def test_join_from_even_adds_to_both_sets_at_once():
    keys = members(5)
    four = Membership.majority("f", {m: keys[m] for m in ("m1", "m2", "m3", "m4")})
    (only,) = plan_join(four, "m5", keys["m5"])
    assert only.catch_up == "m5"
    assert only.membership.voters == set(keys)
    assert only.membership.prepare_quorum == only.membership.accept_quorum == 3


def test_leave_runs_the_join_steps_in_reverse():
    four = Membership.majority("f", members(4))
    first, second = plan_leave(four, "m4")
    assert first.membership.prepare_set == {"m1", "m2", "m3"}
    assert first.membership.prepare_quorum == 2
    assert first.membership.accept_quorum == 3
    assert second.membership.voters == {"m1", "m2", "m3"}
    assert second.membership.accept_quorum == 2
    assert "m4" not in second.membership.keys
    five = Membership.majority("f", members(5))
    (only,) = plan_leave(five, "m5")
    assert only.membership.voters == {"m1", "m2", "m3", "m4"}
    assert only.membership.prepare_quorum == 3


def test_changes_need_a_settled_configuration_and_a_real_member():
    keys = members(4)
    three = Membership.majority("f", {m: keys[m] for m in ("m1", "m2", "m3")})
    halfway = plan_join(three, "m4", keys["m4"])[0].membership
    with pytest.raises(BadConfig, match="running membership change"):
        plan_join(halfway, "m5", Ed25519Signer.generate())
    with pytest.raises(BadConfig, match="already"):
        plan_join(three, "m1", keys["m1"])
    with pytest.raises(BadConfig, match="not a member"):
        plan_leave(three, "m9")


def test_unreadable_member_settings_are_a_typed_error(tmp_path):
    from node.quorum.member import BadSettings, MemberSettings

    (tmp_path / "settings.json").write_text("{not json")
    with pytest.raises(BadSettings):
        MemberSettings.load(tmp_path / "settings.json")
    with pytest.raises(BadSettings):
        MemberSettings.load(tmp_path / "missing.json")
