"""What the shell carries out for rollouts, read off the state (pure).

- :func:`member_commands`: every open member step (generate, import, join, probe of a running
  rollout; retire of an ended one; destroy of an old key epoch by an active rotation), with the
  command body built from the state;
- :func:`bundles_to_log`: the first issued but unlogged stage bundle of each fleet;
- :func:`artifacts_to_publish`: each prepared artifact without its validation bundle;
- :func:`retirements_to_log`: each retiring fleet's retirement document, once due.

Each comes with a key, so the shell runs one effect per key at a time, and each is derived from
the state alone: after a crash the next orchestrator finds the same effects still to do.
"""

from __future__ import annotations

from dataclasses import dataclass

from messages.artifact import FleetKeyArtifact
from messages.bundle import DESTROY, StageBundle
from messages.retirement import FleetRetirement
from messages.schema import Body
from orchestrator.core.rollout import decisions as rollout
from orchestrator.core.rollout import retirement as rollout_retirement
from orchestrator.core.rollout import rotation as rollout_rotation
from orchestrator.core.rollout.decisions import RETIRE
from orchestrator.core.rollout.state import ENDED, Rollout, RolloutMember
from orchestrator.core.state import State

STEPS = {**rollout.STEPS, **rollout_rotation.STEPS, **rollout_retirement.STEPS}
"""Every member step, by name."""


@dataclass(frozen=True)
class MemberCommand:
    """A command to send to a member until it answers or its step closes."""

    rollout_id: str
    fleet: str
    node_id: str
    step: str
    verb: str
    body: Body
    deadline_ms: int

    @property
    def key(self) -> str:
        return f"{self.rollout_id}/{self.node_id}/{self.step}"


def member_commands(state: State) -> list[MemberCommand]:
    """Every open member step of a running rollout (retire steps of ended ones too)."""
    out = []
    for rollout_id in sorted(state.book.rollouts):
        rollout = state.book.rollouts[rollout_id]
        for member in rollout.in_order():
            step = member.step
            if step is None or not _open(rollout, member):
                continue
            out.append(
                MemberCommand(
                    rollout_id,
                    rollout.fleet,
                    member.node_id,
                    step,
                    STEPS[step].verb,
                    STEPS[step].command(state, rollout, member),
                    member.deadline_ms or 0,
                )
            )
    return out


def _open(rollout: Rollout, member: RolloutMember) -> bool:
    """Whether ``member``'s step is one to carry out: any but retire while the rollout runs,
    retire once it ended, destroy of an old key epoch once it is active."""
    if member.step is None:
        return False
    if rollout.status == "running":
        return member.step != RETIRE
    if rollout.status in ENDED:
        return member.step == RETIRE
    return rollout.status == "active" and member.step == DESTROY


@dataclass(frozen=True)
class ToLog:
    """A document for the cosigners, with the fleet's earlier ones (for a cosigner that
    missed some) and the rollout whose plan names the cosigners."""

    fleet: str
    rollout: Rollout
    document: StageBundle | FleetKeyArtifact | FleetRetirement
    earlier: tuple[StageBundle, ...] | tuple[FleetKeyArtifact, ...]

    @property
    def key(self) -> str:
        return f"{self.document.KIND}/{self.fleet}/{self.document.seq}"


def bundles_to_log(state: State) -> list[ToLog]:
    """The first issued but unlogged stage bundle of each fleet."""
    out = []
    for fleet in sorted(state.book.fleets):
        chain = state.book.fleets[fleet]
        if chain.logged < len(chain.bundles):
            issuer = state.book.rollouts[chain.issued_by[chain.logged]]
            bundle = chain.bundles[chain.logged]
            out.append(ToLog(fleet, issuer, bundle, chain.bundles[: chain.logged]))
    return out


def artifacts_to_publish(state: State) -> list[ToLog]:
    """Each prepared artifact whose validation bundle is not yet on record, of a rollout that
    has not ended (an ended rollout's artifact is never countersigned: the next artifact of the
    fleet has it logged, uncountersigned, to keep the epochs without a gap)."""
    out = []
    for rollout_id in sorted(state.book.rollouts):
        rollout = state.book.rollouts[rollout_id]
        if rollout.artifact is None or rollout.validation is not None:
            continue
        if rollout.status in ENDED:
            continue
        chain = state.book.fleets[rollout.fleet]
        earlier = tuple(a for a in chain.artifacts if a.epoch < rollout.artifact.epoch)
        out.append(ToLog(rollout.fleet, rollout, rollout.artifact, earlier))
    return out


def retirements_to_log(state: State) -> list[ToLog]:
    """Each retirement's fleet-retirement document, once its ``retire`` bundle is logged."""
    due = rollout_retirement.to_log(state)
    return [ToLog(r.fleet, r, rollout_retirement.document(r), ()) for r in due]
