"""The fleet-key artifact: canonical bytes and digest, strict decoding, open world, epochs."""

from __future__ import annotations

import hashlib
import json

import pytest

from cosigner.testbed import MEMBERS, sample_artifact
from messages.artifact import (
    EpochGap,
    FleetKeyArtifact,
    StaleEpoch,
    check_next_epoch,
)
from messages.canonical import canonical
from messages.documents import (
    MAX_DOCUMENT_BYTES,
    MAX_INPUT_BYTES,
    MalformedDocument,
    UnknownFormat,
)
from messages.ids import parse_time


def test_digest_is_sha256_of_the_canonical_bytes() -> None:
    artifact = sample_artifact()
    data = artifact.to_bytes()
    assert data == canonical(json.loads(data))
    assert artifact.digest == hashlib.sha256(data).hexdigest()
    assert data.startswith(b'{"epoch":1,"fleet":"fleet-1","format":"hsmfleet/fleet-keys/v1"')


def test_round_trip_from_any_spelling_keeps_the_digest() -> None:
    artifact = sample_artifact(epoch=2, legacy=True)
    spaced = json.dumps(artifact.to_json(), indent=3)
    parsed = FleetKeyArtifact.parse(spaced)
    assert parsed == artifact
    assert parsed.digest == artifact.digest


def test_unknown_fields_are_kept_and_change_the_digest() -> None:
    raw = sample_artifact().to_json()
    raw["region"] = "eu"
    raw["quorum"]["note"] = "three sites"
    parsed = FleetKeyArtifact.from_json(raw)
    assert parsed.extra == {"region": "eu"}
    assert parsed.to_json() == raw
    assert parsed.digest != sample_artifact().digest


def test_legacy_keys_are_usable_only_inside_their_overlap() -> None:
    artifact = sample_artifact(epoch=2, legacy=True)
    legacy = [k for k in artifact.keys if k.legacy_until is not None]
    assert len(legacy) == 1
    start = parse_time(artifact.not_before)
    until = parse_time(legacy[0].legacy_until)
    assert legacy[0] in artifact.keys_usable_at(start)
    assert legacy[0] not in artifact.keys_usable_at(until)
    assert len(artifact.keys_usable_at(until)) == 2


def test_quorum_domains_and_domain_loss() -> None:
    quorum = sample_artifact().quorum
    assert quorum.threshold == 3
    assert dict(quorum.domains) == {"dc1": 2, "dc2": 2, "dc3": 1}
    assert quorum.survives_domain_loss()
    lopsided = sample_artifact(members=[*MEMBERS[:4], ("node-5", "dc1")]).quorum
    assert not lopsided.survives_domain_loss()


def _mutated(path: list, value: object) -> dict:
    raw = sample_artifact().to_json()
    target = raw
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return raw


@pytest.mark.parametrize(
    ("path", "value", "reason"),
    [
        (["epoch"], 0, "epoch must be at least 1"),
        (["epoch"], 1.0, "only objects"),
        (["epoch"], 2**53, "integer out of range"),
        (["fleet"], "fleet one", "fleet id"),
        (["keys"], [], "1-64 keys"),
        (["keys", 0, "public_key"], "not base64!", "base64"),
        (["keys", 0, "legacy_until"], KeyError, "legacy_until is missing"),
        (["keys", 0, "legacy_until"], "2026-01-01T00:00:00Z", "YYYY-MM-DD"),
        (["keys", 0, "role"], "Vault", "lowercase"),
        (["quorum", "threshold"], 2, "majority"),
        (["quorum", "threshold"], 6, "majority"),
        (["quorum", "members"], [], "1-1024 members"),
        (["quorum", "members", 1, "id"], "node-1", "distinct"),
        (["not_after"], "2025-01-01T00:00:00.000Z", "precede"),
        (["not_before"], KeyError, "lacks"),
        (["format"], KeyError, "not a hsmfleet/fleet-keys/v1"),
    ],
)
def test_malformed_artifacts_are_refused(path: list, value: object, reason: str) -> None:
    raw = _mutated(path, value)
    with pytest.raises((MalformedDocument, UnknownFormat), match=reason):
        FleetKeyArtifact.from_json(raw)


def test_an_artifact_needs_a_current_key() -> None:
    raw = sample_artifact().to_json()
    for key in raw["keys"]:
        key["legacy_until"] = "2026-02-01T00:00:00.000Z"
    with pytest.raises(MalformedDocument, match="at least one key must be current"):
        FleetKeyArtifact.from_json(raw)


def test_other_format_tags_are_unknown() -> None:
    raw = sample_artifact().to_json()
    raw["format"] = "hsmfleet/fleet-keys/v2"
    with pytest.raises(UnknownFormat):
        FleetKeyArtifact.from_json(raw)


def test_duplicate_keys_and_bad_json_are_refused() -> None:
    with pytest.raises(MalformedDocument, match="duplicate key"):
        FleetKeyArtifact.parse('{"epoch": 1, "epoch": 2}')
    with pytest.raises(MalformedDocument, match="not JSON"):
        FleetKeyArtifact.parse(b"\xff")
    with pytest.raises(MalformedDocument, match="too large"):
        FleetKeyArtifact.parse(b" " * (MAX_INPUT_BYTES + 1))


def test_the_document_limit_is_on_canonical_bytes_whatever_the_spelling() -> None:
    artifact = sample_artifact()
    spelled = json.dumps(artifact.to_json(), indent=4000).encode()
    assert MAX_DOCUMENT_BYTES < len(spelled) <= MAX_INPUT_BYTES
    assert FleetKeyArtifact.parse(spelled) == artifact


def test_limits_hold_for_decoded_objects_too() -> None:
    """Over NATS a document arrives decoded, not as bytes: the same limits apply."""
    raw = sample_artifact().to_json()
    raw["note"] = "x" * (256 * 1024)
    with pytest.raises(MalformedDocument, match="too large"):
        FleetKeyArtifact.from_json(raw)
    raw["note"] = "\ud800"  # what the JSON escape of a lone surrogate decodes to
    with pytest.raises(MalformedDocument, match="no canonical form"):
        FleetKeyArtifact.from_json(raw)
    with pytest.raises(MalformedDocument, match="no canonical form"):
        FleetKeyArtifact.parse(json.dumps(raw))


def test_epochs_go_up_by_exactly_one() -> None:
    check_next_epoch(None, sample_artifact(epoch=7))
    check_next_epoch(1, sample_artifact(epoch=2))
    with pytest.raises(StaleEpoch):
        check_next_epoch(2, sample_artifact(epoch=2))
    with pytest.raises(StaleEpoch):
        check_next_epoch(3, sample_artifact(epoch=2))
    with pytest.raises(EpochGap):
        check_next_epoch(1, sample_artifact(epoch=3))
