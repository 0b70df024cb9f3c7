"""Driving a membership change: each step reaches every member before the next one starts.

The operator signs each step's configuration and publishes it on ``fleet.q.<fleet>.config``;
every member of the step answers with a signed acknowledgement. A step that names a member to
catch up is complete only when that member says it votes. Steps are idempotent (same epoch, same
configuration), so an interrupted change is resumed by applying its steps again.
"""

from __future__ import annotations

import asyncio

import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from messages import subjects
from messages.errors import MessageError
from messages.membership import Membership, Step
from messages.quorum import CONFIG, MEMBER_ROLE, ConfigAck, QuorumError
from messages.signing import Signer
from transport.bus import headers_for
from transport.gate import Gate
from transport.outbox import Outbox

log = structlog.get_logger("hsmfleet.quorum.reconfigure")


class ReconfigurationStalled(QuorumError):
    """Some members did not acknowledge a configuration step in time; apply the steps again."""

    kind = "reconfiguration_stalled"


async def apply_step(
    nc: NATS, operator: Signer, step: Step, *, timeout: float = 10.0, every: float = 0.5
) -> None:
    """Publish ``step``'s configuration until every member acknowledged it (and the member to
    catch up votes); raises :class:`ReconfigurationStalled` after ``timeout``."""
    membership = step.membership
    outbox = Outbox("operator", operator)
    gate = Gate(membership.trust())
    waiting = set(membership.keys)
    inbox = nc.new_inbox()
    acked: asyncio.Queue[bytes] = asyncio.Queue()

    async def on_ack(msg: Msg) -> None:
        acked.put_nowait(msg.data)

    sub = await nc.subscribe(inbox, cb=on_ack)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        while waiting:
            env = outbox.envelope(membership.to_config())
            await nc.publish(
                subjects.quorum(membership.fleet, CONFIG),
                env.encode(),
                reply=inbox,
                headers=headers_for(env),
            )
            resend = min(loop.time() + every, deadline)
            while waiting and loop.time() < resend:
                try:
                    data = await asyncio.wait_for(acked.get(), resend - loop.time())
                except TimeoutError:
                    break
                _count(gate, data, membership, step, waiting)
            if loop.time() >= deadline:
                raise ReconfigurationStalled(
                    "members did not acknowledge the configuration",
                    epoch=membership.epoch,
                    missing=sorted(waiting),
                )
    finally:
        await sub.unsubscribe()
    log.info("configuration step applied", fleet=membership.fleet, epoch=membership.epoch)


def _count(gate: Gate, data: bytes, membership: Membership, step: Step, waiting: set) -> None:
    try:
        received = gate.admit(data, MEMBER_ROLE)
    except MessageError:
        return  # a refusal (Rejected) or a stray answer: the member is asked again
    ack = received.body
    if not isinstance(ack, ConfigAck) or ack.epoch != membership.epoch:
        return
    if ack.member != received.envelope.source:
        return
    if ack.member == step.catch_up and not ack.ready:
        return
    waiting.discard(ack.member)


async def apply_steps(
    nc: NATS, operator: Signer, steps: list[Step], *, timeout: float = 10.0
) -> Membership:
    """Apply ``steps`` in order; returns the final configuration."""
    for step in steps:
        await apply_step(nc, operator, step, timeout=timeout)
    return steps[-1].membership
