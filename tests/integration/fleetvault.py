"""What the fleet tests share on the rollout bed (:mod:`tests.replay.rolloutbed`): a fleet's
vault keys provisioned to every node, and the orchestrator's flows started and waited for."""

from __future__ import annotations

from typing import Any

from messages.events import StartRetirement, StartRollout
from messages.plan import parse_plan
from node.fleets import VAULT_DIR
from node.vault.keys import VaultKeys
from orchestrator.service import Orchestrator
from tests.replay.fleet import wait_for
from tests.replay.rolloutbed import RolloutBed


def provision_vault_keys(bed: RolloutBed, fleet: str) -> VaultKeys:
    """New vault keys of ``fleet``, the same file in every node's ``<state>/vault``."""
    keys = VaultKeys.generate()
    for node_dir in sorted((bed.root / "nodes").iterdir()):
        (node_dir / VAULT_DIR).mkdir(exist_ok=True)
        keys.save(node_dir / VAULT_DIR / f"{fleet}.keys")
    return keys


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
