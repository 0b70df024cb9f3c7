"""Judging what members and cosigners answer a rollout (pure).

A member's answer counts only if it is an envelope signed by the identity key the member's
attestation established, of the type its open step expects, naming the rollout's fleet, epoch
and the member itself, with keys that are the rollout's: then it becomes the step's event
(keys generated, imported, joined, quorum proved, keys destroyed). Anything else fails the
member's step with a reason (or the probe, which is not the member's fault alone). An answer
to a step that is no longer open changes nothing.

Cosigners' answers are checked as a client checks them (:func:`orchestrator.core.evidence.vouchers`)
before the log records them as what was signed.
"""

from __future__ import annotations

from typing import Any, TypeVar

from messages.artifact import FleetKey, FleetKeyArtifact
from messages.bundle import DESTROY, DRAIN, StageBundle
from messages.ceremony import (
    Drained,
    FleetKeysOffer,
    Joined,
    KeyReceipt,
    PublicFleetKey,
    Retired,
    probe_key,
    probe_value,
)
from messages.commit_proof import CommitProof, verify_proof
from messages.envelope import Envelope
from messages.errors import HsmfleetError, MessageError
from messages.events import (
    FleetKeysGenerated,
    LegacyKeysDestroyed,
    LogEntry,
    MemberDrained,
    MemberFailed,
    MemberJoined,
    MemberKeysDestroyed,
    MemberKeysImported,
    MemberReconfigured,
    ProbeFailed,
    QuorumProved,
    StageBundleLogged,
    ValidationBundleIssued,
)
from messages.inputs import ArtifactPublished, BundleCosigned, CosignerAnswer, MemberAnswer
from messages.membership import Membership
from messages.quorum import Ballot
from messages.rejected import Rejected
from messages.schema import REGISTRY, Body
from messages.signing import TrustStore, verify_envelope
from messages.verification import MalformedBundle
from messages.verify import parse_bundle
from orchestrator.core import evidence
from orchestrator.core.context import Context
from orchestrator.core.errors import (
    CommandRefused,
    RolloutConflict,
    UnknownNode,
    UnknownRollout,
)
from orchestrator.core.rollout.decisions import GENERATE, IMPORT, JOIN, NODE_ROLE, PROBE, recipients
from orchestrator.core.rollout.state import Rollout, RolloutMember
from orchestrator.core.state import State

# --- members' answers --------------------------------------------------------------------------


