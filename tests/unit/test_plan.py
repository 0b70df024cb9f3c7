"""Rollout plans: a good plan reads from TOML with its defaults filled in, and every bad plan is
refused with the typed error of the rule it breaks."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from messages.canonical import b64
from messages.plan import (
    BadCosignerPolicy,
    BadDomainSpread,
    BadFleetId,
    BadGate,
    BadKeyRoles,
    BadMembers,
    BadQuorum,
    BadValidity,
    PlanBadValue,
    PlanError,
    PlanMissingSetting,
    PlanUnknownSetting,
    PlanUnreadable,
    WaveTooLarge,
    describe,
    parse_plan,
)
from orchestrator.cli.plan_file import load_plan

KEY_A, KEY_B = b64(bytes(range(32))), b64(bytes(range(1, 33)))

GOOD_TOML = f"""
fleet = "fleet-2026"

[members]
count = 5
domains = ["dc1", "dc2", "dc3"]
hsm = "soft"
min_per_domain = 1

[quorum]
survive_domain_loss = true

[keys]
vault = "ed25519"
signing = "ecdsa-p256-sha256"

[validity]
days = 30
not_before = "2026-01-01T00:00:00.000Z"

[cosigners]
threshold = 2
[[cosigners.pin]]
id = "cosigner-a"
pin_file = "a.pin.json"
[[cosigners.pin]]
id = "cosigner-b"
name = "cosigner-b.example/log"
public_key = "{KEY_B}"

