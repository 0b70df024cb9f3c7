"""The node's part in the fleet-key ceremony: keys made, wrapped, imported and
destroyed inside the HSM, addressed by labels that name fleet, rollout and role.

- :func:`generate` makes each fleet key inside the HSM as wrappable (or finds the one this
  rollout made before: a repeated command gets the same keys, never a second set) and wraps
  every key to each recipient's attested transport key;
- :func:`import_keys` unwraps the keys sent to this node (a key already imported is checked,
  not imported twice);
- :func:`destroy` erases every key of one rollout.

Fleet keys are signing keys, ECDH keys, AES-256-GCM keys or OPAQUE setups, whatever the HSM
can hold. They leave the HSM only wrapped to another member's transport key, by the HSM's own
wrap (:meth:`node.hsm.base.Hsm.wrap`: HPKE to the recipient's transport key, for the context
:func:`messages.ceremony.wrap_context` names: fleet, epoch, role, key and recipient), given the
recipient's attestation, which an HSM behind a device boundary checks. The answers are plain
bodies; the daemon sends them signed by the node's identity key, which is what makes them
receipts.
"""

from __future__ import annotations

from messages.attestation import ECDH_P256
from messages.ceremony import (
    FleetKeysOffer,
    GenerateFleetKeys,
    ImportFleetKeys,
    KeyReceipt,
    PublicFleetKey,
    WrappedFleetKey,
    key_label,
    rollout_labels,
    wrap_context,
)
from messages.errors import HsmfleetError
from node.hsm.base import Hsm, KeyNotFound, PublicKey, WrappedKey
from node.identity import TRANSPORT


class CeremonyRefused(HsmfleetError):
    """The node will not take part as asked: keys for another node, a key that differs from
    the one this rollout already holds, or a recipient without a P-256 transport key."""

    kind = "ceremony_refused"


def _existing(hsm: Hsm, label: str) -> PublicKey | None:
    try:
        return hsm.public_key(label)
    except KeyNotFound:
        return None


def generate(hsm: Hsm, node_id: str, command: GenerateFleetKeys) -> FleetKeysOffer:
    """Make (or find) the rollout's fleet keys and wrap them to every recipient."""
    keys: list[PublicKey] = []
    for role in command.roles:
        label = key_label(command.fleet, command.rollout, role.role)
        key = _existing(hsm, label) or hsm.generate(label, role.alg, wrappable=True)
        if key.alg != role.alg:
            raise CeremonyRefused("the rollout's key has another algorithm", role=role.role)
        keys.append(key)
    wrapped = []
    for recipient in command.recipients:
        if recipient.transport_alg != ECDH_P256:
            raise CeremonyRefused("keys are wrapped to P-256 transport keys only")
        for role, key in zip(command.roles, keys, strict=True):
            context = wrap_context(
                command.fleet, command.epoch, role.role, key.alg, key.public_key, recipient.node
            )
            sealed = hsm.wrap(
                key.label, recipient.transport_key, context, attestation=recipient.attestation
            )
            wrapped.append(
                WrappedFleetKey(
                    node=recipient.node,
                    role=role.role,
                    alg=sealed.alg,
                    public_key=sealed.public_key,
                    ephemeral=sealed.ephemeral,
                    ciphertext=sealed.ciphertext,
                )
            )
    receipt = KeyReceipt(
        fleet=command.fleet,
        epoch=command.epoch,
        node=node_id,
        keys=tuple(
            PublicFleetKey(r.role, k.alg, k.public_key)
            for r, k in zip(command.roles, keys, strict=True)
        ),
    )
    return FleetKeysOffer(receipt=receipt, wrapped=tuple(wrapped))


def import_keys(hsm: Hsm, node_id: str, command: ImportFleetKeys) -> KeyReceipt:
    """Unwrap the keys sent to this node with its transport key; receipt for all of them."""
    imported = []
    for key in command.keys:
        if key.node != node_id:
            raise CeremonyRefused("a wrapped key is for another node", node=key.node)
        label = key_label(command.fleet, command.rollout, key.role)
        held = _existing(hsm, label)
        if held is None:
            sealed = WrappedKey(key.alg, key.public_key, key.ephemeral, key.ciphertext)
            context = wrap_context(
                command.fleet, command.epoch, key.role, key.alg, key.public_key, node_id
            )
            held = hsm.unwrap(TRANSPORT, sealed, label, context)
        elif (held.alg, held.public_key) != (key.alg, key.public_key):
            raise CeremonyRefused("the key held here differs from the one sent", role=key.role)
        imported.append(PublicFleetKey(key.role, held.alg, held.public_key))
    return KeyReceipt(fleet=command.fleet, epoch=command.epoch, node=node_id, keys=tuple(imported))


def destroy(hsm: Hsm, fleet: str, rollout: str) -> tuple[str, ...]:
    """Erase every key ``rollout`` made for ``fleet``; the roles destroyed, sorted."""
    prefix = rollout_labels(fleet, rollout)
    roles = []
    for label in hsm.labels():
        if label.startswith(prefix):
            hsm.destroy(label)
            roles.append(label[len(prefix) :])
    return tuple(sorted(roles))
