"""The node's side of the key ceremony on software HSMs: keys made once and wrapped to each
recipient's transport key for the context that names them, imported (once) by the recipient,
destroyed by rollout; every bad command refused with a typed error."""

from __future__ import annotations

import os
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from messages.attestation import Attestation, AttestRequest
from messages.canonical import b64, canonical
from messages.ceremony import (
    GenerateFleetKeys,
    ImportFleetKeys,
    KeyRole,
    Recipient,
    key_label,
    wrap_context,
)
from messages.signing import ECDH_P256, ECDSA_P256, ED25519, verify_bytes
from node import ceremony
from node.attest import attest
from node.hsm.base import (
    AES256_GCM,
    OPAQUE_SETUP,
    Hsm,
    KeyNotFound,
    UnsupportedAlgorithm,
    UnwrapFailed,
)
from node.hsm.device.core import RecipientNotAttested
from node.hsm.soft import SoftHsm
from node.identity import TRANSPORT, establish
from node.vendor import VendorCA, provision
from tests.unit.hsm_devices import served

ROLES = (KeyRole("vault", ED25519), KeyRole("signing", ECDSA_P256))
VAULT_ROLES = (
    KeyRole("session", ECDH_P256),
    KeyRole("records", AES256_GCM),
    KeyRole("login", OPAQUE_SETUP),
)


def hsm(tmp_path: Path, name: str) -> SoftHsm:
    box = SoftHsm(tmp_path / name, bytes(32))
    box.ensure(TRANSPORT, "ecdh-p256")
    return box


def generate(
    source: Hsm,
    *recipients: tuple[str, SoftHsm],
    rollout: str = "r1",
    roles: tuple[KeyRole, ...] = ROLES,
    attestations: dict[str, Attestation] | None = None,
):
    command = GenerateFleetKeys(
        fleet="fleet-1",
        epoch=1,
        rollout=rollout,
        roles=roles,
        recipients=tuple(
            Recipient(
                name,
                "ecdh-p256",
                box.public_key(TRANSPORT).public_key,
                (attestations or {}).get(name),
            )
            for name, box in recipients
        ),
    )
    return ceremony.generate(source, "gen", command)


def importing(offer, node: str, rollout: str = "r1", epoch: int = 1) -> ImportFleetKeys:
    keys = tuple(w for w in offer.wrapped if w.node == node)
    return ImportFleetKeys(fleet="fleet-1", epoch=epoch, rollout=rollout, keys=keys)


def test_keys_are_made_once_wrapped_and_imported_with_receipts(tmp_path):
    gen, a, b = hsm(tmp_path, "gen"), hsm(tmp_path, "a"), hsm(tmp_path, "b")
    offer = generate(gen, ("a", a), ("b", b))
    assert [(k.role, k.alg) for k in offer.receipt.keys] == [(r.role, r.alg) for r in ROLES]
    assert {(w.node, w.role) for w in offer.wrapped} == {
        (n, r.role) for n in ("a", "b") for r in ROLES
    }
    # Asked again (its answer was lost), the generator wraps the same keys, not new ones.
    again = generate(gen, ("a", a), ("b", b))
    assert again.receipt == offer.receipt and again.receipt.digest == offer.receipt.digest
    receipt = ceremony.import_keys(a, "a", importing(offer, "a"))
    assert receipt.keys == offer.receipt.keys and receipt.node == "a"
    # Importing again is checked, not done twice; a wrapping of the same keys is fine too.
    assert ceremony.import_keys(a, "a", importing(again, "a")) == receipt
    # The imported keys sign, and the signatures verify under the published public keys.
    for key in receipt.keys:
        label = key_label("fleet-1", "r1", key.role)
        assert verify_bytes(key.alg, key.public_key, a.sign(label, b"hello"), b"hello")
    assert ceremony.destroy(a, "fleet-1", "r1") == ("signing", "vault")
    with pytest.raises(KeyNotFound):
        a.public_key(key_label("fleet-1", "r1", "vault"))
    assert ceremony.destroy(a, "fleet-1", "r1") == ()  # nothing left: nothing destroyed
    assert ceremony.destroy(gen, "fleet-1", "other-rollout") == ()


def test_wrapped_keys_open_only_under_the_recipients_transport_key(tmp_path):
    gen, a, b = hsm(tmp_path, "gen"), hsm(tmp_path, "a"), hsm(tmp_path, "b")
    offer = generate(gen, ("a", a))
    stolen = importing(offer, "a")
    with pytest.raises(UnwrapFailed):
        ceremony.import_keys(b, "a", stolen)  # b posing as a: its transport key opens nothing
    with pytest.raises(ceremony.CeremonyRefused):
        ceremony.import_keys(b, "b", stolen)  # keys addressed to another node


def test_a_key_that_differs_from_the_one_held_is_refused(tmp_path):
    gen, other, a = hsm(tmp_path, "gen"), hsm(tmp_path, "other"), hsm(tmp_path, "a")
    ceremony.import_keys(a, "a", importing(generate(gen, ("a", a)), "a"))
    with pytest.raises(ceremony.CeremonyRefused):
        ceremony.import_keys(a, "a", importing(generate(other, ("a", a)), "a"))


