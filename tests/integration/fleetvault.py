"""What the fleet tests share on the rollout bed (:mod:`tests.replay.rolloutbed`): the
orchestrator's flows started and waited for, and vault clients the way a real client makes
them: from a validation bundle it verified against its pins (:class:`Follower`), its requests
authorized by the bed's account authority."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp

from messages.inputs import StartRetirement, StartRollout
from messages.log_proofs import needed_proofs
from messages.pins import Pins
from messages.plan import parse_plan
from messages.validation import ValidationBundle
from messages.vault_authorization import AccountAuthority, Authorization
from messages.verifier_state import VerifierState
from messages.verify import Accepted, parse_bundle, verify_bundle
from orchestrator.shell.service import Orchestrator
from tests.replay.fleet import wait_for
from tests.replay.rolloutbed import RolloutBed
from transport.log_reader import LogReader
from transport.vault_client import VaultClient


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class Follower:
    """A client pinned to the bed's original keys, following several fleets: one verifier
    state per fleet for epoch and digest, the rest (logs' tree heads, walked keys, retired
    fleets) shared."""

    pins: Pins
    state: VerifierState = field(default_factory=VerifierState)
    epochs: dict[str, tuple[int, str]] = field(default_factory=dict)

    def of(self, fleet: str) -> VerifierState:
        epoch, digest = self.epochs.get(fleet, (None, None))
        return replace(self.state, epoch=epoch, digest=digest)

    async def accept(self, served: ValidationBundle | dict) -> Accepted:
        """Verify ``served`` with the consistency proofs it needs, read from the logs."""
        bundle = parse_bundle(served)
        fleet = bundle.artifact.fleet
        proofs = {}
        async with aiohttp.ClientSession() as http:
            for log, old, new, url in needed_proofs(bundle, self.pins, self.of(fleet)):
                proofs[(log, old, new)] = await LogReader(http, url).consistency(old, new)
        accepted = verify_bundle(bundle, self.pins, self.of(fleet), now_ms(), proofs)
        self.state = replace(accepted.state, epoch=None, digest=None)
        self.epochs[fleet] = (accepted.state.epoch, accepted.state.digest)
        return accepted


def authorizer(bed: RolloutBed, fleet: str):
    """``authorize(user, op, request)`` for ``fleet``'s vault clients: the bed's authority."""
    authority = AccountAuthority(bed.authority)

    def authorize(user: str, op: str, request: str) -> Authorization:
        return authority.authorize(fleet, user, op, request, now_ms())

    return authorize


def vault_client(bed: RolloutBed, accepted: Accepted, **options: Any) -> VaultClient:
    """A vault client of the fleet a verified bundle describes, with the vault keys it lists
    in force now."""
    fleet = accepted.artifact.fleet
    return VaultClient.from_bundle(
        bed.nc, accepted, authorizer(bed, fleet), now_ms=now_ms(), **options
    )


async def started(orch: Orchestrator, members: int = 5) -> None:
    """Wait for ``orch`` to hold the lease and know at least ``members`` nodes."""
    await wait_for(lambda: orch.active, what="the orchestrator to take the lease")
    await wait_for(lambda: len(orch.state.nodes) >= members, what=f"{members} announcements")


async def roll_out(orch: Orchestrator, bed: RolloutBed, fleet: str, **sections: Any) -> None:
    """Roll out ``fleet`` to the bed's nodes (``sections`` as :meth:`RolloutBed.plan` takes
    them) and wait for its first epoch to be active."""
    plan = parse_plan(bed.plan(fleet, **sections))
    await orch.submit(StartRollout(plan=plan, requested_by="test"))
    await wait_for(
        lambda: (
            orch.state.book.fleets.get(fleet) is not None
            and orch.state.book.fleets[fleet].active_epoch == 1
        ),
        timeout=60,
        what=f"{fleet} to activate",
    )


async def start_retirement(
    orch: Orchestrator, fleet: str, successor: str, *, drain_s: int = 1
) -> None:
    """Have ``orch`` retire ``fleet`` in favour of ``successor`` after a drain of ``drain_s``."""
    await orch.submit(
        StartRetirement(
            fleet=fleet,
            successor=successor,
            force=False,
            drain_s=drain_s,
            requested_by="test",
            reason=f"replaced by {successor}",
        )
    )


async def until_retired(orch: Orchestrator, fleet: str) -> None:
    """Wait for ``fleet``'s retirement to be logged."""
    await wait_for(
        lambda: orch.state.book.of_fleet(fleet).status == "retired",
        timeout=60,
        what=f"the retirement of {fleet}",
    )
