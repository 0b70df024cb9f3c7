"""A fleet whose members mix software HSMs and PKCS#11 tokens (SoftHSM2) rolls out, serves its
vault, rotates its keys and serves the vault again, end to end on a real nats-server with the
real orchestrator and cosigners.

Two of the five members keep every key on a token: their identity and transport keys, and the
fleet's keys they import (the vault's ECDH and AES keys sensitive on the token; the OPAQUE setup,
which a token cannot run, sealed under a token key and opened in the process that runs the
applet). A user registers before the rotation and recovers after it with the new bundle, while
the old key epoch is still held (the client then registers again under the new epoch: its OPAQUE
setup and storage key), and once the old epoch is destroyed; last, with two software members
down, so that only a quorum that counts both tokens can commit.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

from pkcs11 import Attribute, ObjectClass

from messages.inputs import RotateFleet
from messages.vault_authorization import AccountAuthority
from messages.verifier_state import VerifierState
from messages.verify import verify_bundle
from node.hsm import softhsm
from node.hsm.cryptoki import Pkcs11Hsm
from node.vendor import VendorCA, provision
from tests.integration.fleetvault import roll_out, started
from tests.integration.test_pkcs11_backend import PIN, softhsm_dir  # noqa: F401
from tests.replay.fleet import running, wait_for
from tests.replay.rolloutbed import served_bed
from transport.vault_client import VaultClient

TOKENS = ("node-4", "node-5")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def tokens(vendor: VendorCA) -> dict[str, Pkcs11Hsm]:
    """A fresh SoftHSM2 token for each of :data:`TOKENS`, certified by the bed's vendor."""
    labels = {node_id: f"{node_id}-{uuid.uuid4().hex[:8]}" for node_id in TOKENS}
    for label in labels.values():  # all made before any is opened: the library starts over once
        softhsm.init_token(label, PIN, "so-" + PIN)
    made = {node_id: Pkcs11Hsm(softhsm.MODULE, label, PIN) for node_id, label in labels.items()}
    for token in made.values():
        provision(token, vendor, datetime.now(UTC))
    return made


def client(bed, orch, fleet: str) -> VaultClient:
    """A vault client of ``fleet`` from its current bundle, verified from the bed's pins."""
    bundle = orch.state.book.of_fleet(fleet).validation
    accepted = verify_bundle(bundle, bed.pins(), VerifierState(), now_ms())
    authority = AccountAuthority(bed.authority)

    def authorize(user: str, op: str, request: str):
        return authority.authorize(fleet, user, op, request, now_ms())

    return VaultClient.from_bundle(bed.nc, accepted, authorize, now_ms=now_ms(), timeout=10)


def vault_keys_on(token: Pkcs11Hsm) -> list[tuple[str, bool, bool]]:
    """The vault's secret and private keys on ``token``: (label, sensitive, local copy allowed)."""
    found = []
    for cls in (ObjectClass.SECRET_KEY, ObjectClass.PRIVATE_KEY):
        for obj in token._run(
            lambda session, cls=cls: list(session.get_objects({Attribute.CLASS: cls}))
        ):
            label = obj[Attribute.LABEL]
            if ":vault-" in label:
                found.append((label, obj[Attribute.SENSITIVE], obj[Attribute.EXTRACTABLE]))
    return found


async def test_a_fleet_of_software_and_pkcs11_hsms_serves_its_vault_through_a_rotation(
    tmp_path,
    rollout_template,
    softhsm_dir,  # noqa: F811
):
    made = tokens(VendorCA.open(rollout_template / "vendor"))
    async with (
        served_bed(rollout_template, tmp_path, "mixed", hsms=made) as bed,
        running(bed.config) as orch,
    ):
        await started(orch)
        # SoftHSM2 exports no Ed25519 private key: the fleet's signing keys are ECDSA.
        await roll_out(
            orch, bed, "fleet-1", keys={"vault": "ecdsa-p256-sha256"}, vault=bed.vault(limit=5)
        )
        first = client(bed, orch, "fleet-1")
        await first.register("alice", b"1234", b"alice's backup key")
        assert (await first.recover("alice", b"1234")).secret == b"alice's backup key"
        for node_id, token in made.items():
            held = vault_keys_on(token)
            assert {label.rsplit(":", 1)[-1] for label, _, _ in held} >= {
                "vault-kem",
                "vault-storage",
            }, node_id
            assert all(sensitive for _, sensitive, _ in held), node_id

        await orch.submit(RotateFleet(fleet="fleet-1", requested_by="test", overlap_s=3, reason=""))
        await wait_for(
            lambda: orch.state.book.fleets["fleet-1"].active_epoch == 2,
            timeout=60,
            what="the second epoch to activate",
        )
        second = client(bed, orch, "fleet-1")
        assert second.kem_id != first.kem_id
        again = await second.recover("alice", b"1234")  # and registered again
        assert again.secret == b"alice's backup key" and (again.moved, again.generation) == (
            True,
            2,
        )
        await wait_for(
            lambda: orch.state.book.of_fleet("fleet-1").rotation.legacy_closed,
            timeout=60,
            what="the old epoch's keys to be destroyed",
        )
        after = await second.recover("alice", b"1234")
        assert after.secret == b"alice's backup key" and after.generation == 2
        for node_id, token in made.items():  # the first epoch's vault keys are gone
            rollouts = {label.split(":")[2] for label, _, _ in vault_keys_on(token)}
            assert len(rollouts) == 1, node_id
        await second.register("bob", b"9876", b"bob's")
        assert (await second.recover("bob", b"9876")).secret == b"bob's"

        # Two software members down: every change now needs both tokens' HSMs to check it.
        for daemon in bed.daemons[:2]:
            await daemon.stop()
        recovered = await second.recover("bob", b"9876")
        assert (recovered.secret, recovered.attempt) == (b"bob's", 2)
    for token in made.values():
        token.close()
