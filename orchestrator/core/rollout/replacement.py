"""Member replacement in the pure core: a failed member of an active fleet is replaced by a
freshly attested node, under the next key epoch with the same keys.

The replacement is a rollout over the active rollout's members: those that stay carry over what
they proved (attestation, keys, the configuration they serve); the replaced member counts as
lost; the newcomer goes through every stage. ``enroll`` challenges the newcomer alone (a node
whose attestation fails is never sent anything: the keys are wrapped only to members attested
for this rollout); ``ceremony`` has a current key holder wrap the fleet keys it holds to the
newcomer (same keys, same labels: the ceremony is idempotent per key rollout, a new recipient);
``quorum`` walks the safe membership-change steps (:func:`orchestrator.core.evidence.
membership_steps`: the newcomer joins and catches up from a majority before it votes, then the
replaced member is removed), each applied by every active member before the next, and commits
a test write at the new epoch; ``publish`` lists the same keys with the new quorum;
``activate``.
"""

from __future__ import annotations

from messages.bundle import ENROLL
from messages.events import LogEntry, PlannedMember, ReplacementStarted, StageEntered
from messages.inputs import ReplaceMember
from orchestrator.core import evidence
from orchestrator.core.context import Context
from orchestrator.core.errors import UnknownNode
from orchestrator.core.fleet_errors import AlreadyAMember, NotAMember
from orchestrator.core.rollout.rotation import active_rollout, not_after_ms
from orchestrator.core.state import State


def replace_member(state: State, c: ReplaceMember, ctx: Context) -> list[LogEntry]:
    """Begin replacing ``c.node_id`` in the active fleet ``c.fleet`` by ``c.replacement``."""
    active = active_rollout(state, c.fleet)
    members = evidence.fleet_members(active)
    if c.node_id not in members:
        raise NotAMember(
            "the node is not a member of the fleet's active epoch", fleet=c.fleet, node=c.node_id
        )
    if c.replacement in members:
        raise AlreadyAMember("the replacement is a member already", node=c.replacement)
    node = state.nodes.get(c.replacement)
    if node is None:
        raise UnknownNode("the replacement has not announced itself", node_id=c.replacement)
    rollout_id = ctx.new_id(f"replacement:{c.fleet}", 0)
    return [
        ReplacementStarted(
            rollout_id=rollout_id,
            fleet=c.fleet,
            epoch=state.book.fleets[c.fleet].next_epoch,
            predecessor=active.rollout_id,
            replaced=c.node_id,
            replacement=PlannedMember(c.replacement, node.domain),
            not_before_ms=ctx.now_ms,
            not_after_ms=not_after_ms(active, ctx.now_ms),
            requested_by=c.requested_by,
        ),
        StageEntered(rollout_id, c.fleet, ENROLL),
    ]
