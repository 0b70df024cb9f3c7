"""The orchestrator's event log as a protocol (DESIGN 4): what auditors replay.

The log holds two kinds of entries, each a signed envelope:

- a :class:`Decision` records one input the orchestrator decided on (an operator command, a
  node's announcement or attestation answer, the passing of time, a lease takeover), the
  context it decided in (time, random seed, lease epoch and holder) and how many events the
  decision emitted; those events follow it in the same atomic append;
- the events themselves: :class:`LeaseTaken`, :class:`PolicySet`, :class:`NodeAnnounced`,
  :class:`ChallengeIssued`, :class:`NodeEnrolled`, :class:`NodeRejected`.

Replaying a log re-runs every recorded decision and checks that it emits the recorded events.
Every entry carries ``prev``, the SHA-256 of the previous entry's wire bytes, as an envelope
extension field: one verified signature then vouches for every entry before it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from messages import subjects
from messages.schema import Body, message, upcaster

# Reasons of a NodeRejected that the orchestrator's bookkeeping adds to the attestation
# verifier's own (messages.attestation.REASONS).
NONCE_REUSED = "nonce_reused"
NONCE_EXPIRED = "nonce_expired"
NO_ANSWER = "no_answer"
REFUSED = "refused"
NODE_MISMATCH = "node_mismatch"

ORCHESTRATOR_FLOW = "orchestrator"


def _orchestrator_subject(name: str) -> str:
    # DESIGN 6's flows name no orchestrator flow; its own entries live beside the others
    # under fleet.evt.> so that one stream holds the whole, totally ordered log.
    return f"fleet.evt.{ORCHESTRATOR_FLOW}.{subjects.token(name)}"


class LogEntry(Body):
    """An entry of the orchestrator's log; ``subject()`` is where it is appended."""

    def subject(self) -> str:
        raise NotImplementedError

    def corr(self) -> str | None:
        """The flow this entry belongs to (``corr`` of its envelope), if any."""
        return None


# --- inputs: what a decision decides on (recorded inside a Decision) ---------------------


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


# --- the decision record ---------------------------------------------------------------


@message
@dataclass(frozen=True)
class Decision(LogEntry):
    """One decision: its input (type, version, JSON body), its context, its event count."""

    TYPE = "orchestrator.decision"
    input_type: str
    input_v: int
    input: dict[str, Any]
    now_ms: int
    seed: bytes
    epoch: int
    holder: str
    emits: int

    def subject(self) -> str:
        return _orchestrator_subject("decision")


# --- events ----------------------------------------------------------------------------


@message
@dataclass(frozen=True)
class LeaseTaken(LogEntry):
    """``holder`` became the active orchestrator under lease ``epoch``."""

    TYPE = "orchestrator.lease_taken"
    holder: str
    epoch: int

    def subject(self) -> str:
        return _orchestrator_subject("lease")


@message
@dataclass(frozen=True)
class PolicySet(LogEntry):
    """The enrollment policy in force from here on."""

    TYPE = "orchestrator.policy_set"
    vendor_roots: tuple[bytes, ...]
    allowed_measurements: tuple[str, ...]
    nonce_ttl_ms: int
    auto_enroll: bool

    def subject(self) -> str:
        return _orchestrator_subject("policy")


@message
@dataclass(frozen=True)
class NodeAnnounced(LogEntry):
    """A node made itself known: where it runs (failure domain) and what it runs."""

    TYPE = "node.announced"
    VERSION = 2
    node_id: str
    domain: str
    hsm: str
    measurement: str

    def subject(self) -> str:
        return subjects.event("node", self.node_id)


@upcaster(NodeAnnounced.TYPE, 1)
def _announced_v1_to_v2(body: dict[str, Any]) -> dict[str, Any]:
    """v1 called the failure domain ``zone`` and did not record the HSM kind or software."""
    out = dict(body)
    out["domain"] = out.pop("zone")
    out.setdefault("hsm", "unknown")
    out.setdefault("measurement", "")
    return out


class _EnrollmentEvent(LogEntry):
    """An event of one enrollment flow, appended under and correlated by its id."""

    enrollment_id: str

    def subject(self) -> str:
        return subjects.event("enrollment", self.enrollment_id)

    def corr(self) -> str | None:
        return self.enrollment_id


@message
@dataclass(frozen=True)
class ChallengeIssued(_EnrollmentEvent):
    """A fresh nonce was issued to ``node_id``; it may be answered once, until ``expires_ms``."""

    TYPE = "enrollment.challenge_issued"
    enrollment_id: str
    node_id: str
    nonce: bytes
    expires_ms: int
    requested_by: str


@message
@dataclass(frozen=True)
class NodeEnrolled(_EnrollmentEvent):
    """The node's attestation verified: these are its keys, software and device."""

    TYPE = "enrollment.node_enrolled"
    enrollment_id: str
    node_id: str
    domain: str
    identity_alg: str
    identity_key: bytes
    transport_alg: str
    transport_key: bytes
    measurement: str
    device_fingerprint: str
    attestation_digest: str


@message
@dataclass(frozen=True)
class NodeRejected(_EnrollmentEvent):
    """The enrollment failed; ``reason`` is a stable code (verifier's or orchestrator's)."""

    TYPE = "enrollment.node_rejected"
    enrollment_id: str
    node_id: str
    reason: str


EVENT_TYPES: tuple[type[LogEntry], ...] = (
    LeaseTaken,
    PolicySet,
    NodeAnnounced,
    ChallengeIssued,
    NodeEnrolled,
    NodeRejected,
)