class _Refused(Exception):
    """The answer does not count; ``reason`` goes into the failure event."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def answer(state: State, c: MemberAnswer, ctx: Context) -> list[LogEntry]:
    """Judge a member's answer to the command it has open; a late or repeated answer (the
    command is no longer open) changes nothing."""
    rollout = state.book.rollouts.get(c.rollout_id)
    if rollout is None:
        raise UnknownRollout("no rollout of this id", rollout_id=c.rollout_id)
    member = rollout.members.get(c.node_id)
    if member is None:
        raise UnknownNode("the node is not a member of this rollout", node_id=c.node_id)
    if member.step != c.step:
        return []
    _bound(c)
    rid, fleet = rollout.rollout_id, rollout.fleet
    try:
        body = _open_answer(state, c)
        return [_judge(state, rollout, member, c.step, body)]
    except _Refused as refusal:
        if c.step == PROBE:
            return [ProbeFailed(rid, fleet, c.node_id, reason=refusal.reason)]
        return [MemberFailed(rid, fleet, c.node_id, step=c.step, reason=refusal.reason)]


class AnswerNotForCommand(CommandRefused):
    """A member's reply does not name the command it was sent for (its ``causation``): an
    answer to an earlier attempt, or replayed. Refused without a state change, so the member's
    answer to the command itself still counts."""

    kind = "answer_not_for_command"


def _bound(c: MemberAnswer) -> None:
    """Refuse a reply whose ``causation`` is not the command it is recorded as answering (a
    garbled reply is judged as such by :func:`_open_answer`)."""
    if c.command_id is None:
        return  # recorded before answers were bound to their command
    try:
        causation = Envelope.decode(c.reply).causation
    except MessageError:
        return
    if causation != c.command_id:
        raise AnswerNotForCommand(
            "the reply answers another command", node_id=c.node_id, step=c.step
        )


def _open_answer(state: State, c: MemberAnswer) -> Body:
    """The answer's body, once it is known to come from the member's attested identity key."""
    try:
        env = Envelope.decode(c.reply)
    except MessageError:
        raise _Refused("garbled") from None
    if env.type == Rejected.TYPE:
        kind = env.body.get("kind") if isinstance(env.body, dict) else None
        raise _Refused(f"refused: {kind}")
    identity = state.nodes[c.node_id].identity
    if identity is None:
        raise _Refused("not attested")
    key = identity.trusted(c.node_id)
    try:
        verify_envelope(env, TrustStore([key]), NODE_ROLE)
        return REGISTRY.parse(env)
    except MessageError:
        raise _Refused("bad_signature") from None
    except HsmfleetError:
        raise _Refused("garbled") from None


def _expect(condition: bool, reason: str = "bad_answer") -> None:
    if not condition:
        raise _Refused(reason)


A = TypeVar("A", bound=Body)


def _answer(body: Body, kind: type[A]) -> A:
    """``body`` as the answer a step expects, or refused as a bad answer."""
    if not isinstance(body, kind):
        raise _Refused("bad_answer")
    return body


def _public(keys: tuple[FleetKey, ...]) -> tuple[PublicFleetKey, ...]:
    return tuple(PublicFleetKey(k.role, k.alg, k.public_key) for k in keys)


def _receipt_ok(receipt: Any, rollout: Rollout, node_id: str) -> bool:
    return (
        isinstance(receipt, KeyReceipt)
        and (receipt.fleet, receipt.epoch, receipt.node) == (rollout.fleet, rollout.epoch, node_id)
        and [(k.role, k.alg) for k in receipt.keys] == [(r.role, r.alg) for r in rollout.plan.keys]
    )


def _judge(
    state: State, rollout: Rollout, member: RolloutMember, step: str, body: Body
) -> LogEntry:
    rid, fleet, node = rollout.rollout_id, rollout.fleet, member.node_id
    if step == GENERATE:
        offer = _answer(body, FleetKeysOffer)
        _expect(_receipt_ok(offer.receipt, rollout, node))
        receipt = offer.receipt
        keys = tuple(FleetKey(k.role, k.alg, k.public_key, None) for k in receipt.keys)
        holders = [m for m in rollout.active_members() if m.holds_keys]
        _expect(not holders or rollout.keys == keys, "keys_changed")
        expected = {(r.node, k.role) for r in recipients(state, rollout, node) for k in keys}
        wrapped = tuple(w for w in offer.wrapped if (w.node, w.role) in expected)
        _expect({(w.node, w.role) for w in wrapped} == expected and len(wrapped) == len(expected))
        public = {k.role: (k.alg, k.public_key) for k in keys}
        _expect(all(public[w.role] == (w.alg, w.public_key) for w in wrapped))
        return FleetKeysGenerated(rid, fleet, node, keys, wrapped, receipt.digest)
    if step == IMPORT:
        imported = _answer(body, KeyReceipt)
        _expect(_receipt_ok(imported, rollout, node) and imported.keys == _public(rollout.keys))
        return MemberKeysImported(rid, fleet, node, receipt=imported.digest)
    if step in (JOIN, PROBE):
        joined = _answer(body, Joined)
        _expect((joined.fleet, joined.epoch, joined.node) == (fleet, rollout.epoch, node))
        if step == JOIN and rollout.kind == "replacement":
            config = evidence.membership_step(state, rollout, node)
            return MemberReconfigured(rid, fleet, node, config_epoch=config.epoch)
        if step == JOIN:
            return MemberJoined(rid, fleet, node)
        return _proved(rollout, node, joined)
    if step == DRAIN:
        drained = _answer(body, Drained)
        _expect((drained.fleet, drained.epoch, drained.node) == (fleet, rollout.epoch, node))
        return MemberDrained(rid, fleet, node, receipt=drained.digest)
    if step == DESTROY and rollout.kind == "rotation":
        old = state.book.rollouts[rollout.predecessor or ""]
        retired = _answer(body, Retired)
        _expect((retired.fleet, retired.epoch, retired.node) == (fleet, old.epoch, node))
        return LegacyKeysDestroyed(
            rid, fleet, node, epoch=old.epoch, roles=retired.destroyed, receipt=retired.digest
        )
    retired = _answer(body, Retired)
    _expect((retired.fleet, retired.epoch, retired.node) == (fleet, rollout.epoch, node))
    return MemberKeysDestroyed(rid, fleet, node, roles=retired.destroyed, receipt=retired.digest)


def _proved(rollout: Rollout, node: str, joined: Joined) -> QuorumProved:
    proof, config = joined.proof, rollout.config
    _expect(proof is not None and config is not None, "no_proof")
    assert proof is not None and config is not None
    _expect(proof.key == probe_key(rollout.epoch), "wrong_record")
    commit = CommitProof(
        rollout.fleet, proof.key, Ballot(proof.ballot, proof.by), proof.digest, proof.votes
    )
    try:
        verify_proof(
            commit, Membership.from_config(config), probe_value(rollout.fleet, rollout.epoch)
        )
    except HsmfleetError as exc:
        raise _Refused(f"bad_proof: {exc.kind}") from None
    digest = evidence.quorum_proof(config, rollout.epoch)
    return QuorumProved(rollout.rollout_id, rollout.fleet, node, proof=digest, votes=proof.votes)


# --- cosigners' outcomes ------------------------------------------------------------------------


def cosigned(state: State, c: BundleCosigned, ctx: Context) -> list[LogEntry]:
    """Record what the cosigners signed for the next unlogged bundle of the fleet's chain."""
    chain = state.book.fleets.get(c.fleet)
    if chain is None or not 0 < c.serial <= len(chain.bundles):
        raise UnknownRollout("no such stage bundle", fleet=c.fleet, serial=c.serial)
    if c.serial <= chain.logged:
        return []
    if c.serial != chain.logged + 1:
        raise RolloutConflict("bundles are logged in chain order", next=chain.logged + 1)
    bundle = chain.bundles[c.serial - 1]
    if bundle.digest != c.digest:
        raise RolloutConflict("the digest is not the bundle's", serial=c.serial)
    issuer = state.book.rollouts[chain.issued_by[c.serial - 1]]
    _enough(state, issuer, bundle, c.answers)
    return [StageBundleLogged(issuer.rollout_id, c.fleet, c.serial, c.digest, c.answers)]


