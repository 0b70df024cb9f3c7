"""Node identity-key rotation: the node proves a new identity key with its old key
and a fresh attestation.

The wire, on ``fleet.node.<id>.cmd.rotate``:

1. The orchestrator sends :class:`RotateIdentity` with a fresh nonce. The node makes a new
   identity key inside its HSM (keeping the old one) and answers :class:`IdentityRotation`: an
   attestation over the nonce that certifies the new key, and the *old* key's signature over
   :class:`RotationProof` (node id, new key, nonce, attestation digest). The answer's envelope is
   signed by the *new* key, so the sender holds both.
2. Once the rotation is on record, the orchestrator sends :class:`AdoptIdentity`; the node signs
   with the new key from then on (a restart too) and answers :class:`IdentityAdopted`, signed by
   the new key.

Until it adopts, the node keeps signing with the old key, so a rotation the orchestrator refuses
changes nothing on the node. The orchestrator's inputs and events of this flow live here too:
operator command :class:`RotateNodeKey`, the answers as they arrived (:class:`RotationAnswer`,
:class:`AdoptionAnswer`), and the events :class:`NodeKeyChallenged`, :class:`NodeKeyRotated`,
:class:`NodeKeyRotationRefused` and :class:`NodeKeyAdopted`, appended under
``fleet.evt.node.<node id>`` and correlated by the rotation's id.
"""

# No ``from __future__ import annotations``: the bodies' field types stay evaluated (see
# messages.attestation).
from dataclasses import dataclass

from messages import subjects
from messages.attestation import Attestation
from messages.canonical import canonical
from messages.events import LogEntry
from messages.schema import Body, message
from messages.signing import verify_bytes

PROOF_DOMAIN = b"hsmfleet/v1/identity-rotation\n"

# Reasons a rotation is refused (besides the attestation verifier's own, messages.attestation
# .REASONS, and the enrollment bookkeeping's nonce_expired, nonce_reused, refused, no_answer and
# node_mismatch from messages.events).
NOT_ENROLLED = "not_enrolled"
BAD_OLD_KEY_PROOF = "bad_old_key_proof"
KEY_NOT_NEW = "key_not_new"
DEVICE_CHANGED = "device_changed"


@message
@dataclass(frozen=True)
class RotateIdentity(Body):
    """Orchestrator → node: make a new identity key and prove it over ``nonce`` with the key
    ``identity_kid``, the one the orchestrator has on record (a key the node made for an earlier
    rotation and has not adopted yet is adopted first: being on record, it is the node's)."""

    TYPE = "node.rotate_identity"
    nonce: bytes
    expires_ms: int
    identity_kid: str


@dataclass(frozen=True)
class RotationProof(Body):
    """What the old identity key signs: this node moves to this key, over this nonce and
    attestation."""

    node_id: str
    identity_alg: str
    identity_key: bytes
    nonce: bytes
    attestation_digest: str

    def signing_bytes(self) -> bytes:
        """A domain tag and the proof's canonical bytes."""
        return PROOF_DOMAIN + canonical(self.to_json())

    def verify(self, alg: str, public_key: bytes, signature: bytes) -> bool:
        """Whether ``signature`` by the key ``(alg, public_key)`` signs this proof."""
        return verify_bytes(alg, public_key, signature, self.signing_bytes())


@message
@dataclass(frozen=True)
class IdentityRotation(Body):
    """Node → orchestrator: the new key's attestation and the old key's ``proof`` signature
    over :class:`RotationProof`; ``previous_kid`` names the key that made it."""

    TYPE = "node.identity_rotation"
    node_id: str
    attestation: Attestation
    previous_kid: str
    proof: bytes


@message
@dataclass(frozen=True)
class AdoptIdentity(Body):
    """Orchestrator → node: the rotation to this key is on record; sign with it from now on."""

    TYPE = "node.adopt_identity"
    identity_alg: str
    identity_key: bytes


@message
@dataclass(frozen=True)
class IdentityAdopted(Body):
    """Node → orchestrator, signed by the adopted key: it is the node's identity now."""

    TYPE = "node.identity_adopted"
    node_id: str
    identity_kid: str


# --- orchestrator inputs -----------------------------------------------------------------


@message
@dataclass(frozen=True)
class RotateNodeKey(Body):
    """Operator command: have ``node_id`` rotate its identity key."""

    TYPE = "node_key.rotate"
    node_id: str
    requested_by: str


@message
@dataclass(frozen=True)
class RotationAnswer(Body):
    """A node's reply to rotation challenge ``rotation_id``, as the raw bytes that arrived."""

    TYPE = "node_key.rotation_answer"
    rotation_id: str
    node_id: str
    reply: bytes


@message
@dataclass(frozen=True)
class AdoptionAnswer(Body):
    """A node's reply to :class:`AdoptIdentity` for ``rotation_id``, as the raw bytes."""

    TYPE = "node_key.adoption_answer"
    rotation_id: str
    node_id: str
    reply: bytes


# --- events -----------------------------------------------------------------------------


class _NodeKeyEvent(LogEntry):
    """An event of one node's key rotation: appended under the node, correlated by rotation."""

    rotation_id: str
    node_id: str

    def subject(self) -> str:
        return subjects.event("node", self.node_id)

    def corr(self) -> str | None:
        return self.rotation_id


@message
@dataclass(frozen=True)
class NodeKeyChallenged(_NodeKeyEvent):
    """A fresh nonce went to ``node_id`` to rotate its identity key; answerable once, until
    ``expires_ms``."""

    TYPE = "node_key.challenged"
    rotation_id: str
    node_id: str
    nonce: bytes
    expires_ms: int
    requested_by: str


@message
@dataclass(frozen=True)
class NodeKeyRotated(_NodeKeyEvent):
    """The node proved its new identity key: ``version`` is its identity's new version, the
    keys and device are what the fresh attestation established, ``previous_kid`` the key
    replaced."""

    TYPE = "node_key.rotated"
    rotation_id: str
    node_id: str
    version: int
    previous_kid: str
    identity_alg: str
    identity_key: bytes
    transport_alg: str
    transport_key: bytes
    measurement: str
    device_fingerprint: str
    attestation_digest: str


@message
@dataclass(frozen=True)
class NodeKeyRotationRefused(_NodeKeyEvent):
    """The rotation failed; ``reason`` is a stable code. The node's identity is unchanged."""

    TYPE = "node_key.rotation_refused"
    rotation_id: str
    node_id: str
    reason: str


@message
@dataclass(frozen=True)
class NodeKeyAdopted(_NodeKeyEvent):
    """The node answered, signed by its new key, that it signs with that key now."""

    TYPE = "node_key.adopted"
    rotation_id: str
    node_id: str
