"""Auditing a whole log from its entries: each failure its own kind, and the epoch report."""

from __future__ import annotations

import dataclasses

import pytest

from cosigner.testbed import MEMBERS, sample_artifact, sample_chain
from messages.audit import (
    BadLogEntry,
    BrokenChain,
    DuplicateEntry,
    MissingArtifact,
    RootMismatch,
    audit_entries,
)
from messages.checkpoint import Checkpoint
from messages.merkle import Tree

ORIGIN = "audit.example/log"


def _audit(entries: list[bytes], size: int | None = None, root_of: list[bytes] | None = None):
    root = Tree(root_of if root_of is not None else entries).root()
    checkpoint = Checkpoint(ORIGIN, len(entries) if size is None else size, root)
    return audit_entries(checkpoint, entries)


def _log() -> list[bytes]:
    first = sample_artifact(members=MEMBERS[:3])
    second = sample_artifact(epoch=2, legacy=True)
    documents = [*sample_chain(artifact=first), first, second, sample_artifact("fleet-2", 5)]
    return [d.to_bytes() for d in documents]


def test_a_sound_log_and_what_changed_between_epochs() -> None:
    audit = _audit(_log())
    assert audit.size == 7 and set(audit.fleets) == {"fleet-1", "fleet-2"}
    record = audit.fleets["fleet-1"]
    assert [b.stage for _, b in record.bundles] == ["enroll", "ceremony", "quorum", "publish"]
    assert [(i, a.epoch) for i, a in record.artifacts] == [(4, 1), (5, 2)]
    changes = record.changes()
    assert changes[0].startswith("epoch 1: key added ")
    assert "epoch 1: threshold 2 of 3 across 2 failure domains" in changes
    assert "epoch 2: member added node-4 in dc2" in changes
    assert "epoch 2: member added node-5 in dc3" in changes
    assert "epoch 2: threshold 3 of 5 across 3 failure domains" in changes
    assert sum("legacy until" in c for c in changes) == 1
    assert sum("key removed" in c for c in changes) == 1


def test_entries_that_do_not_hash_to_the_signed_root() -> None:
    entries = _log()
    with pytest.raises(RootMismatch):
        _audit(entries, root_of=entries[:-1])
    with pytest.raises(RootMismatch):
        _audit(entries[:-1], size=len(entries))


def test_an_entry_that_is_not_a_document() -> None:
    with pytest.raises(BadLogEntry):
        _audit([*_log(), b'{"format": "hsmfleet/stage-bundle/v1"}'])


def test_a_document_logged_twice() -> None:
    entries = _log()
    with pytest.raises(DuplicateEntry):
        _audit([*entries, entries[4]])


def test_a_broken_chain() -> None:
    one, two, three, four = sample_chain()
    forked = dataclasses.replace(three, prev=one.digest)
    with pytest.raises(BrokenChain) as caught:
        _audit([d.to_bytes() for d in (one, two, forked)])
    assert caught.value.detail["rule"] == "wrong_prev"
    with pytest.raises(BrokenChain) as caught:
        _audit([d.to_bytes() for d in (one, two, four)])
    assert caught.value.detail["rule"] == "serial_gap"
    with pytest.raises(BrokenChain) as caught:
        _audit([sample_artifact(epoch=1).to_bytes(), sample_artifact(epoch=3).to_bytes()])
    assert caught.value.detail["rule"] == "epoch_gap"


def test_a_publish_bundle_without_its_artifact() -> None:
    with pytest.raises(MissingArtifact):
        _audit([b.to_bytes() for b in sample_chain()])
