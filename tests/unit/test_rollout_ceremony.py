"""The node's side of the key ceremony on software HSMs: keys made once and wrapped to each
recipient's transport key, imported (once) by the recipient, destroyed by rollout; every bad
command refused with a typed error."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from messages.ceremony import (
    GenerateFleetKeys,
    ImportFleetKeys,
    KeyRole,
    Recipient,
    key_label,
)
from messages.signing import ECDSA_P256, ED25519, verify_bytes
from node import ceremony
from node.hsm.base import KeyNotFound, UnsupportedAlgorithm, UnwrapFailed
from node.hsm.soft import SoftHsm
from node.identity import TRANSPORT

ROLES = (KeyRole("vault", ED25519), KeyRole("signing", ECDSA_P256))


def hsm(tmp_path: Path, name: str) -> SoftHsm:
    box = SoftHsm(tmp_path / name, bytes(32))
    box.ensure(TRANSPORT, "ecdh-p256")
    return box


def generate(source: SoftHsm, *recipients: tuple[str, SoftHsm], rollout: str = "r1"):
    command = GenerateFleetKeys(
        fleet="fleet-1",
        epoch=1,
        rollout=rollout,
        roles=ROLES,
        recipients=tuple(
            Recipient(name, "ecdh-p256", box.public_key(TRANSPORT).public_key)
            for name, box in recipients
        ),
    )
    return ceremony.generate(source, "gen", command)


def importing(offer, node: str, rollout: str = "r1") -> ImportFleetKeys:
    keys = tuple(w for w in offer.wrapped if w.node == node)
    return ImportFleetKeys(fleet="fleet-1", epoch=1, rollout=rollout, keys=keys)


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
