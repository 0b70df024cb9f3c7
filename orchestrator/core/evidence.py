"""The documents a rollout produces, built from the state alone (pure, deterministic).

Stage bundles, the fleet-key artifact, the replication configuration and the quorum-proof
document come out of the state the log folds to, so a replay, or another orchestrator process
taking over, builds the same bytes. Evidence names members in id order and carries digests only
of facts that do not depend on which process asked (receipts name fleet and epoch, not the
rollout; the quorum-proof document names what was committed under which configuration, the
signed votes stay in the log).

:func:`vouchers` checks cosigners' answers for a document as a client would, before the log
records them as what was signed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace

from messages.artifact import FleetKey, FleetKeyArtifact, Member, Quorum
from messages.bundle import Evidence, NodeRef, StageBundle
from messages.canonical import canonical
from messages.ceremony import probe_key, probe_value
from messages.cosignature import CosignatureVerifier
from messages.documents import DocumentError, hex_digest
from messages.errors import MessageError
from messages.ids import format_time
from messages.inputs import CosignerAnswer
from messages.log_proofs import check_logged
from messages.membership import Membership, plan_join, plan_leave
from messages.pins import CosignerPin
from messages.quorum import Config, MemberKey, value_digest
from messages.signing import ED25519
from messages.statement import LoggedDocument, Statement
from messages.verification import VerificationError
from messages.verifier_state import KeyInForce
from orchestrator.core.errors import CommandRefused
from orchestrator.core.rollout.state import FleetChain, Rollout
from orchestrator.core.state import State

QUORUM_PROOF_FORMAT = "hsmfleet/quorum-proof/v1"
Walked = Mapping[str, tuple[KeyInForce, ...]]
"""Cosigner name -> its log keys walked by recorded rotations (the state's ``signer_keys``)."""
CONFIG_EPOCH = 1
"""A new fleet's replication group starts at configuration epoch 1."""


class BadCosignerAnswers(CommandRefused):
    """Cosigners' answers do not prove the document logged by enough pinned cosigners."""

    kind = "bad_cosigner_answers"


def stage_bundle(
    chain: FleetChain | None, rollout: Rollout, stage: str, evidence: Evidence
) -> StageBundle:
    """The next bundle of the fleet's chain: ``stage`` done, resting on ``evidence``."""
    bundles = chain.bundles if chain is not None else ()
    return StageBundle(
        fleet=rollout.fleet,
        stage=stage,
        serial=len(bundles) + 1,
        prev=bundles[-1].digest if bundles else None,
        evidence=evidence,
        not_before=format_time(rollout.not_before_ms),
        not_after=format_time(rollout.not_after_ms),
    )


def refs(pairs: Iterable[tuple[str, str | None]]) -> tuple[NodeRef, ...]:
    return tuple(NodeRef(node, digest) for node, digest in sorted(pairs) if digest is not None)


def enroll_evidence(rollout: Rollout) -> Evidence:
    return Evidence.of(
        attestations=refs((m.node_id, m.attestation) for m in rollout.active_members())
    )


def ceremony_evidence(rollout: Rollout) -> Evidence:
    return Evidence.of(receipts=refs((m.node_id, m.receipt) for m in rollout.active_members()))


def abort_evidence(rollout: Rollout) -> Evidence:
    return Evidence.of(receipts=refs((m.node_id, m.destroyed) for m in rollout.in_order()))


def fleet_members(rollout: Rollout) -> list[str]:
    """The members the fleet is made of: active and holding the fleet keys, by id."""
    return sorted(m.node_id for m in rollout.active_members() if m.holds_keys)


def quorum_config(state: State, rollout: Rollout) -> Config:
    """The replication group: every fleet member, its attested identity key as its vote key,
    the plan's threshold for both phases. A rotation keeps its predecessor's group; a
    replacement ends its membership change with the newcomer in and the replaced one out."""
    if rollout.kind == "replacement":
        return membership_steps(state, rollout)[-1]
    if rollout.predecessor is not None:
        kept = state.book.rollouts[rollout.predecessor].config
        assert kept is not None  # an active rollout went through its quorum stage
        return kept
    keys = []
    for node_id in fleet_members(rollout):
        identity = state.nodes[node_id].identity
        assert identity is not None  # members hold keys only after attesting
        keys.append(MemberKey(node_id, identity.identity_alg, identity.identity_key))
    names = tuple(k.member for k in keys)
    threshold = rollout.plan.threshold
    return Config(
        fleet=rollout.fleet,
        epoch=CONFIG_EPOCH,
        members=tuple(keys),
        prepare_set=names,
        accept_set=names,
        prepare_quorum=threshold,
        accept_quorum=threshold,
    )


def membership_steps(state: State, rollout: Rollout) -> tuple[Config, ...]:
    """A replacement's membership change, from its predecessor's configuration: the CASPaxos
    2.3 steps adding the newcomer (attested: its identity key votes), then those removing the
    replaced member."""
    replacement = rollout.replacement
    assert replacement is not None
    before = state.book.rollouts[rollout.predecessor or ""].config
    identity = state.nodes[replacement.newcomer].identity
    assert before is not None and identity is not None
    key = MemberKey(replacement.newcomer, identity.identity_alg, identity.identity_key)
    joining = plan_join(Membership.from_config(before), replacement.newcomer, key)
    leaving = plan_leave(joining[-1].membership, replacement.replaced)
    return tuple(step.membership.to_config() for step in (*joining, *leaving))


def membership_step(state: State, rollout: Rollout, node_id: str) -> Config:
    """The configuration ``node_id`` is to apply next in a replacement's membership change."""
    member = rollout.members[node_id]
    for config in membership_steps(state, rollout):
        if node_id in {k.member for k in config.members} and member.config_epoch < config.epoch:
            return config
    assert rollout.config is not None
    return rollout.config


def quorum_proof(config: Config, epoch: int) -> str:
    """Digest of the quorum-proof document: this value committed to this record under this
    configuration (the signed votes that prove it are in the log)."""
    document = {
        "format": QUORUM_PROOF_FORMAT,
        "fleet": config.fleet,
        "epoch": epoch,
        "config": config.to_json(),
        "record": probe_key(epoch),
        "value": value_digest(probe_value(config.fleet, epoch)).hex(),
    }
    return hex_digest(canonical(document))


def artifact(state: State, rollout: Rollout, now_ms: int) -> FleetKeyArtifact:
    """The fleet-key artifact: the keys, the members with their failure domains, the plan's
    threshold and validity window. A rotation's lists the keys current before it too, each
    with ``legacy_until`` = ``now_ms`` (when the artifact is prepared) + the overlap."""
    members = tuple(Member(m, rollout.members[m].domain) for m in fleet_members(rollout))
    return FleetKeyArtifact(
        fleet=rollout.fleet,
        epoch=rollout.epoch,
        keys=rollout.keys + legacy_keys(state, rollout, now_ms),
        quorum=Quorum(members, rollout.plan.threshold),
        not_before=format_time(rollout.not_before_ms),
        not_after=format_time(rollout.not_after_ms),
        vault=rollout.plan.vault,
    )


def legacy_keys(state: State, rollout: Rollout, now_ms: int) -> tuple[FleetKey, ...]:
    """A rotation's predecessor's current keys, usable until ``now_ms`` + the overlap (none but
    for a rotation)."""
    rotation = rollout.rotation
    if rotation is None:
        return ()
    before = state.book.rollouts[rollout.predecessor or ""].artifact
    assert before is not None  # the predecessor was active
    until = format_time(now_ms + rotation.overlap_ms)
    return tuple(replace(k, legacy_until=until) for k in before.keys if k.legacy_until is None)


def pins_of(rollout: Rollout) -> list[CosignerPin]:
    return [CosignerPin(p.name, p.public_key, p.url) for p in rollout.plan.cosigners.pins]


def pinned_keys(
    pin: CosignerPin, walked: Mapping[str, tuple[KeyInForce, ...]]
) -> tuple[KeyInForce, ...]:
    """``pin``'s log keys from the pinned one on, as recorded rotations walked them (oldest
    first, the pinned one taking over at entry 0); empty when none walked from the pinned key."""
    chain = walked.get(pin.name, ())
    start = next((i for i, k in enumerate(chain) if k.public_key == pin.public_key), None)
    if start is None:
        return ()
    return (replace(chain[start], from_index=0), *chain[start + 1 :])


def vouchers(
    document: LoggedDocument,
    answers: Iterable[CosignerAnswer],
    pins: list[CosignerPin],
    walked: Walked | None = None,
) -> set[str]:
    """The pinned cosigners that vouch for ``document`` through ``answers``: each log whose
    answer verifies (its checkpoint's witness cosignatures must verify too, but make no
    voucher: a verifier's default policy counts only the logs that checked and logged the
    document). A cosigner whose key rotated (``walked``: the state's ``signer_keys``) is
    checked with the key in force at each position of its log. Raises
    :class:`BadCosignerAnswers` for an answer that does not verify."""
    walked = walked or {}
    by_name = {p.name: p for p in pins}
    keys = {p.name: pinned_keys(p, walked) for p in pins}
    witnesses = [
        CosignatureVerifier(p.name, k.public_key)
        for p in pins
        for k in keys[p.name] or (KeyInForce(ED25519, p.public_key, p.version, 0, None),)
    ]
    names: set[str] = set()
    for answer in answers:
        try:
            statement = Statement.from_json(answer.statement)
        except (DocumentError, MessageError) as exc:
            raise BadCosignerAnswers(f"a statement does not decode: {exc}") from None
        pin = by_name.get(statement.log)
        if pin is None:
            raise BadCosignerAnswers("an answer is from a log the plan does not pin")
        try:
            check_logged(
                pin,
                document,
                statement,
                answer.signature,
                answer.inclusion,
                answer.checkpoint,
                witnesses,
                keys[pin.name],
            )
        except VerificationError as exc:
            raise BadCosignerAnswers(f"an answer does not verify: {exc}", log=pin.name) from None
        names.add(pin.name)
    return names