[rollout]
wave_size = 2
"""


def good() -> dict[str, Any]:
    return {
        "fleet": "fleet-1",
        "members": {"ids": ["n1", "n2", "n3"]},
        "keys": {"vault": "ed25519"},
        "cosigners": {
            "threshold": 1,
            "pins": [{"id": "cosigner-a", "name": "a.example/log", "public_key": KEY_A}],
        },
    }


def test_a_toml_plan_reads_with_defaults_and_pin_files(tmp_path: Path) -> None:
    (tmp_path / "a.pin.json").write_text(
        json.dumps({"name": "cosigner-a.example/log", "public_key": KEY_A, "url": "http://a"})
    )
    (tmp_path / "plan.toml").write_text(GOOD_TOML)
    plan = load_plan(tmp_path / "plan.toml")
    assert plan.fleet == "fleet-2026" and plan.size == 5
    assert plan.threshold == 3 and plan.tolerance == 2
    assert [(k.role, k.alg) for k in plan.keys] == [
        ("vault", "ed25519"),
        ("signing", "ecdsa-p256-sha256"),
    ]
    assert [p.url for p in plan.cosigners.pins] == ["http://a", None]
    assert plan.rollout.approve_publish and plan.rollout.on_member_loss == "pause"
    assert plan.rollout.member_deadline_s == 60
    # The JSON form (what the API receives) reads back to the same plan.
    assert parse_plan(plan.to_json()) == plan
    text = "\n".join(describe(plan))
    assert "3 of 5 (can lose 2)" in text and "after an operator approves" in text


def test_defaults_of_a_minimal_plan() -> None:
    plan = parse_plan(good())
    assert plan.members.count == 3 and plan.threshold == 2 and plan.rollout.wave_size == 1
    assert plan.validity.days == 365 and plan.validity.not_before is None


def change(path: str, value: Any) -> dict[str, Any]:
    """The good plan with the setting at dotted ``path`` set (``...`` deletes it)."""
    plan = copy.deepcopy(good())
    *parents, last = path.split(".")
    node = plan
    for name in parents:
        node = node.setdefault(name, {})
    if value is ...:
        del node[last]
    else:
        node[last] = value
    return plan


BAD = [
    ("unknown top-level", change("colour", "red"), PlanUnknownSetting),
    ("typo in a table", change("rollout.wave", 1), PlanUnknownSetting),
    ("no fleet", change("fleet", ...), PlanMissingSetting),
    ("no members", change("members", ...), PlanMissingSetting),
    ("members without ids or count", change("members.ids", ...), PlanMissingSetting),
    ("no cosigner threshold", change("cosigners.threshold", ...), PlanMissingSetting),
    ("pin without a key", change("cosigners.pins", [{"id": "c", "name": "c/log"}]),
     PlanMissingSetting),
    ("fleet is a number", change("fleet", 7), PlanBadValue),
    ("count is text", change("members", {"count": "five"}), PlanBadValue),
    ("ids are not text", change("members.ids", [1, 2, 3]), PlanBadValue),
    ("boolean for a number", change("rollout", {"wave_size": True}), PlanBadValue),
    ("plan is a list", [good()], PlanBadValue),
    ("fleet id with a dot", change("fleet", "fleet.1"), BadFleetId),
    ("member twice", change("members.ids", ["n1", "n1", "n2"]), BadMembers),
    ("ids and another count", change("members", {"ids": ["n1"], "count": 2}), BadMembers),
    ("zero members", change("members", {"count": 0}), BadMembers),
    ("too many members", change("members", {"count": 5000}), BadMembers),
    ("bad member id", change("members.ids", ["n 1", "n2", "n3"]), BadMembers),
    ("minimum per domain too high",
     change("members", {"count": 3, "domains": ["a", "b"], "min_per_domain": 2}),
     BadDomainSpread),
    ("domain twice", change("members", {"count": 3, "domains": ["a", "a"]}), BadDomainSpread),
    ("negative minimum", change("members", {"count": 3, "min_per_domain": -1}), BadDomainSpread),
    ("threshold not a majority", change("quorum", {"threshold": 1}), BadQuorum),
    ("threshold above the members", change("quorum", {"threshold": 4}), BadQuorum),
    ("cannot survive a domain loss",
     change("members", {"count": 3, "domains": ["a", "b"]}) | {"quorum": {
         "survive_domain_loss": True}},
     BadQuorum),
    ("no keys", change("keys", {}), BadKeyRoles),
    ("key agreement key", change("keys", {"transport": "x25519"}), BadKeyRoles),
    ("upper-case role", change("keys", {"Vault": "ed25519"}), BadKeyRoles),
    ("no days", change("validity", {"days": 0}), BadValidity),
    ("too many days", change("validity", {"days": 100_000}), BadValidity),
    ("start not RFC 3339", change("validity", {"not_before": "yesterday"}), BadValidity),
    ("no cosigners", change("cosigners.pins", []), BadCosignerPolicy),
    ("threshold above the cosigners", change("cosigners.threshold", 2), BadCosignerPolicy),
    ("short cosigner key",
     change("cosigners.pins", [{"id": "c", "name": "c/log", "public_key": b64(b"x")}]),
     BadCosignerPolicy),
    ("same cosigner twice",
     change("cosigners.pins", [good()["cosigners"]["pins"][0]] * 2), BadCosignerPolicy),
    ("reserved log origin",
     change("cosigners.pins", [{"id": "c", "name": "hsmfleet/v1/x", "public_key": KEY_A}]),
     BadCosignerPolicy),
    ("unknown member-loss policy", change("rollout", {"on_member_loss": "panic"}), BadGate),
    ("no member deadline", change("rollout", {"member_deadline_s": 0}), BadGate),
    ("wave larger than the quorum can lose", change("rollout", {"wave_size": 2}), WaveTooLarge),
    ("empty wave", change("rollout", {"wave_size": 0}), WaveTooLarge),
    ("quorum that can lose nobody",
     change("members.ids", ["n1", "n2"]), WaveTooLarge),
]  # fmt: skip


@pytest.mark.parametrize(("name", "plan", "error"), BAD, ids=[b[0] for b in BAD])
def test_every_bad_plan_gets_its_typed_error(name: str, plan: Any, error: type[PlanError]) -> None:
    with pytest.raises(error) as refused:
        parse_plan(plan)
    assert type(refused.value) is error and refused.value.kind.startswith("plan")


def test_kinds_are_distinct() -> None:
    kinds = {error.kind for _, _, error in BAD}
    assert len(kinds) == len({error for _, _, error in BAD})


@pytest.mark.parametrize(
    ("text", "files", "error"),
    [
        ('fleet = "x"\n[members\n', {}, PlanUnreadable),
        (GOOD_TOML, {}, PlanUnreadable),  # the pin file is missing
        (GOOD_TOML, {"a.pin.json": "[1, 2]"}, BadCosignerPolicy),
        (
            GOOD_TOML.replace('pin_file = "a.pin.json"', 'pin_file = "a.pin.json"\nname = "a/l"'),
            {"a.pin.json": "{}"},
            BadCosignerPolicy,
        ),
    ],
    ids=["not TOML", "missing pin file", "pin file not a pin", "pin file and inline pin"],
)
def test_bad_plan_files(tmp_path: Path, text: str, files: dict, error: type) -> None:
    for name, content in files.items():
        (tmp_path / name).write_text(content)
    (tmp_path / "plan.toml").write_text(text)
    with pytest.raises(error):
        load_plan(tmp_path / "plan.toml")


def test_a_missing_file_is_unreadable(tmp_path: Path) -> None:
    with pytest.raises(PlanUnreadable):
        load_plan(tmp_path / "nope.toml")


def test_pin_files_are_refused_over_the_api() -> None:
    plan = change("cosigners.pins", [{"id": "c", "pin_file": "/etc/passwd"}])
    with pytest.raises(PlanBadValue):
        parse_plan(plan)
