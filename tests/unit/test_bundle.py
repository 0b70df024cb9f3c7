"""Stage bundles: format, evidence each stage needs, and the pure chain rule."""

from __future__ import annotations

import dataclasses
import itertools

import pytest

from cosigner.testbed import sample_artifact, sample_chain
from messages.bundle import (
    ChainHead,
    Evidence,
    NodeRef,
    SerialGap,
    StageBundle,
    StaleSerial,
    WrongFleet,
    WrongPrev,
    check_chain,
    check_successor,
)
from messages.documents import MalformedDocument


def test_chain_links_by_serial_and_prev() -> None:
    chain = sample_chain()
    assert [b.stage for b in chain] == ["enroll", "ceremony", "quorum", "publish"]
    assert chain[0].prev is None
    for before, after in itertools.pairwise(chain):
        assert after.prev == before.digest
        assert after.serial == before.serial + 1
    head = check_chain(chain)
    assert head == ChainHead("fleet-1", 4, chain[-1].digest)
    assert chain[-1].evidence.artifact == sample_artifact().digest


def test_round_trip_and_open_world_evidence() -> None:
    bundle = sample_chain()[2]
    raw = bundle.to_json()
    raw["evidence"]["commit_index"] = 12
    raw["operator_note"] = "dc3 joined late"
    parsed = StageBundle.from_json(raw)
    assert parsed.evidence.extra == {"commit_index": 12}
    assert parsed.to_json() == raw
    assert parsed.digest != bundle.digest
    assert StageBundle.parse(bundle.to_bytes()) == bundle


def test_unknown_stages_are_accepted_without_evidence_rules() -> None:
    first = sample_chain()[0]
    inspected = dataclasses.replace(first, stage="inspect", evidence=Evidence.of())
    assert StageBundle.from_json(inspected.to_json()).stage == "inspect"


@pytest.mark.parametrize(
    ("stage", "evidence"),
    [
        ("enroll", Evidence.of()),
        ("ceremony", Evidence.of(attestations=[NodeRef("node-1", "0" * 64)])),
        ("quorum", Evidence.of()),
        ("publish", Evidence.of(quorum_proof="0" * 64)),
        ("destroy", Evidence.of(attestations=[NodeRef("node-1", "0" * 64)])),
        ("drain", Evidence.of()),
        ("retire", Evidence.of(artifact="0" * 64)),
    ],
)
def test_known_stages_need_their_evidence(stage: str, evidence: Evidence) -> None:
    raw = sample_chain()[0].to_json()
    raw["stage"] = stage
    raw["evidence"] = evidence.to_json()
    with pytest.raises(MalformedDocument, match=f"a {stage} bundle needs evidence"):
        StageBundle.from_json(raw)


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("serial", 0, "at least 1"),
        ("prev", "ab" * 32, "prev is null exactly for serial 1"),
        ("stage", "Enroll", "lowercase"),
        ("not_after", "2025-12-31T23:59:59.999Z", "precede"),
        ("evidence", {"attestations": []}, "missing"),
    ],
)
def test_malformed_bundles_are_refused(field: str, value: object, reason: str) -> None:
    raw = sample_chain()[0].to_json()
    raw[field] = value
    with pytest.raises(MalformedDocument, match=reason):
        StageBundle.from_json(raw)


def test_evidence_digests_and_nodes_are_checked() -> None:
    raw = sample_chain()[0].to_json()
    raw["evidence"]["attestations"][0]["digest"] = "AB" * 32
    with pytest.raises(MalformedDocument, match="lowercase hex"):
        StageBundle.from_json(raw)
    raw = sample_chain()[0].to_json()
    raw["evidence"]["attestations"][1]["node"] = "node-1"
    with pytest.raises(MalformedDocument, match="name a node twice"):
        StageBundle.from_json(raw)


def test_chain_errors_say_which_rule_broke() -> None:
    one, two, three, _ = sample_chain()
    head = ChainHead.of(one)
    with pytest.raises(SerialGap, match="starts at serial 1"):
        check_successor(None, two)
    with pytest.raises(StaleSerial):
        check_successor(ChainHead.of(two), two)
    with pytest.raises(StaleSerial):
        check_successor(ChainHead.of(three), two)
    with pytest.raises(SerialGap):
        check_successor(head, three)
    with pytest.raises(WrongFleet):
        check_successor(head, sample_chain("fleet-2")[1])
    forked = dataclasses.replace(two, prev=sample_chain("fleet-2")[0].digest)
    with pytest.raises(WrongPrev):
        check_successor(head, forked)
    assert check_successor(head, two) == ChainHead.of(two)
    assert check_chain([]) is None
