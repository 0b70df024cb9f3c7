"""Issue 7 end to end: a fleet's whole key lifecycle on real components (nats-server, six node
daemons with software HSMs, two cosigners, the orchestrator) while vault traffic runs.

One fleet is rolled out with a vault; a background task registers and recovers through
:class:`~transport.vault_client.VaultClient` (made from the validation bundle the client
verified) the whole time, and every operation must succeed. The fleet's keys are rotated: a
client may keep the old bundle during the overlap, the users take the new bundle and each logs
in before the overlap ends (a recovery of a record made with the old epoch's OPAQUE setup
registers it again with the new one), and a client that kept the old bundle is refused once the
old keys are destroyed and takes the new one. A failed member is replaced by the spare node,
the operator's countersigning key and one cosigner's log key are rotated (orchestrator stopped
meanwhile: the vault does not need it), a successor fleet is rolled out, the users move to it
(recover on the old fleet, register on the new one), and the old fleet is retired. A verifier
pinned to the ORIGINAL keys follows every step (each validation bundle, the rotation chain, the
retirement notice) and refuses each bad input with its own error: a rotation signed by one key
only, a rotation that skips a version, the retired fleet's bundle, a fleet key used after its
``legacy_until``.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from messages.documents import time_ms
from messages.errors import HsmfleetError
from messages.inputs import ReplaceMember, RotateFleet
from messages.retirement import FleetRetired
from messages.rotation import RotationSingleSigned, RotationVersionGap
from messages.validation import LoggedNotice
from messages.vault import UnknownVaultKey
from messages.verification import LegacyKeyExpired
from messages.verifier_state import VerifierState
from messages.verify import check_fleet_key, ingest_retirement, ingest_rotations
from node.http import health
from orchestrator.shell.keys import load_rotation_chain, load_signer, operator_signer
from orchestrator.shell.log import SOURCE
from orchestrator.shell.signer_rotation import log_cosigner_rotation, rotate_operator_key
from tests.integration.fleetvault import (
    Follower,
    roll_out,
    start_retirement,
    started,
    until_retired,
    vault_client,
)
from tests.replay.fleet import running, wait_for
from tests.replay.rolloutbed import MEMBERS, SPARE, RolloutBed, served_bed
from transport.cosign_client import CosigningClient, NatsTransport
from transport.outbox import Outbox
from transport.vault_client import VaultClient

USERS = 4
MAX_OPS = 5000
PAUSE_S = 0.01
OVERLAP_S = 10
"""Long enough for every user to log in with the new bundle while both key epochs are held."""


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@pytest.fixture
async def bed(tmp_path, rollout_template):
    async with served_bed(rollout_template, tmp_path, "lifecycle", spare=True) as bed:
        yield bed


@dataclass
class VaultLoad:
    """Users registering and recovering on ``fleet`` until stopped; switching ``fleet`` moves
    each user (recover on the fleet it was on, register on the new one). ``clients`` holds each
    fleet's client, made from the newest bundle the users took (:meth:`take`)."""

    clients: dict[str, VaultClient]
    fleet: str
    ops: Counter[str] = field(default_factory=Counter)
    failures: list[tuple[str, str, str]] = field(default_factory=list)
    secrets: dict[tuple[str, str], bytes] = field(default_factory=dict)
    """(fleet, user) -> the secret registered there last."""
    current: set[tuple[str, str]] = field(default_factory=set)
    """(fleet, user) that completed an operation through the fleet's client in force."""
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def total(self) -> int:
        return sum(self.ops.values())

    def on(self, fleet: str) -> int:
        """How many users are registered on ``fleet``."""
        return sum(1 for f, _ in self.secrets if f == fleet)

    def take(self, fleet: str, client: VaultClient) -> None:
        """From now on the users reach ``fleet`` through ``client`` (a newer bundle's)."""
        self.clients[fleet] = client
        self.current = {(f, u) for f, u in self.current if f != fleet}

    def logged_in(self, fleet: str) -> int:
        """How many users completed an operation on ``fleet`` since its client was taken."""
        return sum(1 for f, _ in self.current if f == fleet)

    async def run(self) -> None:
        step = 0
        while not self.stop.is_set() and sum(self.ops.values()) < MAX_OPS:
            user = f"user-{step % USERS}"
            await self._one(user, step)
            step += 1
            await asyncio.sleep(PAUSE_S)

    async def _one(self, user: str, step: int) -> None:
        fleet = self.fleet
        client = self.clients[fleet]
        pin = f"{step % USERS:04d}".encode()
        if (fleet, user) not in self.secrets:
            moving_from = next((f for f, u in self.secrets if u == user), None)
            if moving_from is not None:
                await self._recover(moving_from, user, pin)
            done = await self._register(fleet, user, pin, step, again=False)
        elif step % 5 == 0:
            done = await self._register(fleet, user, pin, step, again=True)
        else:
            done = await self._recover(fleet, user, pin)
        if done and self.clients[fleet] is client:
            self.current.add((fleet, user))

    async def _register(self, fleet: str, user: str, pin: bytes, step: int, again: bool) -> bool:
        """Register a new secret; ``again``: over the user's registration, proving its PIN."""
        secret = f"backup of {user} #{step}".encode()
        call = self.clients[fleet].register(user, pin, secret, current_pin=pin if again else None)
        if await self._call(fleet, "register", call) is None:
            return False
        self.secrets[(fleet, user)] = secret
        return True

    async def _recover(self, fleet: str, user: str, pin: bytes) -> bool:
        got = await self._call(fleet, "recover", self.clients[fleet].recover(user, pin))
        if got is not None and got.secret != self.secrets[(fleet, user)]:
            self.failures.append((fleet, "recover", "wrong secret"))
        return got is not None

    async def _call(self, fleet: str, op: str, call: Any) -> Any:
        self.ops[f"{fleet} {op}"] += 1
        try:
            return await call
        except HsmfleetError as exc:
            self.failures.append((fleet, op, exc.kind))
            return None


