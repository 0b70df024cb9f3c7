"""The evaluator looks at a guess only for a committed attempt of its own, once."""

import os

import pytest

from messages import Ed25519Signer, Outbox
from messages.ids import make_id
from messages.quorum import Accepted, BadProof, value_digest
from node.quorum.membership import Membership
from node.quorum.proof import CommitProof
from node.quorum.rules import Ballot
from node.vault import record as r
from node.vault.evaluator import EvaluationJournal, EvaluationRefused, GuessEvaluator
from node.vault.keys import VaultKeys


@pytest.fixture
def world(tmp_path):
    signers = {f"m{i}": Ed25519Signer.generate() for i in range(1, 4)}
    membership = Membership.majority("f", signers)
    keys = VaultKeys.generate()
    journal = EvaluationJournal(tmp_path / "evaluations.sqlite3")
    evaluator = GuessEvaluator("m1", keys, lambda: membership, journal)
    outboxes = {m: Outbox(m, s) for m, s in signers.items()}
    return evaluator, keys, outboxes, journal


def attempt(keys, *, evaluator="m1", limit=3, attempts=1):
    sealed = r.seal_registration(keys.storage, "alice", "01A", b"1234", b"secret", os.urandom(12))
    rec = r.registered(None, "alice", "01A", sealed, limit)
    for i in range(attempts):
        rec = r.attempted(rec, evaluator, make_id(1_800_000_000_000 + i, bytes(10)))
    return r.encode(rec)


def proof_for(outboxes, value, signers=("m1", "m2"), key="vault-alice"):
    votes = []
    for m in signers:
        body = Accepted(
            fleet="f",
            epoch=1,
            proposer="m1",
            keys=(key,),
            ballots=(7,),
            digests=(value_digest(value),),
        )
        votes.append(outboxes[m].envelope(body).encode())
    return CommitProof("f", key, Ballot(7, "m1"), value_digest(value), tuple(votes))


def test_a_committed_attempt_is_evaluated_once(world):
    evaluator, keys, outboxes, journal = world
    value = attempt(keys)
    proof = proof_for(outboxes, value)
    assert evaluator.evaluate("alice", value, proof, b"1234") == b"secret"
    with pytest.raises(EvaluationRefused, match="evaluated already"):
        evaluator.evaluate("alice", value, proof, b"0000")
    assert [(e.user, e.seq, e.member) for e in journal.evaluations()] == [("alice", 1, "m1")]
    later = attempt(keys, attempts=2)
    assert evaluator.evaluate("alice", later, proof_for(outboxes, later), b"0000") is None


def test_an_attempt_without_a_quorum_proof_is_not_evaluated(world):
    evaluator, keys, outboxes, journal = world
    value = attempt(keys)
    with pytest.raises(BadProof):
        evaluator.evaluate("alice", value, proof_for(outboxes, value, signers=("m1",)), b"1234")
    with pytest.raises(BadProof):
        evaluator.evaluate("alice", value, proof_for(outboxes, attempt(keys, attempts=2)), b"1")
    with pytest.raises(EvaluationRefused, match="another record"):
        evaluator.evaluate("alice", value, proof_for(outboxes, value, key="vault-bob"), b"1")
    assert journal.evaluations() == []


def test_an_attempt_for_another_evaluator_or_beyond_the_limit_is_refused(world):
    evaluator, keys, outboxes, journal = world
    theirs = attempt(keys, evaluator="m2")
    with pytest.raises(EvaluationRefused, match="another evaluator"):
        evaluator.evaluate("alice", theirs, proof_for(outboxes, theirs), b"1234")
    spent = attempt(keys, limit=1, attempts=2)  # the second attempt destroyed the record
    with pytest.raises(EvaluationRefused, match="beyond"):
        evaluator.evaluate("alice", spent, proof_for(outboxes, spent), b"1234")
    assert journal.evaluations() == []


def test_the_journal_survives_a_restart(world, tmp_path):
    evaluator, keys, outboxes, journal = world
    value = attempt(keys)
    evaluator.evaluate("alice", value, proof_for(outboxes, value), b"0000")
    journal.close()
    reopened = EvaluationJournal(tmp_path / "evaluations.sqlite3")
    again = GuessEvaluator("m1", keys, evaluator.membership, reopened)
    with pytest.raises(EvaluationRefused):
        again.evaluate("alice", value, proof_for(outboxes, value), b"1234")
