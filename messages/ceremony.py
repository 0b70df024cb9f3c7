"""The rollout's commands to nodes (subjects ``fleet.node.<id>.cmd.<verb>``).

- ``ceremony``: :class:`GenerateFleetKeys` asks one attested member to make the fleet keys inside
  its HSM and wrap them to the other members' attested transport keys; it answers with
  :class:`FleetKeysOffer`. :class:`ImportFleetKeys` gives a member its wrapped keys; it answers
  with a :class:`KeyReceipt`.
- ``join``: :class:`JoinFleet` makes a member of the fleet's replication group (CASPaxos) with
  the configuration it carries; with ``probe`` set the member also commits a test
  record through a quorum and answers with the signed acceptances (:class:`Joined`).
- ``retire``: :class:`RetireFleet` destroys the keys one rollout made on a member and leaves its
  replication group; the answer :class:`Retired` says what was destroyed.
  :class:`DestroyFleetKeys` destroys one key epoch's keys only (the old epoch after a rotation's
  overlap window), or, with ``leave``, also leaves the fleet's group whichever rollout formed it
  (a fleet's retirement); :class:`DrainFleet` stops new registrations on a retiring fleet. Both
  are answered like ``retire`` (:class:`Retired`; :class:`Drained`).

Every answer is an envelope signed by the member's attested identity key; the orchestrator
counts an answer only if it verifies under the key the member's attestation established.
Answers are idempotent: the same command gets the same facts again (a lost answer is asked for
again after a crash), never a second set of keys.

Receipts name the fleet and its key epoch, not the rollout: their digests are stage-bundle
evidence, and the bundles of a rollout must come out the same bytes whichever orchestrator
process carried the rollout out.
"""

# No ``from __future__ import annotations``: body field types stay evaluated (see messages.schema).
from dataclasses import dataclass

from messages.attestation import Attestation
from messages.canonical import b64, canonical
from messages.documents import hex_digest
from messages.quorum import Config
from messages.schema import Body, message
from messages.vault_policy import VaultPolicy

PROBE_DOMAIN = b"hsmfleet/v1/rollout-probe\n"


def key_label(fleet: str, rollout: str, role: str) -> str:
    """The HSM label of one fleet key made or imported by one rollout."""
    return f"fleet:{fleet}:{rollout}:{role}"


def rollout_labels(fleet: str, rollout: str) -> str:
    """The prefix every label of ``rollout``'s keys starts with."""
    return f"fleet:{fleet}:{rollout}:"


def wrap_context(
    fleet: str, epoch: int, role: str, alg: str, public_key: bytes, node: str
) -> bytes:
    """The context one fleet key is wrapped for (the HPKE ``info`` of its wrapping, see
    ``node/hsm/keys.py``): its fleet, key epoch, role, algorithm and public key, and the member
    it is for. A wrapped key opens only for the context it was sealed for, so it cannot be
    passed off as another fleet's, epoch's or role's key, nor be imported by another member."""
    return canonical(
        {
            "fleet": fleet,
            "epoch": epoch,
            "role": role,
            "alg": alg,
            "public_key": b64(public_key),
            "node": node,
        }
    )


def probe_key(epoch: int) -> str:
    """The record a new fleet's test write goes to."""
    return f"rollout-probe-{epoch}"


def probe_value(fleet: str, epoch: int) -> bytes:
    """What the test write commits: the same for every attempt, so any member may retry it."""
    return PROBE_DOMAIN + f"{fleet}\n{epoch}".encode()


@dataclass(frozen=True)
class KeyRole(Body):
    """A fleet key to make: its role (``vault``, ``signing`` ...) and algorithm."""

    role: str
    alg: str


@dataclass(frozen=True)
class Recipient(Body):
    """A member the fleet keys are wrapped to: its attested ECDH P-256 transport key, and the
    attestation that vouches for it, which an HSM behind a device boundary checks before it
    wraps (``None``: the sender's HSM is trusted to wrap to the key as given)."""

    node: str
    transport_alg: str
    transport_key: bytes
    attestation: Attestation | None = None


@dataclass(frozen=True)
class PublicFleetKey(Body):
    """The public half of a fleet key."""

    role: str
    alg: str
    public_key: bytes


@dataclass(frozen=True)
class WrappedFleetKey(Body):
    """One fleet key sealed to one member's transport key for :func:`wrap_context` (HPKE base
    mode, DHKEM(P-256, HKDF-SHA256), HKDF-SHA256, AES-128-GCM: ``ephemeral`` is the
    encapsulated key, see ``node/hsm/keys.py``)."""

    node: str
    role: str
    alg: str
    public_key: bytes
    ephemeral: bytes
    ciphertext: bytes