def tampered(notice: LoggedNotice, **changes: object) -> LoggedNotice:
    """``notice`` with its rotation statement changed (its log proofs no longer match it)."""
    return replace(notice, document=replace(notice.logged, **changes).to_json())


async def rotate_signers(bed: RolloutBed) -> list[LoggedNotice]:
    """Rotate the operator's key, then cosigner-a's log key, and log both (the orchestrator
    must be stopped: this process opens the operator's HSM). The rotation chain after."""
    settings = bed.settings
    outbox = Outbox(SOURCE, load_signer(settings.key_file))
    client = CosigningClient(NatsTransport(bed.nc, outbox), bed.peers, operator_signer(settings), 2)
    await rotate_operator_key(settings, client, now_ms())
    rotation = await bed.cosigners[0].cosigner.rotate_key()
    await log_cosigner_rotation(settings, client, rotation)
    return load_rotation_chain(settings)


async def test_a_fleet_lives_through_rotation_replacement_signer_rotations_and_retirement(bed):
    five = [n for n, _ in MEMBERS]
    daemons = {d.node_id: d for d in bed.daemons}
    load = VaultLoad({}, "fleet-1")
    follower = Follower(bed.pins())
    original = VerifierState()
    background: asyncio.Task[None] | None = None
    try:
        async with running(bed.config) as orch:
            await started(orch, members=6)
            await roll_out(orch, bed, "fleet-1", members={"ids": five}, vault=bed.vault())
            first = orch.state.book.of_fleet("fleet-1")
            assert all(set(health(daemons[n])["fleets"]) == {"fleet-1"} for n in five)
            kept = vault_client(bed, await follower.accept(first.validation), timeout=5)
            load.take("fleet-1", kept)
            background = asyncio.create_task(load.run())
            await wait_for(lambda: load.on("fleet-1") == USERS, what="the users to register")

            # Fleet-key rotation: both epochs' keys during the overlap, the old ones after.
            mark = load.total
            await orch.submit(
                RotateFleet(fleet="fleet-1", requested_by="test", overlap_s=OVERLAP_S, reason="age")
            )
            await wait_for(
                lambda: orch.state.book.fleets["fleet-1"].active_epoch == 2,
                timeout=60,
                what="the rotation to activate",
            )
            rotation = orch.state.book.of_fleet("fleet-1")
            accepted = await follower.accept(rotation.validation)
            assert accepted.artifact.epoch == 2
            fresh = vault_client(bed, accepted, timeout=5)
            assert fresh.kem_id != kept.kem_id
            load.take("fleet-1", fresh)
            # A client that kept the old bundle is still served during the overlap.
            await fresh.register("keeper", b"7777", b"kept")
            assert (await kept.recover("keeper", b"7777")).secret == b"kept"
            await fresh.recover("keeper", b"7777")  # its last change sealed to the new key
            await wait_for(
                lambda: load.logged_in("fleet-1") == USERS,
                timeout=OVERLAP_S,
                what="every user to log in with the new bundle",
            )
            assert not orch.state.book.of_fleet("fleet-1").rotation.legacy_closed, (
                "the overlap is over"
            )
            old_vault = next(k for k in first.artifact.keys if k.role == "vault")
            legacy = next(k for k in rotation.artifact.keys if k.public_key == old_vault.public_key)
            check_fleet_key(rotation.artifact, old_vault.public_key, "vault", now_ms())
            await wait_for(
                lambda: orch.state.book.of_fleet("fleet-1").rotation.legacy_closed,
                timeout=60,
                what="the old keys to be destroyed",
            )
            after = time_ms(legacy.legacy_until, "legacy_until") + 1
            with pytest.raises(LegacyKeyExpired):
                check_fleet_key(rotation.artifact, old_vault.public_key, "vault", after)
            # The old bundle's vault key is gone: its client is refused and takes the new one.
            with pytest.raises(UnknownVaultKey):
                await kept.recover("keeper", b"7777")
            latest = await follower.accept(orch.state.book.of_fleet("fleet-1").validation)
            kept = vault_client(bed, latest, timeout=5)
            assert (await kept.recover("keeper", b"7777")).secret == b"kept"

            assert load.total > mark
            # Member replacement: node-5 is lost for good; the spare node takes its place.
            mark = load.total
            await daemons["node-5"].stop()
            await orch.submit(
                ReplaceMember(
                    fleet="fleet-1", node_id="node-5", replacement=SPARE[0], requested_by="test"
                )
            )
            await wait_for(
                lambda: orch.state.book.fleets["fleet-1"].active_epoch == 3,
                timeout=90,
                what="the replacement to activate",
            )
            replacement = orch.state.book.of_fleet("fleet-1")
            assert (await follower.accept(replacement.validation)).artifact.epoch == 3
            assert {m.id for m in replacement.artifact.quorum.members} == {*five[:4], SPARE[0]}
            assert "fleet-1" in daemons[SPARE[0]].fleets.vaults, "the newcomer serves the vault"

        # Signer-key rotations, with the orchestrator stopped; the vault keeps serving.
        assert load.total > mark
        mark = load.total
        chain = await rotate_signers(bed)
        await wait_for(
            lambda: load.total > mark + USERS, what="vault operations, orchestrator down"
        )
        assert [n.logged.signer for n in chain] == ["operator", bed.peers[0].pin.name]
        with pytest.raises(RotationSingleSigned):
            bad = tampered(chain[0], new_signature=chain[0].logged.old_signature)
            ingest_rotations([bad, *chain[1:]], follower.pins, original, now_ms())
        with pytest.raises(RotationVersionGap):
            ingest_rotations([tampered(chain[0], version=3)], follower.pins, original, now_ms())

        async with running(bed.config) as orch:
            await started(orch, members=5)
            # A successor fleet, published under the rotated keys: the verifier walks to them.
            await roll_out(
                orch,
                bed,
                "fleet-2",
                members={"ids": [*five[:4], SPARE[0]]},
                vault=bed.vault(),
            )
            successor = orch.state.book.of_fleet("fleet-2").validation
            accepted = await follower.accept(successor)
            assert [r.signer for r in accepted.rotations] == [n.logged.signer for n in chain]

            # Users move to the successor, then the old fleet retires.
            mark = load.total
            load.take("fleet-2", vault_client(bed, accepted, timeout=5))
            load.fleet = "fleet-2"
            await wait_for(lambda: load.on("fleet-2") == USERS, what="the users to move")
            await start_retirement(orch, "fleet-1", "fleet-2")
            await until_retired(orch, "fleet-1")
            notice = orch.state.book.fleets["fleet-1"].retirement
            assert load.total > mark
        assert not any("fleet-1" in d.fleets.vaults for d in bed.daemons)
        follower.state = ingest_retirement(notice, follower.pins, follower.state, now_ms())
        with pytest.raises(FleetRetired):
            await follower.accept(replacement.validation)
        await follower.accept(successor)  # the successor stays accepted
    finally:
        load.stop.set()
        if background is not None:
            await background
    print(f"vault operations: {dict(load.ops)}; failures: {load.failures}")
    assert load.failures == []
    assert load.ops["fleet-1 recover"] > 0 and load.ops["fleet-2 register"] >= USERS
