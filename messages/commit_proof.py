"""Commit proofs: the signed acceptances of a quorum, checkable by anyone who knows the members.

A proof names a record, the ballot and the digest of the committed value, and carries the
``Accepted`` envelopes exactly as the members signed them. Each vote names the configuration
epoch of its round; a proof holds only under that configuration, so acceptances that were no
quorum when they were cast never become one under a later configuration with smaller quorums.
Whoever acts on a committed value (the guess evaluator before it spends an attempt) checks the
proof against the configuration it trusts, so a host cannot make up a commit that a quorum
never made.
"""

from __future__ import annotations

from dataclasses import dataclass

from messages.envelope import Envelope
from messages.errors import MessageError
from messages.membership import Membership
from messages.quorum import (
    MEMBER_ROLE,
    Accepted,
    BadProof,
    Ballot,
    Justification,
    ProofOfAnotherConfiguration,
    value_digest,
)
from messages.schema import REGISTRY
from messages.signing import verify_envelope


@dataclass(frozen=True)
class CommitProof:
    """Evidence that a quorum accepted the value with ``digest`` for ``key`` under ``ballot``."""

    fleet: str
    key: str
    ballot: Ballot
    digest: bytes
    votes: tuple[bytes, ...]


def justify(
    pred: bytes | None, proof: CommitProof | None, witness: bytes | None = None
) -> Justification:
    """The justification of a vetted value made from ``pred`` (``proof``: that ``pred``
    committed; None for the empty record) and ``witness`` (None: the value is ``pred``)."""
    return Justification(
        pred=pred,
        ballot=0 if proof is None else proof.ballot.n,
        by="" if proof is None else proof.ballot.by,
        votes=() if proof is None else proof.votes,
        witness=witness,
    )


def pred_proof(fleet: str, key: str, just: Justification) -> CommitProof:
    """The proof ``just`` carries that its predecessor committed (not verified here)."""
    return CommitProof(
        fleet, key, Ballot(just.ballot, just.by), value_digest(just.pred), just.votes
    )


def verify_proof(proof: CommitProof, membership: Membership, value: bytes | None) -> None:
    """Raise :class:`BadProof` unless ``proof`` shows an accept quorum of ``membership`` signing
    ``value`` for the proof's record and ballot."""
    if proof.fleet != membership.fleet:
        raise BadProof("proof is for another fleet", fleet=proof.fleet)
    if value_digest(value) != proof.digest:
        raise BadProof("the value is not the one the quorum accepted", key=proof.key)
    trust = membership.trust()
    signers = set()
    for data in proof.votes:
        try:
            env = Envelope.decode(data)
            vote = REGISTRY.parse(env)
        except MessageError as exc:
            raise BadProof(f"a vote does not parse: {exc}", key=proof.key) from exc
        # The epoch is read before the signature is checked: a vote of another configuration
        # may be signed by a key this one no longer trusts, and the caller should learn that
        # the proof is outdated (and can be renewed), not that it is forged.
        epoch = getattr(vote, "epoch", None)
        if epoch != membership.epoch:
            raise ProofOfAnotherConfiguration(
                "a vote was cast under another configuration",
                member=env.source,
                epoch=epoch,
                current=membership.epoch,
            )
        try:
            verify_envelope(env, trust, MEMBER_ROLE)
        except MessageError as exc:
            raise BadProof(f"a vote does not verify: {exc}", key=proof.key) from exc
        if env.source not in membership.accept_set:
            raise BadProof("a vote is from outside the accept set", member=env.source)
        if not _grants(vote, proof):
            raise BadProof("a vote does not accept this value", member=env.source)
        signers.add(env.source)
    if len(signers) < membership.accept_quorum:
        raise BadProof(
            "fewer acceptances than the quorum",
            key=proof.key,
            signers=len(signers),
            quorum=membership.accept_quorum,
        )


def _grants(vote: object, proof: CommitProof) -> bool:
    if not isinstance(vote, Accepted) or vote.fleet != proof.fleet:
        return False
    if vote.proposer != proof.ballot.by:
        return False
    refused = vote.refused()
    for i, (key, n, digest) in enumerate(zip(vote.keys, vote.ballots, vote.digests, strict=True)):
        if key == proof.key and n == proof.ballot.n:
            return i not in refused and digest == proof.digest
    return False
