"""The node daemon: the process beside each HSM (DESIGN 1).

On start it announces itself on ``fleet.node.<id>.status``, then heartbeats there and answers
the orchestrator's signed commands on ``fleet.node.<id>.cmd.<verb>``. Commands pass the gate
against the pinned orchestrator keys; the node's own messages are signed by its identity key
inside the HSM.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import structlog
from nats.aio.client import Client as NATS
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError

from messages import subjects
from messages.attestation import Attestation, AttestRequest, NodeAnnounce, NodeHeartbeat
from messages.bus import publish, serve
from messages.errors import SchemaViolation
from messages.gate import Gate, Received
from messages.outbox import Outbox
from messages.signing import TrustStore
from node.attest import attest
from node.hsm.base import Hsm
from node.identity import IDENTITY, establish
from node.measurement import measure
from node.pins import ORCHESTRATOR_ROLE

log = structlog.get_logger("hsmfleet.node")


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
    ) -> None:
        self.hsm = hsm
        self.domain = subjects.token(domain, "failure domain")
        self.node = establish(hsm, state_dir, node_id)
        self.measurement = measurement or measure()
        self.heartbeat_s = heartbeat_s
        self.outbox = Outbox(self.node.node_id, hsm.signer(IDENTITY))
        self.gate = Gate(orchestrator)
        self.log = log.bind(node_id=self.node.node_id, domain=domain, hsm=hsm.kind)
        self._nc: NATS | None = None
        self._subs: list[Subscription] = []
        self._heartbeat: asyncio.Task[None] | None = None
        self._started = 0.0

    @property
    def node_id(self) -> str:
        return self.node.node_id

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
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
            self._heartbeat = None
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._subs.clear()
        self.log.info("node stopped")

    async def _on_attest(self, received: Received) -> Attestation:
        if not isinstance(received.body, AttestRequest):
            raise SchemaViolation("attest expects an attest request", type=received.envelope.type)
        answer = attest(self.node, self.hsm, self.measurement, received.body)
        self.log.debug("attested", corr=received.envelope.corr)
        return answer

    async def _beat(self) -> None:
        seq = 0
        while True:
            await asyncio.sleep(self.heartbeat_s)
            seq += 1
            healthy = await asyncio.to_thread(self.hsm.healthy)
            if not healthy:
                self.log.warning("HSM does not answer")
            with contextlib.suppress(NatsError):
                await self._status(
                    NodeHeartbeat(
                        node_id=self.node_id,
                        domain=self.domain,
                        seq=seq,
                        uptime_ms=int((time.monotonic() - self._started) * 1000),
                        hsm_ok=healthy,
                    )
                )

    async def _status(self, body: NodeAnnounce | NodeHeartbeat) -> None:
        assert self._nc is not None
        await publish(self._nc, subjects.node_status(self.node_id), self.outbox.envelope(body))
