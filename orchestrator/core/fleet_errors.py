"""Refusals of the fleet flows (key rotation, its schedule, member replacement, retirement);
each has its own ``kind``, and a refused command changes nothing."""

from __future__ import annotations

from orchestrator.core.errors import CommandRefused, RolloutConflict, UnknownRollout


class UnknownFleet(UnknownRollout):
    """No rollout of this fleet is on record."""

    kind = "unknown_fleet"


class FleetNotActive(RolloutConflict):
    """The flow needs an active fleet (its first rollout activated) and this one is not."""

    kind = "fleet_not_active"


class FleetBusy(RolloutConflict):
    """A rotation, replacement or retirement of the fleet is still under way."""

    kind = "fleet_busy"


class FleetRetiring(RolloutConflict):
    """The fleet is retiring or retired: its keys are not rotated nor its members replaced."""

    kind = "fleet_retiring"


class BadRotationSetting(CommandRefused):
    """A rotation period or overlap window out of range (the overlap must end before the next
    scheduled rotation)."""

    kind = "bad_rotation_setting"


class NoActiveSuccessor(RolloutConflict):
    """A fleet is retired only once the fleet its users move to is active (or when forced)."""

    kind = "no_active_successor"


class BadRetirement(CommandRefused):
    """A retirement's drain window is out of range, or its logged notice is not the fleet's
    retirement document vouched for by enough pinned cosigners."""

    kind = "bad_retirement"


class NotAMember(CommandRefused):
    """The node to replace is not a member of the fleet's active key epoch."""

    kind = "not_a_member"


class AlreadyAMember(CommandRefused):
    """The replacement node is a member of the fleet already."""

    kind = "already_a_member"