@message
@dataclass(frozen=True)
class KeyReceipt(Body):
    """A member's statement that its HSM holds these fleet keys (generated or imported)."""

    TYPE = "node.ceremony.receipt"
    fleet: str
    epoch: int
    node: str
    keys: tuple[PublicFleetKey, ...]

    @property
    def digest(self) -> str:
        """SHA-256 of the receipt's canonical bytes: the stage bundle's evidence."""
        return hex_digest(canonical(self.to_json()))


@message
@dataclass(frozen=True)
class GenerateFleetKeys(Body):
    """Make the fleet keys (or reuse the ones this rollout made) and wrap them to each
    recipient; a member that already imported them may be asked to wrap them again."""

    TYPE = "node.ceremony.generate"
    fleet: str
    epoch: int
    rollout: str
    roles: tuple[KeyRole, ...]
    recipients: tuple[Recipient, ...]
    vault: VaultPolicy | None = None
    """The vault policy these keys serve (a fleet with vault keys): kept beside the keys by
    every member, and published in the fleet's artifact."""


@message
@dataclass(frozen=True)
class FleetKeysOffer(Body):
    """The generator's answer: its own receipt and the keys wrapped to every recipient."""

    TYPE = "node.ceremony.offer"
    receipt: KeyReceipt
    wrapped: tuple[WrappedFleetKey, ...]


@message
@dataclass(frozen=True)
class ImportFleetKeys(Body):
    """Unwrap these keys (all addressed to the receiving member) into the HSM."""

    TYPE = "node.ceremony.import"
    fleet: str
    epoch: int
    rollout: str
    keys: tuple[WrappedFleetKey, ...]
    vault: VaultPolicy | None = None
    """As :attr:`GenerateFleetKeys.vault`."""


@dataclass(frozen=True)
class ProbeProof(Body):
    """A committed test write: record, ballot and value digest, and the members' signed
    ``quorum.accepted`` votes exactly as they were sent."""

    key: str
    ballot: int
    by: str
    digest: bytes
    votes: tuple[bytes, ...]


@message
@dataclass(frozen=True)
class JoinFleet(Body):
    """Become a member of ``fleet``'s replication group under ``config``; with ``probe``,
    commit :func:`probe_value` to :func:`probe_key` through a quorum as well."""

    TYPE = "node.fleet.join"
    fleet: str
    epoch: int
    rollout: str
    config: Config
    probe: bool
    group: str | None = None
    """The rollout whose replication group (and its stored records) this join continues: a
    rotation or a member replacement keeps the group a fleet's first rollout formed. ``None``:
    the group is ``rollout``'s own."""


@message
@dataclass(frozen=True)
class Joined(Body):
    """The member serves the replication group; ``proof`` answers a probe."""

    TYPE = "node.fleet.joined"
    fleet: str
    epoch: int
    node: str
    proof: ProbeProof | None


@message
@dataclass(frozen=True)
class RetireFleet(Body):
    """Destroy every key ``rollout`` made for ``fleet`` and leave its replication group."""

    TYPE = "node.fleet.retire"
    fleet: str
    epoch: int
    rollout: str


@message
@dataclass(frozen=True)
class Retired(Body):
    """What the member destroyed (roles); empty when it held nothing of the rollout."""

    TYPE = "node.fleet.retired"
    fleet: str
    epoch: int
    node: str
    destroyed: tuple[str, ...]

    @property
    def digest(self) -> str:
        """SHA-256 of the answer's canonical bytes: the abort bundle's evidence."""
        return hex_digest(canonical(self.to_json()))


@message
@dataclass(frozen=True)
class DestroyFleetKeys(Body):
    """Destroy the keys of key epoch ``epoch`` that ``rollout`` made for ``fleet``; with
    ``leave``, also leave the fleet's replication group (the fleet is retired)."""

    TYPE = "node.fleet.destroy_keys"
    fleet: str
    epoch: int
    rollout: str
    leave: bool


@message
@dataclass(frozen=True)
class DrainFleet(Body):
    """The fleet is retiring: take no new registrations on it (recoveries go on)."""

    TYPE = "node.fleet.drain"
    fleet: str
    epoch: int


@message
@dataclass(frozen=True)
class Drained(Body):
    """The member takes no new registrations on ``fleet``."""

    TYPE = "node.fleet.drained"
    fleet: str
    epoch: int
    node: str

    @property
    def digest(self) -> str:
        return hex_digest(canonical(self.to_json()))
