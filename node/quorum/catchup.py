"""Catch-up: copy the latest accepted values of a majority into a member before it votes.

The member asks other members of the prepare set for their accepted records, page by page; once
a majority (counting itself when its own state is complete) delivered everything, it keeps for
each record the value with the highest ballot and adopts it under the accept rule
(:func:`node.quorum.rules.adopt`). This is the copy CASPaxos 2.3 describes as the cheaper
alternative to rescanning every key when a member joins; the paper requires it to start after
every proposer sends accepts to the new member. A member serves the copy only once it runs the
joiner's configuration, and acceptors refuse requests of older configurations, so nothing
committed without the joiner can be missing from the copy.
"""

from __future__ import annotations

import asyncio

import structlog
from nats.aio.client import Client as NATS

from messages import subjects
from messages.membership import Membership
from messages.quorum import (
    MEMBER_ROLE,
    SNAPSHOT,
    Ballot,
    CatchUpFailed,
    Snapshot,
    SnapshotRequest,
)
from node.quorum.acceptor import Acceptor
from transport.bus import request
from transport.gate import Gate
from transport.outbox import Outbox

log = structlog.get_logger("hsmfleet.quorum.catchup")

MAX_PAGES = 100_000

Copies = dict[str, tuple[Ballot, bytes | None, bytes | None]]


async def catch_up(
    nc: NATS,
    outbox: Outbox,
    membership: Membership,
    acceptor: Acceptor,
    *,
    counts_self: bool,
    timeout: float = 1.0,
    page: int = 500,
) -> int:
    """Copy from a majority of ``membership``'s prepare set into ``acceptor``.

    ``counts_self``: this member's own state is complete and counts toward the majority.
    Returns how many records changed; raises :class:`CatchUpFailed` when too few members
    delivered a complete copy in time.
    """
    me = outbox.source
    others = sorted(membership.prepare_set - {me})
    needed = membership.majority_size - (1 if counts_self and me in membership.prepare_set else 0)
    gate = Gate(membership.trust())
    results = await asyncio.gather(
        *(_copy(nc, outbox, gate, membership, other, page, timeout) for other in others),
        return_exceptions=True,
    )
    complete = [r for r in results if not isinstance(r, BaseException)]
    if len(complete) < needed:
        reasons = [str(r) for r in results if isinstance(r, BaseException)]
        raise CatchUpFailed(
            "too few members delivered their records",
            got=len(complete),
            needed=needed,
            errors=reasons,
        )
    merged: Copies = {}
    for copies in complete:
        for key, copy in copies.items():
            if key not in merged or copy[0] > merged[key][0]:
                merged[key] = copy
    changed = acceptor.adopt(merged)
    log.info("caught up", member=me, records=len(merged), changed=changed, sources=len(complete))
    return changed


async def _copy(
    nc: NATS,
    outbox: Outbox,
    gate: Gate,
    membership: Membership,
    member: str,
    page: int,
    timeout: float,
) -> Copies:
    """Every accepted record of ``member``, read page by page once it runs ``membership``."""
    copies: Copies = {}
    after = ""
    fleet = membership.fleet
    subject = subjects.quorum(fleet, SNAPSHOT)
    for _ in range(MAX_PAGES):
        ask = SnapshotRequest(
            fleet=fleet, epoch=membership.epoch, member=member, after=after, limit=page
        )
        answer = await request(nc, subject, outbox.envelope(ask), gate, MEMBER_ROLE, timeout)
        body = answer.body
        if answer.envelope.source != member or not isinstance(body, Snapshot):
            raise CatchUpFailed("a snapshot came from someone else", member=member)
        for key, n, by, value, justification in zip(
            body.keys, body.accepteds, body.accepted_bys, body.values, body.justifications,
            strict=True,
        ):  # fmt: skip
            if key <= after:
                raise CatchUpFailed("snapshot keys are out of order", member=member, key=key)
            copies[key] = (Ballot(n, by), value, justification)
            after = key
        if not body.more:
            return copies
    raise CatchUpFailed("snapshot has too many pages", member=member)
