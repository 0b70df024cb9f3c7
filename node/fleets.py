"""The fleets a node is a member of, and its answers to the rollout's commands.

:class:`FleetCommands` serves ``fleet.node.<id>.cmd.ceremony``, ``.join`` and ``.retire`` behind
the daemon's gate (commands signed by a pinned orchestrator key); answers go out signed by the
node's identity key. Keys are handled by :mod:`node.ceremony`.

A ``join`` starts the node's replica of the fleet's replication group (:class:`Replica`) with the
configuration the command carries, the identity key that configuration names for this node as its
vote key (a later configuration naming another switches it), its state under
``<state>/fleets/<fleet>/<rollout>/``. What the node joined is recorded in
``<state>/fleets/<fleet>/fleet.json``, so a restarted daemon serves the group again. A probe
(``join`` with ``probe``) commits the rollout's test record through a quorum and returns the signed
acceptances. ``retire`` destroys the rollout's keys and stops its replica.

A join that names the group it continues (``group``: a key rotation, a member replacement)
keeps the running replica and its stored records: the same configuration changes nothing, a
configuration of a later epoch is applied to the replica as a membership step (the joining
member then catches up from a majority before it votes). On the ``retire`` subject,
:class:`DestroyFleetKeys` destroys one key epoch's keys (leaving the group only when asked: a
fleet's retirement) and :class:`DrainFleet` marks the fleet as taking no new registrations.

Beside each replica the node serves the fleet's vault (:class:`VaultService` on
``fleet.vault.<fleet>.*``) when its HSM holds the fleet's vault keys: key ceremonies that carry
a vault policy (``vault`` in the generate and import commands) are recorded in
``<state>/fleets/<fleet>/vault.json`` (the policy and which rollout's labels hold each key
epoch), and the node describes the fleet to its HSM's vault applet, which then checks every
value of a vault record this member accepts (the replica's vetter). A continued group keeps its
vault serving (the applet learns the new configuration); a drain stops its registrations;
leaving the group stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

import structlog
from nats.aio.client import Client as NATS
from nats.aio.subscription import Subscription

from messages import subjects
from messages.canonical import canonical, loads_strict
from messages.ceremony import (
    DestroyFleetKeys,
    Drained,
    DrainFleet,
    FleetKeysOffer,
    GenerateFleetKeys,
    ImportFleetKeys,
    Joined,
    JoinFleet,
    KeyReceipt,
    ProbeProof,
    Retired,
    RetireFleet,
    probe_key,
    probe_value,
)
from messages.errors import HsmfleetError, SchemaViolation
from messages.membership import Membership
from messages.quorum import BadConfig, Config, QuorumUnavailable
from messages.schema import Body
from messages.vault_policy import VaultPolicy
from node import ceremony
from node.hsm.base import Hsm
from node.identity import vote_signer
from node.pins import ORCHESTRATOR_ROLE
from node.quorum.replica import Replica
from node.vault.applet import FleetSetup, FleetVault, KeySet, VaultApplet
from node.vault.service import VaultService
from transport.bus import serve
from transport.files import write_file
from transport.gate import Gate, Received
from transport.outbox import Outbox

log = structlog.get_logger("hsmfleet.node.fleets")
T = TypeVar("T")

FLEETS_DIR = "fleets"
RECORD = "fleet.json"
VAULT_RECORD = "vault.json"
VOTING_WAIT_S = 5.0


@dataclass(frozen=True)
class JoinedFleet:
    """What the node joined: the fleet, the rollout whose group it is (its store), the key
    epoch and the configuration; ``draining``: the fleet takes no new registrations."""

    fleet: str
    rollout: str
    epoch: int
    config: Config
    draining: bool = False


@dataclass(frozen=True)
class VaultKeys(Body):
    """What the node's HSM holds of a fleet's vault: the policy of the newest key epoch, and
    which rollout's labels hold each epoch's keys."""

    policy: VaultPolicy
    keys: tuple[KeySet, ...]


class FleetCommands:
    """One node's fleets: its replicas, and the ceremony, join and retire commands."""

    def __init__(
        self,
        node_id: str,
        hsm: Hsm,
        state_dir: Path,
        outbox: Outbox,
        gate: Gate,
        applet: VaultApplet | None = None,
    ):
        self.node_id = node_id
        self.hsm = hsm
        self.root = Path(state_dir) / FLEETS_DIR
        self.applet = applet
        """The HSM's vault applet; without one the node serves no vault (and accepts no vault
        record's value)."""
        self.vaults: dict[str, VaultService] = {}
        self.outbox = outbox
        self.gate = gate
        self.replicas: dict[str, tuple[JoinedFleet, Replica]] = {}
        self.draining: set[str] = set()
        """Fleets that take no new registrations (retiring)."""
        self._nc: NATS | None = None
        self._subs: list[Subscription] = []
        self._lock = asyncio.Lock()

    async def start(self, nc: NATS) -> None:
        """Serve the replication groups joined before, then the commands."""
        self._nc = nc
        for record in sorted(self.root.glob(f"*/{RECORD}")):
            try:
                await self._run(_read(record))
            except HsmfleetError as exc:
                log.error("cannot serve a fleet joined before", record=str(record), error=str(exc))
        handlers = {"ceremony": self._on_ceremony, "join": self._on_join, "retire": self._on_retire}
        for verb, handler in handlers.items():
            self._subs.append(
                await serve(
                    nc,
                    subjects.node_command(self.node_id, verb),
                    self.gate,
                    ORCHESTRATOR_ROLE,
                    handler,
                    self.outbox,
                )
            )

    async def stop(self) -> None:
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._subs.clear()
        await asyncio.gather(*(self._stop_vault(fleet) for fleet in list(self.vaults)))
        for _, replica in self.replicas.values():
            await replica.stop()
        self.replicas.clear()

    async def _keys(self, fn: Callable[..., T], *args: object) -> T:
        """``fn(*args)``, in a thread if it may wait on the HSM."""
        if self.hsm.blocking:
            return await asyncio.to_thread(fn, *args)
        return fn(*args)

    async def _on_ceremony(self, received: Received) -> FleetKeysOffer | KeyReceipt:
        body = received.body
        if isinstance(body, GenerateFleetKeys):
            offer = await self._keys(ceremony.generate, self.hsm, self.node_id, body)
            log.info("fleet keys offered", fleet=body.fleet, recipients=len(body.recipients))
            await self._vault_keys(body.fleet, body.epoch, body.rollout, body.vault)
            return offer
        if isinstance(body, ImportFleetKeys):
            receipt = await self._keys(ceremony.import_keys, self.hsm, self.node_id, body)
            log.info("fleet keys imported", fleet=body.fleet, keys=len(receipt.keys))
            await self._vault_keys(body.fleet, body.epoch, body.rollout, body.vault)
            return receipt
        raise SchemaViolation("ceremony expects generate or import", type=received.envelope.type)

    async def _on_join(self, received: Received) -> Joined:
        body = received.body
        if not isinstance(body, JoinFleet):
            raise SchemaViolation("join expects a join command", type=received.envelope.type)
        voters = {*body.config.prepare_set, *body.config.accept_set}
        if body.config.fleet != body.fleet or self.node_id not in voters:
            raise BadConfig("the configuration does not make this node a member of the fleet")
        joined = JoinedFleet(body.fleet, body.group or body.rollout, body.epoch, body.config)
        async with self._lock:
            current = self.replicas.get(body.fleet)
            if current is not None and current[0].rollout == joined.rollout:
                self._continue(current[0], current[1], joined)
            elif current is None or current[0] != joined:
                if current is not None:
                    await self._leave(body.fleet)
                self._record(joined)
                await self._run(joined)
            replica = self.replicas[body.fleet][1]
        if body.group is not None and not body.probe and self.node_id in replica.current().voters:
            await self._voting(replica, body.fleet)  # a joining member has caught up
        proof = await self._probe(replica, body) if body.probe else None
        return Joined(fleet=body.fleet, epoch=body.epoch, node=self.node_id, proof=proof)

    async def _voting(self, replica: Replica, fleet: str) -> None:
        try:
            await replica.wait_voting(VOTING_WAIT_S)
        except TimeoutError:
            raise QuorumUnavailable("this member does not vote yet", fleet=fleet) from None

    async def _probe(self, replica: Replica, body: JoinFleet) -> ProbeProof:
        await self._voting(replica, body.fleet)
        value = probe_value(body.fleet, body.epoch)
        commit = await replica.proposer.change(probe_key(body.epoch), lambda _: value)
        proof = commit.proof
        return ProbeProof(
            key=proof.key,
            ballot=proof.ballot.n,
            by=proof.ballot.by,
            digest=proof.digest,
            votes=proof.votes,
        )

    def _continue(self, was: JoinedFleet, replica: Replica, joined: JoinedFleet) -> None:
        """Keep serving the group ``was`` formed: apply a later configuration, if any."""
        replica.reconfigure(joined.config)
        config = replica.current().to_config()
        if any(m.member == self.node_id for m in config.members):
            # The configuration in force may name another of this node's identity keys.
            replica.outbox.signer = vote_signer(self.hsm, config, self.node_id)
        kept = JoinedFleet(
            was.fleet, was.rollout, max(was.epoch, joined.epoch), config, was.draining
        )
        if kept != was:
            self._record(kept)
            self.replicas[was.fleet] = (kept, replica)
            self._describe_vault(kept)

    async def _on_retire(self, received: Received) -> Retired | Drained:
        body = received.body
        if isinstance(body, DrainFleet):
            return await self._drain(body)
        if isinstance(body, DestroyFleetKeys):
            return await self._destroy(body.fleet, body.epoch, body.rollout, leave=body.leave)
        if not isinstance(body, RetireFleet):
            raise SchemaViolation("retire expects a retire command", type=received.envelope.type)
        async with self._lock:
            current = self.replicas.get(body.fleet)
            leave = current is not None and current[0].rollout == body.rollout
        return await self._destroy(body.fleet, body.epoch, body.rollout, leave=leave)

    async def _drain(self, body: DrainFleet) -> Drained:
        async with self._lock:
            current = self.replicas.get(body.fleet)
            if current is not None and not current[0].draining:
                drained = replace(current[0], draining=True)
                self._record(drained)
                self.replicas[body.fleet] = (drained, current[1])
            if body.fleet in self.vaults:
                self.vaults[body.fleet].drain()
        self.draining.add(body.fleet)
        log.info("fleet drains: no new registrations", fleet=body.fleet)
        return Drained(fleet=body.fleet, epoch=body.epoch, node=self.node_id)

    async def _destroy(self, fleet: str, epoch: int, rollout: str, *, leave: bool) -> Retired:
        """Destroy ``rollout``'s keys of ``fleet``; with ``leave``, leave its group first."""
        if leave:
            async with self._lock:
                if fleet in self.replicas:
                    await self._leave(fleet)
        roles = await self._keys(ceremony.destroy, self.hsm, fleet, rollout)
        log.info("fleet keys destroyed", fleet=fleet, rollout=rollout, roles=list(roles))
        async with self._lock:
            if fleet in self.replicas:
                self._describe_vault(self.replicas[fleet][0])
        return Retired(fleet=fleet, epoch=epoch, node=self.node_id, destroyed=roles)

    async def _run(self, joined: JoinedFleet) -> None:
        assert self._nc is not None
        vault = self._describe_vault(joined)
        replica = Replica(
            self.node_id,
            vote_signer(self.hsm, joined.config, self.node_id),
            self.root / joined.fleet / joined.rollout,
            Membership.from_config(joined.config),
            new=True,
            vetter=vault,
        )
        await replica.start(self._nc)
        self.replicas[joined.fleet] = (joined, replica)
        if vault is not None:
            self._describe_vault(joined)  # with the configurations the replica kept
        if joined.draining:
            self.draining.add(joined.fleet)
        log.info("serving the fleet's replication group", fleet=joined.fleet)
        if vault is not None:
            service = VaultService(joined.fleet, self.node_id, replica.proposer, vault)
            if joined.draining:
                service.drain()
            await service.start(self._nc)
            self.vaults[joined.fleet] = service
            log.info("serving the fleet's vault", fleet=joined.fleet)

    def _describe_vault(self, joined: JoinedFleet) -> FleetVault | None:
        """Describe ``joined``'s fleet to the HSM's vault applet (anew after a change); the
        applet's view of the fleet, or None when this node serves no vault of it."""
        recorded = self._read_vault_keys(joined.fleet)
        if self.applet is None or recorded is None:
            return None
        running = self.replicas.get(joined.fleet)
        setup = FleetSetup(
            fleet=joined.fleet,
            member=self.node_id,
            config=joined.config,
            policy=recorded.policy,
            keys=recorded.keys,
            earlier=() if running is None else running[1].earlier(),
        )
        try:
            return self.applet.configure(setup)
        except HsmfleetError as exc:
            log.error("the HSM cannot serve this fleet's vault", fleet=joined.fleet, error=str(exc))
            return None

    async def _vault_keys(
        self, fleet: str, epoch: int, rollout: str, policy: VaultPolicy | None
    ) -> None:
        """Record that the HSM holds the vault keys of ``fleet``'s key epoch ``epoch`` (under
        ``rollout``'s labels), and tell the applet if the vault is served already."""
        if policy is None:
            return
        async with self._lock:
            recorded = self._read_vault_keys(fleet)
            keys = () if recorded is None else recorded.keys
            newest = max((k.epoch for k in keys), default=0)
            entry = KeySet(epoch=epoch, rollout=rollout)
            updated = VaultKeys(
                policy=policy if epoch >= newest else recorded.policy,  # type: ignore[union-attr]
                keys=tuple(sorted({*keys, entry}, key=lambda k: (k.epoch, k.rollout))),
            )
            if updated != recorded:
                directory = self.root / fleet
                directory.mkdir(parents=True, exist_ok=True)
                write_file(directory / VAULT_RECORD, canonical(updated.to_json()))
            if fleet in self.replicas:
                self._describe_vault(self.replicas[fleet][0])

    def _read_vault_keys(self, fleet: str) -> VaultKeys | None:
        path = self.root / fleet / VAULT_RECORD
        if not path.exists():
            return None
        try:
            return VaultKeys.from_json(loads_strict(path.read_bytes()))
        except (OSError, ValueError, HsmfleetError) as exc:
            log.error("unreadable vault record", fleet=fleet, error=str(exc))
            return None

    async def _stop_vault(self, fleet: str) -> None:
        await self.vaults[fleet].stop()  # it answers what it took: it stays listed until done
        del self.vaults[fleet]
        if self.applet is not None:
            self.applet.forget(fleet)

    async def _leave(self, fleet: str) -> None:
        if fleet in self.vaults:
            await self._stop_vault(fleet)
        _, replica = self.replicas.pop(fleet)
        await replica.stop()
        (self.root / fleet / RECORD).unlink(missing_ok=True)

    def _record(self, joined: JoinedFleet) -> None:
        directory = self.root / joined.fleet
        directory.mkdir(parents=True, exist_ok=True)
        record = {
            "fleet": joined.fleet,
            "rollout": joined.rollout,
            "epoch": joined.epoch,
            "config": joined.config.to_json(),
            "draining": joined.draining,
        }
        write_file(directory / RECORD, canonical(record))


def _read(path: Path) -> JoinedFleet:
    try:
        raw = loads_strict(path.read_bytes())
        return JoinedFleet(
            raw["fleet"],
            raw["rollout"],
            int(raw["epoch"]),
            Config.from_json(raw["config"]),
            bool(raw.get("draining", False)),
        )
    except (OSError, ValueError, KeyError, TypeError, HsmfleetError) as exc:
        raise BadConfig(f"{path} is not a fleet record: {exc}") from None