def published(state: State, c: ArtifactPublished, ctx: Context) -> list[LogEntry]:
    """Record the validation bundle of the artifact a rollout of the fleet prepared."""
    rollout = next(
        (
            r
            for r in state.book.rollouts.values()
            if r.fleet == c.fleet and r.artifact is not None and r.artifact.epoch == c.epoch
        ),
        None,
    )
    if rollout is None or rollout.artifact is None:
        raise UnknownRollout("no artifact of this epoch was prepared", fleet=c.fleet)
    if rollout.validation is not None:
        return []
    try:
        bundle = parse_bundle(c.validation)
    except MalformedBundle as exc:
        raise CommandRefused(f"not a validation bundle: {exc}") from None
    if bundle.artifact.digest != rollout.artifact.digest or bundle.digest != bundle.artifact.digest:
        raise CommandRefused("the validation bundle is for another artifact", fleet=c.fleet)
    answers = [
        CosignerAnswer(p.log, p.statement.to_json(), p.signature, p.inclusion, p.checkpoint)
        for p in bundle.proofs
    ]
    _enough(state, rollout, bundle.artifact, answers)
    return [
        ValidationBundleIssued(
            rollout.rollout_id, c.fleet, c.epoch, bundle.digest, bundle=c.validation
        )
    ]


def _enough(
    state: State, rollout: Rollout, document: StageBundle | FleetKeyArtifact, answers: Any
) -> None:
    policy = rollout.plan.cosigners
    pins = evidence.pins_of(rollout)
    vouched = evidence.vouchers(document, answers, pins, state.signer_keys)
    if len(vouched) < policy.threshold:
        raise evidence.BadCosignerAnswers(
            "too few pinned cosigners vouch", vouchers=sorted(vouched), threshold=policy.threshold
        )
