"""Fleet retirement: the logged notice that a fleet is done.

A :class:`FleetRetirement` names the fleet, the last key epoch it ever published
(``last_epoch``), its successor (a fleet id, or null when none takes over), when it was retired
and why. It is a digested document, format ``hsmfleet/fleet-retirement/v1``, kind
``fleet-retirement``, logged by cosigners like a stage bundle. A cosigner accepts it only if
``last_epoch`` is the last artifact epoch it logged for the fleet (:func:`check_retirement`) and
the fleet is not retired yet; from then on it logs no artifact or stage bundle of that fleet
(:class:`FleetRetired`). A verifier that ingests the logged retirement
(:func:`messages.verify.ingest_retirement`) refuses every later bundle of the fleet with
:class:`messages.retirement.FleetRetired` (kind ``fleet_retired``).

How the orchestrator builds and submits one (``transport.cosign_client``)::

    retirement = FleetRetirement(
        fleet="fleet-1", last_epoch=3, successor="fleet-2",
        retired_at=format_time(now_ms), reason="replaced by fleet-2",
    )
    logged = await client.log(retirement)        # CosigningClient: logged and witnessed by k
    notice = client.notice(logged)               # countersigned: a LoggedNotice to publish
    notice.to_json()                             # what clients and `hsmfleet verify` ingest

Log the fleet's ``retire`` stage bundle first: once the retirement is logged, the cosigners
refuse every further document of that fleet. The notice (:class:`messages.validation.
LoggedNotice`, format ``hsmfleet/logged-notice/v1``) is ``{"format", "document", "proofs"}``
with ``document`` the retirement and ``proofs`` log proofs exactly as in a validation bundle.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from messages.documents import Digested, is_name, require, time_ms
from messages.verification import VerificationError

FORMAT = "hsmfleet/fleet-retirement/v1"
KIND = "fleet-retirement"
MAX_REASON = 1024


@dataclass(frozen=True)
class FleetRetirement(Digested):
    """A fleet's end: its last epoch, its successor, when and why."""

    FORMAT = FORMAT
    KIND = KIND

    fleet: str
    last_epoch: int
    successor: str | None
    retired_at: str
    reason: str
    format: str = field(default=FORMAT, kw_only=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        require(is_name(self.fleet), "fleet id must be a name", fleet=self.fleet)
        require(self.last_epoch >= 1, "last_epoch must be at least 1", last=self.last_epoch)
        require(
            self.successor is None or (is_name(self.successor) and self.successor != self.fleet),
            "successor must be another fleet's id or null",
            successor=self.successor,
        )
        time_ms(self.retired_at, "retired_at")
        require(len(self.reason) <= MAX_REASON, "reason is too long", length=len(self.reason))

    @property
    def seq(self) -> int:
        """Its position for a cosigner's statement: the last epoch."""
        return self.last_epoch


class RetirementError(VerificationError):
    """A retirement, or a document of a retired fleet, was refused (by a cosigner or by a
    verifier)."""

    kind = "retirement"


class FleetRetired(RetirementError):
    """The fleet was retired: nothing more of it is logged."""

    kind = "fleet_retired"


class RetirementEpochMismatch(RetirementError):
    """``last_epoch`` is not the last artifact epoch logged for the fleet (or none was)."""

    kind = "retirement_epoch_mismatch"


def check_retirement(last_epoch: int | None, retired: bool, retirement: FleetRetirement) -> None:
    """Refuse ``retirement`` unless the fleet is not retired yet and ``last_epoch`` (the last
    artifact epoch logged for it, None if none) equals the retirement's ``last_epoch``."""
    if retired:
        raise FleetRetired("the fleet is already retired", fleet=retirement.fleet)
    if last_epoch != retirement.last_epoch:
        raise RetirementEpochMismatch(
            "last_epoch is not the last epoch logged for the fleet",
            fleet=retirement.fleet,
            last_epoch=retirement.last_epoch,
            logged=last_epoch,
        )
