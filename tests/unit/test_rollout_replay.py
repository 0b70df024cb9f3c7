"""Golden logs of rollouts (tests/data, ``python -m tests.replay.record``): good ones replay,
decision by decision, to the same state and the same stage-bundle bytes; divergent ones (a
bundle missing a member's attestation, an artifact prepared past the closed gate) fail naming
the entry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from messages.canonical import canonical
from orchestrator.core.errors import ReplayDivergence
from orchestrator.shell.keys import load_trust
from orchestrator.shell.logfile import replay_files

DATA = Path(__file__).resolve().parent.parent / "data"


@pytest.fixture(scope="module")
def trust():
    return load_trust(DATA / "orchestrator.pub")


def recorded_bundles(name: str) -> list[bytes]:
    """The canonical bytes of every stage bundle the log recorded as issued, in order."""
    out = []
    for line in (DATA / name).read_bytes().splitlines()[1:]:
        entry = json.loads(line)
        if entry["type"] == "rollout.stage_bundle":
            out.append(canonical(entry["body"]["bundle"]))
    return out


def test_a_rollout_log_replays_to_the_same_state_and_bundle_bytes(trust):
    first = replay_files([DATA / "rollout-active.v2.jsonl"], trust)
    second = replay_files([DATA / "rollout-active.v2.jsonl"], trust, verify_every=1)
    assert first.state == second.state
    book = first.state.book
    rollout = book.of_fleet("fleet-1")
    assert rollout.status == "active" and rollout.approved
    chain = book.fleets["fleet-1"]
    assert [b.stage for b in chain.bundles] == [
        "enroll",
        "ceremony",
        "quorum",
        "publish",
        "activate",
    ]
    assert chain.logged == 5 and chain.active_epoch == 1
    rebuilt = [b.to_bytes() for b in chain.bundles]
    assert rebuilt == recorded_bundles("rollout-active.v2.jsonl")


def test_a_log_with_lost_members_supersede_and_abort_replays(trust):
    book = replay_files([DATA / "rollout-faults.v2.jsonl"], trust).state.book
    one = book.of_fleet("fleet-1")
    assert one.status == "active" and one.members["node-2"].status == "lost"
    assert "node-2" not in {m.id for m in one.artifact.quorum.members}
    two = book.of_fleet("fleet-2")
    assert two.status == "aborted"
    assert all(m.destroyed for m in two.in_order() if m.holds_keys)
    superseded = [r for r in book.rollouts.values() if r.status == "superseded"]
    assert [r.superseded_by for r in superseded] == [two.rollout_id]
    stages = [b.stage for b in book.fleets["fleet-2"].bundles]
    assert stages[-1] == "abort" and book.fleets["fleet-2"].logged == len(stages)
    rebuilt = [b.to_bytes() for f in ("fleet-1", "fleet-2") for b in book.fleets[f].bundles]
    assert sorted(rebuilt) == sorted(recorded_bundles("rollout-faults.v2.jsonl"))


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("divergent-rollout-bundle.v2.jsonl", "recorded rollout.stage_bundle differs"),
        ("divergent-rollout-gate.v2.jsonl", "decide now emits 0"),
    ],
)
def test_a_divergent_rollout_log_fails_naming_the_entry(trust, name, words):
    with pytest.raises(ReplayDivergence, match=rf"{name} line \d+: .*{words}"):
        replay_files([DATA / name], trust)


def test_a_log_of_rotation_schedule_and_retirement_replays(trust):
    book = replay_files([DATA / "fleet-flows.v2.jsonl"], trust).state.book
    one, two = book.fleets["fleet-1"], book.fleets["fleet-2"]
    stages = [b.stage for b in one.bundles]
    first = ["enroll", "ceremony", "quorum", "publish", "activate"]
    assert stages == [*first, *first, "destroy", "drain", "retire"]
    assert one.logged == len(stages) and one.active_epoch == 2
    assert one.rotate_every_days == 90 and one.retirement is not None
    rotation = book.rollouts[one.active_rollout]
    assert rotation.kind == "rotation" and rotation.rotation.legacy_closed
    assert book.of_fleet("fleet-1").status == "retired"
    assert two.active_epoch == 1
    rebuilt = [b.to_bytes() for f in ("fleet-1", "fleet-2") for b in book.fleets[f].bundles]
    assert sorted(rebuilt) == sorted(recorded_bundles("fleet-flows.v2.jsonl"))


def test_a_log_destroying_old_keys_inside_the_overlap_diverges(trust):
    name = "divergent-early-destroy.v2.jsonl"
    with pytest.raises(ReplayDivergence, match=rf"{name} line \d+: .*decide now emits 0"):
        replay_files([DATA / name], trust)