def test_bad_generate_commands_are_refused(tmp_path):
    gen = hsm(tmp_path, "gen")
    x25519ish = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    bad_recipient = GenerateFleetKeys(
        "fleet-1", 1, "r1", ROLES, (Recipient("a", "x25519", x25519ish),)
    )
    with pytest.raises(ceremony.CeremonyRefused):
        ceremony.generate(gen, "gen", bad_recipient)
    with pytest.raises(UnsupportedAlgorithm):
        ceremony.generate(
            gen, "gen", GenerateFleetKeys("fleet-1", 1, "r2", (KeyRole("k", "rsa"),), ())
        )


def test_vault_keys_of_every_kind_move_like_signing_keys(tmp_path):
    gen, a = hsm(tmp_path, "gen"), hsm(tmp_path, "a")
    offer = generate(gen, ("a", a), roles=VAULT_ROLES)
    assert [(k.role, k.alg) for k in offer.receipt.keys] == [(r.role, r.alg) for r in VAULT_ROLES]
    receipt = ceremony.import_keys(a, "a", importing(offer, "a"))
    assert receipt.keys == offer.receipt.keys
    label = key_label("fleet-1", "r1", "records")
    assert a.unseal(label, gen.seal(label, b"record", b"u"), b"u") == b"record"
    login = key_label("fleet-1", "r1", "login")
    assert a.secret(login) == gen.secret(login)


def test_the_wrap_context_names_the_fleet_epoch_role_key_and_member():
    context = wrap_context("fleet-1", 3, "vault", ED25519, b"\x01\x02", "node-a")
    assert context == canonical(
        {
            "fleet": "fleet-1",
            "epoch": 3,
            "role": "vault",
            "alg": ED25519,
            "public_key": b64(b"\x01\x02"),
            "node": "node-a",
        }
    )
    others = [
        wrap_context("fleet-2", 3, "vault", ED25519, b"\x01\x02", "node-a"),
        wrap_context("fleet-1", 4, "vault", ED25519, b"\x01\x02", "node-a"),
        wrap_context("fleet-1", 3, "signing", ED25519, b"\x01\x02", "node-a"),
        wrap_context("fleet-1", 3, "vault", ECDSA_P256, b"\x01\x02", "node-a"),
        wrap_context("fleet-1", 3, "vault", ED25519, b"\x01\x03", "node-a"),
        wrap_context("fleet-1", 3, "vault", ED25519, b"\x01\x02", "node-b"),
    ]
    assert len({context, *others}) == 7


def test_a_wrapped_key_opens_only_as_the_key_and_for_the_member_it_was_wrapped_for(tmp_path):
    gen, a = hsm(tmp_path, "gen"), hsm(tmp_path, "a")
    offer = generate(gen, ("a", a))
    sent = importing(offer, "a")
    vault, signing = sent.keys
    swapped = replace(sent, keys=(replace(vault, role="signing"), replace(signing, role="vault")))
    for bad in (
        replace(sent, epoch=2),  # another key epoch
        replace(sent, fleet="fleet-2"),  # another fleet
        swapped,  # each key passed off as the other role's
    ):
        with pytest.raises(UnwrapFailed, match="does not open"):
            ceremony.import_keys(a, "a", bad)
    # The member is in the context too: the same transport key does not open the keys as
    # another member's.
    readdressed = replace(sent, keys=tuple(replace(k, node="b") for k in sent.keys))
    with pytest.raises(UnwrapFailed, match="does not open"):
        ceremony.import_keys(a, "b", readdressed)
    assert a.labels() == [TRANSPORT]


def _attested(tmp_path: Path, vendor: VendorCA, name: str) -> tuple[SoftHsm, Attestation]:
    """A provisioned member and its attestation."""
    box = SoftHsm(tmp_path / name, bytes(32))
    provision(box, vendor, datetime.now(UTC))
    node = establish(box, tmp_path / f"{name}-state", name)
    return box, attest(node, box, "measured", AttestRequest(os.urandom(32), 0))


def test_a_generator_behind_a_device_wraps_only_to_attested_recipients(tmp_path):
    vendor = VendorCA.init(tmp_path / "vendor", datetime.now(UTC))
    gen = SoftHsm(tmp_path / "gen", bytes(32))
    provision(gen, vendor, datetime.now(UTC))
    a, a_attestation = _attested(tmp_path, vendor, "a")
    with served(gen) as (_, device):
        with pytest.raises(RecipientNotAttested):
            generate(device, ("a", a))
        offer = generate(device, ("a", a), attestations={"a": a_attestation})
    assert ceremony.import_keys(a, "a", importing(offer, "a")).keys == offer.receipt.keys
    recipient = Recipient("a", ECDH_P256, b"\x04" + bytes(64), a_attestation)
    assert Recipient.from_json(recipient.to_json()) == recipient
    old = {k: v for k, v in recipient.to_json().items() if k != "attestation"}
    assert Recipient.from_json(old).attestation is None  # JSON from before the field decodes
