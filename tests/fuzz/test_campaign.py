"""The fuzzing campaign against every receiver (CI mode), run once per module; each test checks
one oracle on its report: every message refused and counted, no crash, no state change, every
receiver still answering afterwards.

``HSMFLEET_FUZZ_MESSAGES`` (default 100,000) and ``HSMFLEET_FUZZ_SEED`` (default a fixed seed,
so that CI runs are reproducible) change the run; the nightly job sets a million messages and a
new seed, or runs ``python -m ops.fuzz --messages 1000000 --seed N``. Every failure message
carries the run's figures and the command that reproduces it.
"""

from __future__ import annotations

import os
from collections import Counter

import pytest

from messages.vault import OPERATIONS
from ops.fuzz.run import Report, fuzz
from ops.fuzz.targets import FOREIGN_STATUS

MESSAGES = int(os.environ.get("HSMFLEET_FUZZ_MESSAGES", "100000"))
SEED = int(os.environ.get("HSMFLEET_FUZZ_SEED", "20261127"))


@pytest.fixture(scope="module")
async def report(tmp_path_factory) -> Report:
    done = await fuzz(tmp_path_factory.mktemp("fuzz") / "world", MESSAGES, SEED)
    print(done.summary())
    return done


def failures_of(report: Report, prefix: str) -> list[str]:
    return [f for f in report.failures if f.startswith(prefix)]


def test_every_subscriber_got_its_share(report):
    assert report.sent >= MESSAGES, report.summary()
    names = {f.name for f in report.bus}
    assert {"orchestrator.status", "quorum.prepare", "quorum.accept", "quorum.snapshot"} <= names
    assert {"quorum.config", "cosign.sign"} <= names
    assert {f"vault.{op}" for op in OPERATIONS} <= names
    assert {f"node.cmd.{verb}" for verb in ("attest", "ceremony", "join", "retire")} <= names
    assert not report.unserved, report.summary()
    assert all(f.sent >= MESSAGES // (len(report.bus) + 2) for f in report.bus)
    kinds = sum((f.expected_kinds for f in report.bus), Counter())
    # the campaign reached past the signature check: schema, freshness, replays and handlers
    expected = {"malformed", "bad_signature", "unknown_signer", "schema", "replayed", "handler"}
    assert expected <= set(kinds), kinds
    assert kinds["stale"] + kinds["future"] > 0


def test_every_bus_message_is_refused_and_counted(report):
    checked = [f for f in report.bus if f.name != FOREIGN_STATUS]
    assert not [x for f in checked for x in f.failures], report.summary()
    assert all(f.counted_rejects == f.expected_rejects for f in checked)


def test_the_status_consumer_counts_messages_of_other_types(report):
    (foreign,) = [f for f in report.bus if f.name == FOREIGN_STATUS]
    assert not foreign.failures, report.summary()


def test_no_crash_no_state_change_and_everyone_still_answers(report):
    """State: every receiver's (the members' vault records among them), and per member the
    logins its HSM evaluated and the vault operations it ran: none, every vault message of the
    campaign being refused before it runs."""
    assert not report.crashes, report.summary()
    assert not report.state_changes, report.summary()
    assert not report.dead, report.summary()


def test_orchestrator_api_answers_below_500_and_counts_every_refusal(report):
    assert not failures_of(report, "http.orchestrator"), report.summary()
    (api,) = [h for h in report.http if h.name == "http.orchestrator"]
    assert api.refused > 0 and api.counted_rejects == api.refused


def test_cosigner_http_answers_below_500(report):
    (http,) = [h for h in report.http if h.name == "http.cosigner"]
    assert not [f for f in http.failures if "counted" not in f], report.summary()
    assert not [s for s in http.by_status if s >= 500]


def test_cosigner_http_counts_every_refusal(report):
    (http,) = [h for h in report.http if h.name == "http.cosigner"]
    assert http.counted_rejects == http.refused, report.summary()


def test_node_http_answers_below_500_and_counts_every_refusal(report):
    assert not failures_of(report, "http.node"), report.summary()
    (node,) = [h for h in report.http if h.name == "http.node"]
    assert node.sent > 0 and node.refused > 0 and node.counted_rejects == node.refused
