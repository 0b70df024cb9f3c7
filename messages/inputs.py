"""What the orchestrator's pure core decides on: operator commands, the answers of nodes,
members and cosigners, and the clock's tick. Each decision records its input inside a
:class:`~messages.events.Decision`, so a replay decides on exactly the same input."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from messages.plan import RolloutPlan
from messages.schema import Body, message, upcaster


@message
@dataclass(frozen=True)
class TakeLease(Body):
    """The lease holder named in the decision's context starts acting as the orchestrator."""

    TYPE = "orchestrator.take_lease"


@message
@dataclass(frozen=True)
class SetPolicy(Body):
    """The enrollment policy from the orchestrator's configuration.

    ``vendor_roots`` are DER certificates; ``nonce_ttl_ms`` is how long a challenge stays
    answerable; ``auto_enroll`` challenges every node that announces itself.
    """

    TYPE = "orchestrator.set_policy"
    vendor_roots: tuple[bytes, ...]
    allowed_measurements: tuple[str, ...]
    nonce_ttl_ms: int
    auto_enroll: bool


@message
@dataclass(frozen=True)
class EnrollNode(Body):
    """Operator command: challenge ``node_id`` to attest itself."""

    TYPE = "orchestrator.enroll_node"
    node_id: str
    requested_by: str


@message
@dataclass(frozen=True)
class AttestationAnswer(Body):
    """A node's reply to the challenge ``enrollment_id``, as the raw bytes that arrived."""

    TYPE = "orchestrator.attestation_answer"
    enrollment_id: str
    node_id: str
    reply: bytes


@message
@dataclass(frozen=True)
class Tick(Body):
    """Time passed: challenges whose answer is overdue are closed."""

    TYPE = "orchestrator.tick"


@message
@dataclass(frozen=True)
class StartRollout(Body):
    """Operator command: roll out a fleet by ``plan`` (superseding one in progress)."""

    TYPE = "rollout.start"
    plan: RolloutPlan
    requested_by: str


ROLLOUT_ACTIONS = ("pause", "resume", "abort", "retry", "approve")


@message
@dataclass(frozen=True)
class OperateRollout(Body):
    """Operator command on the rollout of ``fleet``: one of :data:`ROLLOUT_ACTIONS`."""

    TYPE = "rollout.operate"
    fleet: str
    action: str
    requested_by: str
    reason: str


@message
@dataclass(frozen=True)
class MemberAnswer(Body):
    """A member's reply to a rollout command (``step``), as the raw bytes that arrived, and the
    id of the command envelope it answers: the reply's ``causation`` must name it (None in
    answers recorded before answers were bound to their command)."""

    TYPE = "rollout.member_answer"
    rollout_id: str
    node_id: str
    step: str
    reply: bytes
    command_id: str | None = None


@dataclass(frozen=True)
class CosignerAnswer(Body):
    """One cosigner log's answer for a document: the log's origin, its statement (JSON) and
    signature, the inclusion proof and the checkpoint it proves against (with witness
    cosignature lines)."""

    cosigner: str
    statement: dict[str, Any]
    signature: bytes
    inclusion: tuple[bytes, ...]
    checkpoint: str


@message
@dataclass(frozen=True)
class BundleCosigned(Body):
    """The cosigners logged stage bundle ``serial`` of ``fleet``: their answers."""

    TYPE = "rollout.bundle_cosigned"
    fleet: str
    serial: int
    digest: str
    answers: tuple[CosignerAnswer, ...]


@message
@dataclass(frozen=True)
class ArtifactPublished(Body):
    """The fleet-key artifact of ``fleet`` was logged, cosigned and countersigned: the
    validation bundle as JSON."""

    TYPE = "rollout.artifact_published"
    fleet: str
    epoch: int
    validation: dict[str, Any]


@message
@dataclass(frozen=True)
class RotateFleet(Body):
    """Operator command: rotate the keys of the active ``fleet`` to a new epoch; its old keys
    stay on the members for ``overlap_s`` seconds after the new epoch is activated (``None``:
    the fleet's scheduled overlap). ``overlap_from_activation`` is false only in commands
    recorded as version 1, whose overlap counted from when the new artifact was prepared."""

    TYPE = "rollout.rotate"
    VERSION = 2
    fleet: str
    requested_by: str
    overlap_s: int | None
    reason: str
    overlap_from_activation: bool = True


@message
@dataclass(frozen=True)
class ScheduleRotation(Body):
    """Operator command: rotate ``fleet``'s keys every ``every_days`` days (0: never), each
    rotation keeping the old keys for ``overlap_s`` seconds after it is activated (from when
    its artifact is prepared in commands recorded as version 1)."""

    TYPE = "rollout.schedule_rotation"
    VERSION = 2
    fleet: str
    every_days: int
    overlap_s: int
    requested_by: str
    overlap_from_activation: bool = True


@upcaster(RotateFleet.TYPE, 1)
@upcaster(ScheduleRotation.TYPE, 1)
def _overlap_from_preparation(body: dict[str, Any]) -> dict[str, Any]:
    """Version 1 counted a rotation's overlap window from when its artifact was prepared: a
    recorded command decides again as it did."""
    return {**body, "overlap_from_activation": False}


@message
@dataclass(frozen=True)
class StartRetirement(Body):
    """Operator command: retire the active ``fleet``. Its members stop taking registrations at
    once and destroy its keys ``drain_s`` seconds later (users re-register on ``successor``
    meanwhile); ``force`` retires a fleet without an active successor."""

    TYPE = "rollout.start_retirement"
    fleet: str
    successor: str | None
    force: bool
    drain_s: int
    requested_by: str
    reason: str


@message
@dataclass(frozen=True)
class RetirementLogged(Body):
    """The fleet's retirement document was logged by its cosigners: the logged notice
    (document and log proofs) as JSON."""

    TYPE = "rollout.retirement_logged"
    fleet: str
    notice: dict[str, Any]


@message
@dataclass(frozen=True)
class ReplaceMember(Body):
    """Operator command: replace ``node_id``, a failed member of the active ``fleet``, by the
    node ``replacement`` (attested afresh before it receives the fleet keys)."""

    TYPE = "rollout.replace_member"
    fleet: str
    node_id: str
    replacement: str
    requested_by: str


@message
@dataclass(frozen=True)
class RecordSignerRotation(Body):
    """A signer-key rotation the cosigners logged: the notice (rotation and log proofs) as
    JSON. A cosigner's rotation makes the core check that cosigner's later answers with its
    new key; the operator's changes nothing the core checks."""

    TYPE = "orchestrator.record_signer_rotation"
    notice: dict[str, Any]
