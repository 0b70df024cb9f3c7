"""Errors the orchestrator raises on purpose; each has its own ``kind`` (metrics count by it)."""

from __future__ import annotations

from messages.errors import HsmfleetError


class CommandRefused(HsmfleetError):
    """A command does not fit the current state (the caller's mistake, answered 4xx)."""

    kind = "command_refused"


class UnknownNode(CommandRefused):
    """The command names a node that never announced itself."""

    kind = "unknown_node"


class UnknownEnrollment(CommandRefused):
    """The command or answer names an enrollment that was never opened."""

    kind = "unknown_enrollment"


class EnrollmentConflict(CommandRefused):
    """The node is already enrolled, or its enrollment is in progress."""

    kind = "enrollment_conflict"


class NoPolicy(CommandRefused):
    """No enrollment policy is in force yet."""

    kind = "no_policy"


class Fenced(HsmfleetError):
    """A decision was made under a lease that is not the one in force."""

    kind = "fenced"


class AppendConflict(HsmfleetError):
    """The log moved on since the writer last read it: another writer appended."""

    kind = "append_conflict"


class StoreUnavailable(HsmfleetError):
    """JetStream did not answer an append or read in time."""

    kind = "store_unavailable"


class LogCorrupt(HsmfleetError):
    """An entry of a log cannot be read or breaks the chain; ``where`` names the line or seq."""

    kind = "log_corrupt"

    def __init__(self, where: str, message: str, **detail: object) -> None:
        super().__init__(f"{where}: {message}", **detail)
        self.where = where


class ReplayDivergence(HsmfleetError):
    """Re-running a recorded decision gave other events than the log holds."""

    kind = "replay_divergence"

    def __init__(self, where: str, message: str, **detail: object) -> None:
        super().__init__(f"{where}: {message}", **detail)
        self.where = where


class NotActive(HsmfleetError):
    """This orchestrator is a standby; only the lease holder takes commands."""

    kind = "not_active"


class UnknownRollout(CommandRefused):
    """No rollout of this fleet (or of this id) is on record."""

    kind = "unknown_rollout"


class RolloutConflict(CommandRefused):
    """The rollout is not in a state where this action applies (say, resuming an aborted one)."""

    kind = "rollout_conflict"


class FleetActive(RolloutConflict):
    """The fleet is active: a new plan cannot replace a fleet that clients already use."""

    kind = "fleet_active"


class MembersUnavailable(CommandRefused):
    """The announced nodes cannot meet the plan's member selection, spread or quorum."""

    kind = "rollout_members"
