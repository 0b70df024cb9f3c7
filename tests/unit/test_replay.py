"""Replaying recorded logs (tests/data): good logs rebuild the same state every time, old
versions replay through the upcasters, divergent and damaged logs fail naming the entry."""

from __future__ import annotations

from pathlib import Path

import pytest

from messages.signing import Ed25519Signer
from orchestrator.core.errors import Fenced, LogCorrupt, ReplayDivergence
from orchestrator.shell.keys import load_trust, trust_for
from orchestrator.shell.log import entry_digest
from orchestrator.shell.logfile import Header, replay_files

DATA = Path(__file__).resolve().parent.parent / "data"
GOOD = ["enrollment-mixed.v2.jsonl", "enrollment-mixed.v1.jsonl"]


@pytest.fixture(scope="module")
def trust():
    return load_trust(DATA / "orchestrator.pub")


def lines(name: str) -> list[bytes]:
    return (DATA / name).read_bytes().splitlines(keepends=True)


def write(tmp_path: Path, name: str, content: list[bytes]) -> Path:
    path = tmp_path / name
    path.write_bytes(b"".join(content))
    return path


def line_of(name: str, needle: bytes, nth: int = 0) -> int:
    hits = [i for i, line in enumerate(lines(name), start=1) if needle in line]
    return hits[nth]


@pytest.mark.parametrize("name", GOOD)
def test_recorded_log_replays_to_the_same_state_twice(trust, name):
    first = replay_files([DATA / name], trust)
    second = replay_files([DATA / name], trust, verify_every=1)
    assert first.state == second.state
    assert (first.entries, first.decisions, first.events) == (
        second.entries,
        second.decisions,
        second.events,
    )
    state = first.state
    assert state.lease.holder == "orch-b" and state.lease.epoch == 7
    statuses = {node_id: node.status for node_id, node in state.nodes.items()}
    assert statuses == {
        "n0": "enrolled",
        "n1": "enrolled",
        "n2": "rejected",
        "n3": "rejected",
        "n4": "rejected",
    }
    reasons = {n.node_id: n.reason for n in state.nodes.values() if n.reason}
    assert reasons == {"n2": "unknown_root", "n3": "measurement_not_allowed", "n4": "no_answer"}
    assert state.nodes["n1"].domain == "dc-2"


def test_old_version_log_is_upcast_on_read(trust):
    old = replay_files([DATA / "enrollment-mixed.v1.jsonl"], trust).state
    assert b'"v":1' in (DATA / "enrollment-mixed.v1.jsonl").read_bytes()
    assert {n.domain for n in old.nodes.values()} == {"dc-1", "dc-2", "dc-3"}


@pytest.mark.parametrize(
    ("name", "error", "needle", "words"),
    [
        (
            "divergent-measurement.v2.jsonl",
            ReplayDivergence,
            b'"type":"enrollment.node_enrolled"',
            "recorded enrollment.node_enrolled, decide now emits enrollment.node_rejected",
        ),
        (
            "divergent-extra-event.v2.jsonl",
            ReplayDivergence,
            b'"input":{"domain":"dc-2","hsm":"soft","measurement"',
            "recorded decision emitted 2 event(s), decide now emits 1",
        ),
        (
            "divergent-fenced.v2.jsonl",
            Fenced,
            b'"holder":"orch-a"',
            "decision by orch-a (epoch 7) while orch-b (epoch 7) holds the lease",
        ),
    ],
)
def test_divergent_log_fails_naming_the_first_diverging_entry(trust, name, error, needle, words):
    with pytest.raises(error) as caught:
        replay_files([DATA / name], trust)
    # each divergent log ends with the entry that diverges
    assert f"{name} line {line_of(name, needle, -1)}:" in str(caught.value)
    assert words in str(caught.value)


def test_rebuild_without_checking_decisions_accepts_what_audit_refuses(trust):
    result = replay_files([DATA / "divergent-measurement.v2.jsonl"], trust, check=False)
    assert result.state.nodes["n9"].status == "enrolled"


def test_truncated_last_line_is_named(tmp_path, trust):
    content = lines(GOOD[0])
    content[-1] = content[-1][:40]
    path = write(tmp_path, "cut.jsonl", content)
    with pytest.raises(LogCorrupt, match=rf"cut.jsonl line {len(content)}: line is truncated"):
        replay_files([path], trust)


def test_garbled_line_is_named(tmp_path, trust):
    content = lines(GOOD[0])
    content[5] = b'{"type": "orchestrator.decision", oops\n'
    path = write(tmp_path, "garbled.jsonl", content)
    with pytest.raises(LogCorrupt, match=r"garbled.jsonl line 6: not a log entry"):
        replay_files([path], trust)


@pytest.mark.parametrize(("every", "blamed"), [(1, 0), (1000, 1)])
def test_altered_entry_breaks_the_chain_or_its_signature(tmp_path, trust, every, blamed):
    """Every signature checked: the altered entry itself is refused. Chain mode: the entry
    after it no longer chains to it (checked here while only rebuilding: an audit would also
    find the altered event differs from what decide emits)."""
    content = lines(GOOD[0])
    index = line_of(GOOD[0], b'"type":"node.announced"') - 1
    content[index] = content[index].replace(b'"dc-', b'"dc-9', 1)
    path = write(tmp_path, "altered.jsonl", content)
    with pytest.raises(LogCorrupt, match=rf"altered.jsonl line {index + 1 + blamed}: "):
        replay_files([path], trust, verify_every=every, check=False)


def test_dropped_entry_breaks_the_chain(tmp_path, trust):
    content = lines(GOOD[0])
    del content[10]
    path = write(tmp_path, "dropped.jsonl", content)
    with pytest.raises(LogCorrupt, match=r"dropped.jsonl line 11: breaks the chain"):
        replay_files([path], trust)


def test_log_ending_inside_a_decision(tmp_path, trust):
    content = lines(GOOD[0])[:-1]
    path = write(tmp_path, "short.jsonl", content)
    with pytest.raises(LogCorrupt, match=r"log ends with 1 event\(s\) of a decision missing"):
        replay_files([path], trust)


def test_log_signed_by_another_key_is_refused(trust):
    stranger = trust_for(Ed25519Signer.generate())
    with pytest.raises(LogCorrupt, match=r"line \d+: signature refused"):
        replay_files([DATA / GOOD[0]], stranger)


def test_a_log_in_two_files_replays_as_one(tmp_path, trust):
    content = lines(GOOD[0])
    cut = 20
    second_header = Header("FLEET_EVENTS", cut, entry_digest(content[cut - 1][:-1]))
    first = write(tmp_path, "part1.jsonl", content[:cut])
    second = write(tmp_path, "part2.jsonl", [second_header.encode() + b"\n", *content[cut:]])
    whole = replay_files([DATA / GOOD[0]], trust).state
    assert replay_files([first, second], trust).state == whole
    with pytest.raises(LogCorrupt, match=r"part2.jsonl line 1: log starts at seq 20"):
        replay_files([second], trust)


@pytest.mark.parametrize("first_line", [b"", b"not a header\n", b'{"format":"other"}\n'])
def test_missing_or_bad_header(tmp_path, trust, first_line):
    path = write(tmp_path, "nohead.jsonl", [first_line] if first_line else [])
    with pytest.raises(LogCorrupt, match=r"nohead.jsonl line 1: "):
        replay_files([path], trust)
