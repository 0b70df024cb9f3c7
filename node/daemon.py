"""The node daemon: the process beside each HSM.

On start it announces itself on ``fleet.node.<id>.status``, then heartbeats there and answers
the orchestrator's signed commands on ``fleet.node.<id>.cmd.<verb>`` (``attest`` and ``rotate``
here; the rollout's ``ceremony``, ``join`` and ``retire`` in :mod:`node.fleets`). Commands pass
the gate against the pinned orchestrator keys; the node's own messages are signed by its identity
key inside the HSM. Calls to an HSM that may block (PKCS#11) run in a thread, off the event loop.

``rotate`` makes a pending identity key and proves it (:func:`prove_rotation`); the
answer is signed by that new key. The node keeps signing with the key in force until the
orchestrator, having recorded the rotation, tells it to adopt the new one (or names it as the key
in force in its next rotation); from then on every message of the node, and its answers to the
rollout's commands, carry the new key's signature, after a restart too.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import structlog
from nats.aio.client import Client as NATS
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError

from messages import subjects
from messages.attestation import Attestation, AttestRequest, NodeAnnounce, NodeHeartbeat
from messages.envelope import Envelope
from messages.errors import HsmfleetError, SchemaViolation
from messages.node_keys import AdoptIdentity, IdentityAdopted, IdentityRotation, RotateIdentity
from messages.signing import TrustStore, key_id
from node.attest import attest, prove_rotation
from node.fleets import FleetCommands
from node.hsm.base import Hsm, HsmError, PublicKey
from node.identity import NodeIdentity, adopt, establish, prepare_rotation
from node.measurement import measure
from node.pins import ORCHESTRATOR_ROLE
from node.vault.applet import VaultApplet
from transport.bus import publish, serve
from transport.gate import Gate, Received
from transport.outbox import Outbox

log = structlog.get_logger("hsmfleet.node")
T = TypeVar("T")


class NodeConfigError(HsmfleetError):
    """The node cannot run as configured: a setting is missing or out of range."""

    kind = "node_config"


class NodeDaemon:
    """One node: its HSM, its identity, and its conversation with the fleet over NATS."""

    def __init__(
        self,
        hsm: Hsm,
        state_dir: Path,
        domain: str,
        orchestrator: TrustStore,
        *,
        node_id: str | None = None,
        measurement: str | None = None,
        heartbeat_s: float = 5.0,
        applet: VaultApplet | None = None,
    ) -> None:
        if not heartbeat_s > 0:
            raise NodeConfigError("the heartbeat interval must be positive", seconds=heartbeat_s)
        self.hsm = hsm
        self.state_dir = state_dir
        self.domain = subjects.token(domain, "failure domain")
        self.node = establish(hsm, state_dir, node_id)
        self.measurement = measurement or measure()
        self.heartbeat_s = heartbeat_s
        self.outbox = Outbox(self.node.node_id, hsm.signer(self.node.identity.label))
        self.rotation_outbox = Outbox(self.node.node_id, _NewestKey(self))
        """Signs the answers to ``rotate``: with the key the node rotates to."""
        self._rotating = asyncio.Lock()
        self.gate = Gate(orchestrator)
        self.fleets = FleetCommands(
            self.node.node_id, hsm, state_dir, self.outbox, self.gate, applet
        )
        self.log = log.bind(node_id=self.node.node_id, domain=domain, hsm=hsm.kind)
        self._nc: NATS | None = None
        self._subs: list[Subscription] = []
        self._heartbeat: asyncio.Task[None] | None = None
        self._started = 0.0
        self.hsm_ok: bool | None = None
        """Whether the HSM answered at the last heartbeat (None before the first)."""

    @property
    def node_id(self) -> str:
        return self.node.node_id

    @property
    def connected(self) -> bool:
        """Whether the daemon runs and its NATS connection is up."""
        return self._nc is not None and self._nc.is_connected

    def uptime_s(self) -> float:
        """Seconds since the daemon started serving (0 before it starts)."""
        return time.monotonic() - self._started if self._nc is not None else 0.0

    async def start(self, nc: NATS) -> None:
        """Serve commands on ``nc``, announce this node, and start heartbeating."""
        self._nc, self._started = nc, time.monotonic()
        self._subs.append(
            await serve(
                nc,
                subjects.node_command(self.node_id, "attest"),
                self.gate,
                ORCHESTRATOR_ROLE,
                self._on_attest,
                self.outbox,
            )
        )
        self._subs.append(
            await serve(
                nc,
                subjects.node_command(self.node_id, "rotate"),
                self.gate,
                ORCHESTRATOR_ROLE,
                self._on_rotate,
                self.rotation_outbox,
            )
        )
        await self.fleets.start(nc)
        await nc.flush()
        await self._status(
            NodeAnnounce(
                node_id=self.node_id,
                domain=self.domain,
                hsm=self.hsm.kind,
                measurement=self.measurement,
            )
        )
        self._heartbeat = asyncio.create_task(self._beat(), name=f"heartbeat-{self.node_id}")
        self.log.info("node started", identity=self.node.identity.kid)

    async def stop(self) -> None:
        """Stop heartbeating and serving; the HSM and its keys stay."""
        if self._heartbeat is not None:
            task, self._heartbeat = self._heartbeat, None
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise  # stop() itself was cancelled, not just the heartbeat
        for sub in self._subs:
            with contextlib.suppress(NatsError):
                await sub.unsubscribe()
        self._subs.clear()
        await self.fleets.stop()
        self._nc = None
        self.log.info("node stopped")

    async def _on_attest(self, received: Received) -> Attestation:
        if not isinstance(received.body, AttestRequest):
            raise SchemaViolation("attest expects an attest request", type=received.envelope.type)
        answer = await self._call(attest, self.node, self.hsm, self.measurement, received.body)
        self.log.debug("attested", corr=received.envelope.corr)
        return answer

    async def _on_rotate(self, received: Received) -> IdentityRotation | IdentityAdopted:
        body = received.body
        async with self._rotating:
            if isinstance(body, RotateIdentity):
                # The key the orchestrator has on record is the one the proof must come from.
                self._use(await self._call(adopt, self.state_dir, self.node, body.identity_kid))
                self._use(await self._call(prepare_rotation, self.hsm, self.state_dir, self.node))
                answer = await self._call(
                    prove_rotation, self.node, self.hsm, self.measurement, body
                )
                self.log.info("identity key proved", corr=received.envelope.corr)
                return answer
            if isinstance(body, AdoptIdentity):
                kid = key_id(body.identity_alg, body.identity_key)
                self._use(await self._call(adopt, self.state_dir, self.node, kid))
                return IdentityAdopted(node_id=self.node_id, identity_kid=self.node.identity.kid)
        raise SchemaViolation(
            "rotate expects a rotation or an adoption", type=received.envelope.type
        )

    def _use(self, node: NodeIdentity) -> None:
        """Take ``node`` as this node's identity; sign with its key in force from now on."""
        if node.identity != self.node.identity:
            self.outbox.signer = self.hsm.signer(node.identity.label)
            self.log.info("identity key adopted", identity=node.identity.kid)
        self.node = node

    async def _beat(self) -> None:
        seq = 0
        while True:
            await asyncio.sleep(self.heartbeat_s)
            seq += 1
            healthy = self.hsm_ok = await asyncio.to_thread(self.hsm.healthy)
            if not healthy:
                self.log.warning("HSM does not answer")
            beat = NodeHeartbeat(
                node_id=self.node_id,
                domain=self.domain,
                seq=seq,
                uptime_ms=int(self.uptime_s() * 1000),
                hsm_ok=healthy,
            )
            try:
                await self._status(beat)
            except HsmError as exc:
                # Unsigned, a heartbeat would not count: skip it; the gap in seq shows the loss.
                self.log.warning("heartbeat not signed", error=exc.kind, seq=seq)
            except NatsError as exc:
                self.log.warning("heartbeat not sent", error=type(exc).__name__, seq=seq)

    async def _status(self, body: NodeAnnounce | NodeHeartbeat) -> None:
        assert self._nc is not None
        env: Envelope = await self._call(self.outbox.envelope, body)
        await publish(self._nc, subjects.node_status(self.node_id), env)

    async def _call(self, fn: Callable[..., T], *args: object) -> T:
        """``fn(*args)``, in a thread if it may wait on the HSM."""
        if self.hsm.blocking:
            return await asyncio.to_thread(fn, *args)
        return fn(*args)


class _NewestKey:
    """A signer over the newest identity key of a daemon: its pending key while it has one,
    else the key in force; resolved at each signature.

    An answer is signed after its handler released the rotation lock (in a thread, for a
    blocking HSM), so a second ``rotate`` command handled meanwhile could move the key under
    it; the orchestrator sends one command at a time per node, so the key does not move."""

    def __init__(self, daemon: NodeDaemon) -> None:
        self._daemon = daemon
        self.blocking = daemon.hsm.blocking

    def _key(self) -> PublicKey:
        node = self._daemon.node
        return node.pending or node.identity

    @property
    def kid(self) -> str:
        return self._key().kid

    @property
    def alg(self) -> str:
        return self._key().alg

    @property
    def public_key(self) -> bytes:
        return self._key().public_key

    def sign(self, data: bytes) -> bytes:
        return self._daemon.hsm.sign(self._key().label, data)
