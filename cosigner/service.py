"""A cosigner on NATS: signed requests on ``cosign.<cosigner_id>.sign``.

Every request passes a :class:`~transport.gate.Gate` that trusts only the requester keys pinned in
the cosigner's configuration; answers are signed with the cosigner's key. Several queue-group
subscriptions serve the subject so that concurrent requests reach the cosigner together and are
logged in one batch. Refusals are answered with :class:`~transport.bus.Rejected` and counted, by
kind, in the gate (bad messages) and in the cosigner (bad documents and checkpoints).
"""

from __future__ import annotations

import asyncio

from nats.aio.client import Client as NATS
from nats.aio.subscription import Subscription

from cosigner.engine import Cosigner
from messages import subjects
from messages.cosigning import (
    REQUESTER_ROLE,
    CheckpointRequest,
    ConsistencyRequest,
    InclusionRequest,
    LatestCheckpoint,
    Proof,
    ReceiptRequest,
    SignRequest,
    WitnessRequest,
)
from messages.errors import HsmfleetError
from messages.schema import Body
from transport.bus import serve
from transport.gate import Gate, Received
from transport.outbox import Outbox

WORKERS = 16


class UnexpectedRequest(HsmfleetError):
    """A well-formed, signed message that is not a cosigner request."""

    kind = "unexpected_request"


class NatsService:
    """Serves one cosigner's subject."""

    def __init__(self, nc: NATS, cosigner: Cosigner) -> None:
        self.nc = nc
        self.cosigner = cosigner
        self.gate = Gate(cosigner.config.trust())
        self.outbox = Outbox(cosigner.id, cosigner.signer)
        self.subject = subjects.cosign(cosigner.id)
        self._subscriptions: list[Subscription] = []

    async def start(self) -> None:
        self.cosigner.start_refresh()
        for _ in range(WORKERS):
            self._subscriptions.append(
                await serve(
                    self.nc,
                    self.subject,
                    self.gate,
                    REQUESTER_ROLE,
                    self.handle,
                    self.outbox,
                    queue=f"cosigner-{self.cosigner.id}",
                )
            )
        await self.nc.flush()

    async def stop(self) -> None:
        for subscription in self._subscriptions:
            await subscription.unsubscribe()
        self._subscriptions.clear()

    async def handle(self, received: Received) -> Body:
        """Answer one admitted request."""
        body = received.body
        cosigner = self.cosigner
        notary = cosigner.notary
        match body:
            case SignRequest():
                return await cosigner.sign(body.document)
            case ReceiptRequest():
                return await cosigner.receipt(body.digest)
            case WitnessRequest():
                return await cosigner.cosign(body.old_size, body.consistency, body.checkpoint)
            case CheckpointRequest():
                return LatestCheckpoint(checkpoint=notary.checkpoint())
            case InclusionRequest():
                proof = await asyncio.to_thread(notary.inclusion_proof, body.index, body.size)
                return Proof(proof=tuple(proof))
            case ConsistencyRequest():
                proof = await asyncio.to_thread(notary.consistency_proof, body.old_size, body.size)
                return Proof(proof=tuple(proof))
        raise UnexpectedRequest("not a cosigner request", type=body.TYPE)

    def rejects(self) -> dict[str, int]:
        return dict(self.gate.rejects)
