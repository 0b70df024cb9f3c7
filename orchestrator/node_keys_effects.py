"""Carrying out identity-key rotations: the requests the state calls for, and their answers.

Like the service's other effects these are derived from the state, not remembered: each
rotation waiting for its node (:func:`orchestrator.node_keys.waiting`) is one
:class:`NodeKeyJob`, a request on ``fleet.node.<id>.cmd.rotate``: the challenge while it is
open, the adoption once the new key is on record. Its raw answer goes back into the core as a
:class:`RotationAnswer` or :class:`AdoptionAnswer`, so the judgement is made (and replayed) there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import structlog
from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from messages import subjects
from messages.errors import HsmfleetError
from messages.events import LogEntry
from messages.node_keys import (
    AdoptIdentity,
    AdoptionAnswer,
    RotateIdentity,
    RotationAnswer,
)
from messages.schema import Body
from orchestrator import node_keys
from orchestrator.state import State
from transport.bus import NoResponder, RequestTimeout, headers_for
from transport.outbox import Outbox

REQUEST_TIMEOUT_S = 5.0
"""How long a node may take over one request (a PKCS#11 token generates a key and signs)."""
RETRY_PAUSE_S = 0.5
ADOPTION_ATTEMPTS = 20
"""Adoption requests before a job gives up until the next kick (an adoption has no deadline)."""

log = structlog.get_logger("hsmfleet.orchestrator.node_keys")


@dataclass(frozen=True)
class NodeKeyJob:
    """One request a rotation waits on: ``body`` to ``node_id``, until ``deadline_ms`` (an
    open challenge's expiry) or, for an adoption, :data:`ADOPTION_ATTEMPTS` tries."""

    key: str
    rotation_id: str
    node_id: str
    body: RotateIdentity | AdoptIdentity
    deadline_ms: int | None

    def answer(self, reply: bytes) -> RotationAnswer | AdoptionAnswer:
        """The core's input for the node's raw ``reply``."""
        if isinstance(self.body, RotateIdentity):
            return RotationAnswer(rotation_id=self.rotation_id, node_id=self.node_id, reply=reply)
        return AdoptionAnswer(rotation_id=self.rotation_id, node_id=self.node_id, reply=reply)


def node_key_jobs(state: State) -> list[NodeKeyJob]:
    """The requests the rotations in ``state`` wait on, oldest rotation first."""
    jobs = []
    for rotation in node_keys.waiting(state):
        identity = state.nodes[rotation.node_id].identity
        if identity is None:
            continue  # judged not_enrolled when answered; nothing to prove it with meanwhile
        body: RotateIdentity | AdoptIdentity
        if rotation.status == "open":
            body = RotateIdentity(
                nonce=rotation.nonce, expires_ms=rotation.expires_ms, identity_kid=identity.kid
            )
            deadline: int | None = rotation.expires_ms
        else:
            body = AdoptIdentity(
                identity_alg=identity.identity_alg, identity_key=identity.identity_key
            )
            deadline = None
        key = f"node-key:{rotation.rotation_id}:{rotation.status}"
        jobs.append(NodeKeyJob(key, rotation.rotation_id, rotation.node_id, body, deadline))
    return jobs


async def ask(nc: NATS, outbox: Outbox, job: NodeKeyJob, timeout: float) -> bytes:
    """Send ``job``'s request signed by ``outbox`` and return the raw answer.

    Raises :class:`RequestTimeout` or :class:`NoResponder`.
    """
    subject = subjects.node_command(job.node_id, "rotate")
    request = outbox.envelope(job.body, corr=job.rotation_id)
    try:
        msg = await nc.request(
            subject, request.encode(), timeout=timeout, headers=headers_for(request)
        )
    except NatsTimeout:
        raise RequestTimeout("no answer in time", subject=subject, id=request.id) from None
    except NoRespondersError:
        raise NoResponder("nobody serves this subject", subject=subject) from None
    return msg.data


class Runner(Protocol):
    """What :func:`carry_out` needs of the orchestrator process."""

    nc: NATS
    outbox: Outbox

    @property
    def state(self) -> State: ...

    @property
    def active(self) -> bool: ...

    def submit(self, command: Body) -> Awaitable[list[LogEntry]]: ...


async def carry_out(orch: Runner, job: NodeKeyJob, clock_ms: Callable[[], int]) -> None:
    """Send ``job``'s request until the node answers and the core takes the answer, the job is
    no longer to do, or its deadline (or attempts) run out; a challenge left unanswered is
    closed by the next rotation of the node or by a tick."""
    bound = log.bind(corr=job.rotation_id, node=job.node_id, job=job.key)
    attempts = 0
    while orch.active and job.key in {j.key for j in node_key_jobs(orch.state)}:
        remaining = REQUEST_TIMEOUT_S
        if job.deadline_ms is not None:
            remaining = min(remaining, (job.deadline_ms - clock_ms()) / 1000)
            if remaining <= 0:
                return
        elif attempts == ADOPTION_ATTEMPTS:
            return
        attempts += 1
        try:
            reply = await ask(orch.nc, orch.outbox, job, max(remaining, 0.1))
            events = await orch.submit(job.answer(reply))
        except HsmfleetError as exc:
            bound.warning("node key request failed; retrying", reason=str(exc))
            await asyncio.sleep(RETRY_PAUSE_S)
            continue
        bound.info("node answered", events=[e.TYPE for e in events])
        return
