"""How envelopes travel over NATS: publish, request/reply and serving through a :class:`Gate`."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from messages.envelope import Envelope
from messages.errors import HsmfleetError
from messages.rejected import Rejected
from messages.schema import Body
from transport.gate import Gate, Received
from transport.outbox import Outbox

MSG_ID_HEADER = "Nats-Msg-Id"
log = structlog.get_logger("hsmfleet.bus")

Handler = Callable[[Received], Awaitable[Body | None]]


_REJECTION = frozenset({Rejected.TYPE})
INTERNAL = "internal"


class RequestRejected(HsmfleetError):
    """The receiver refused a request and said why."""

    kind = "request_rejected"


class RequestTimeout(HsmfleetError):
    """No answer to a request arrived in time."""

    kind = "request_timeout"


class NoResponder(HsmfleetError):
    """Nobody serves the subject a request was sent to."""

    kind = "no_responder"


def headers_for(env: Envelope) -> dict[str, str]:
    """NATS headers of ``env``: its id as ``Nats-Msg-Id`` so JetStream de-duplicates it."""
    return {MSG_ID_HEADER: env.id}


async def publish(nc: NATS, subject: str, env: Envelope) -> None:
    """Publish ``env`` on ``subject``."""
    await nc.publish(subject, env.encode(), headers=headers_for(env))


async def ask(nc: NATS, subject: str, env: Envelope, timeout: float) -> bytes:
    """Send ``env`` and return the raw answer, for a receiver that judges it itself (the
    orchestrator's pure core). Raises :class:`RequestTimeout` or :class:`NoResponder`."""
    try:
        msg = await nc.request(subject, env.encode(), timeout=timeout, headers=headers_for(env))
    except NatsTimeout:
        raise RequestTimeout("no answer in time", subject=subject, id=env.id) from None
    except NoRespondersError:
        raise NoResponder("nobody serves this subject", subject=subject) from None
    return msg.data


async def request(
    nc: NATS, subject: str, env: Envelope, gate: Gate, role: str, timeout: float = 2.0
) -> Received:
    """Send ``env`` and admit the answer through ``gate`` as signed for ``role``.

    Raises :class:`RequestTimeout`, :class:`NoResponder`, :class:`RequestRejected`, or the
    gate's error.
    """
    received = gate.admit(await ask(nc, subject, env, timeout), role, unsigned_types=_REJECTION)
    if isinstance(received.body, Rejected):
        raise RequestRejected(received.body.reason, kind=received.body.kind, subject=subject)
    return received


async def serve(
    nc: NATS,
    subject: str,
    gate: Gate,
    role: str | None,
    handler: Handler,
    outbox: Outbox,
    queue: str = "",
) -> Subscription:
    """Subscribe ``handler`` to ``subject`` behind ``gate``.

    Only admitted messages reach the handler. When the message expects an answer, the handler's
    body is sent back in an envelope from ``outbox``; a refused message or a handler that raises
    an :class:`HsmfleetError` is answered with :class:`Rejected`. A handler's refusal (and a
    handler that fails outright, as ``internal``) is counted in the gate like its own rejects.
    """

    async def on_message(msg: Msg) -> None:
        causation = None
        try:
            received = gate.admit(msg.data, role)
        except HsmfleetError as exc:  # counted by the gate
            answer: Body | None = Rejected(kind=exc.kind, reason=str(exc))
        else:
            causation = received.envelope.id
            try:
                answer = await handler(received)
            except HsmfleetError as exc:
                gate.refused(exc.kind)
                answer = Rejected(kind=exc.kind, reason=str(exc))
            except Exception:
                log.exception("handler failed", subject=msg.subject)
                gate.refused(INTERNAL)
                answer = Rejected(kind=INTERNAL, reason="the receiver failed; see its log")
        if msg.reply and answer is not None:
            if outbox.blocking:
                reply = await asyncio.to_thread(outbox.envelope, answer, causation=causation)
            else:
                reply = outbox.envelope(answer, causation=causation)
            await nc.publish(msg.reply, reply.encode(), headers=headers_for(reply))

    return await nc.subscribe(subject, queue=queue, cb=on_message)
