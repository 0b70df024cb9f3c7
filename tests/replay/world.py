"""A rollout world for pure tests and golden logs: simulated nodes (real software HSMs and node
code), two real cosigners in this process, the core deciding through a recorder at a clock the
test moves."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from cosigner.testbed import ManualClock, Testbed
from messages.canonical import b64
from messages.events import LogEntry
from messages.inputs import (
    OperateRollout,
    ReplaceMember,
    RotateFleet,
    ScheduleRotation,
    StartRetirement,
    StartRollout,
)
from messages.plan import RolloutPlan, parse_plan
from messages.signing import Ed25519Signer
from ops.sim import Drill, HsmFactory, SimFleet, soft_hsm
from orchestrator.core.rollout.state import Rollout
from orchestrator.shell.cosigning import Cosigning
from orchestrator.shell.recorder import Recorder

MEMBERS = (
    ("node-1", "dc1"),
    ("node-2", "dc1"),
    ("node-3", "dc2"),
    ("node-4", "dc2"),
    ("node-5", "dc3"),
)


class World:
    """Nodes, cosigners and an orchestrator's core with a recorder; ``fleet`` is the default
    fleet id of :meth:`plan`."""

    def __init__(
        self,
        root: Path,
        members: tuple[tuple[str, str], ...] = MEMBERS,
        *,
        signer: Ed25519Signer | None = None,
        hsm: HsmFactory = soft_hsm,
        now_ms: int | None = None,
    ) -> None:
        self.clock = ManualClock(now_ms if now_ms is not None else time.time_ns() // 1_000_000)
        self.bed = Testbed.create(root / "cosigners", self.clock)
        self.nodes = SimFleet(root / "nodes", list(members), hsm=hsm)
        self.recorder = Recorder(signer, "orch-a")
        self.recorder.take_lease(1, self.clock())
        self.cosigning = Cosigning(self.bed.client.transport, self.bed.operator)
        self.drill = Drill(self.nodes, self.cosigning, self.recorder, self.clock)
        self.drill.decide(self.nodes.policy())
        for node in self.nodes.nodes.values():
            self.drill.decide(node.announce())

    @property
    def state(self) -> Any:
        return self.drill.recorder.state

    def rollout(self, fleet: str = "fleet-1") -> Rollout:
        rollout = self.state.book.of_fleet(fleet)
        assert rollout is not None
        return rollout

    def plan_json(self, fleet: str = "fleet-1", **sections: Any) -> dict[str, Any]:
        plan: dict[str, Any] = {
            "fleet": fleet,
            "members": {"count": len(self.nodes.nodes), "min_per_domain": 1},
            "keys": {"vault": "ed25519", "signing": "ecdsa-p256-sha256"},
            "cosigners": {
                "threshold": 2,
                "pins": [
                    {"id": p.id, "name": p.pin.name, "public_key": b64(p.pin.public_key)}
                    for p in self.bed.peers
                ],
            },
            "rollout": {"wave_size": 2, "approve_publish": False, "member_deadline_s": 10},
        }
        for name, value in sections.items():
            plan[name] = {**plan[name], **value} if isinstance(plan.get(name), dict) else value
        if "ids" in plan["members"]:
            plan["members"].pop("count")
        return plan

    def plan(self, fleet: str = "fleet-1", **sections: Any) -> RolloutPlan:
        return parse_plan(self.plan_json(fleet, **sections))

    def start(self, fleet: str = "fleet-1", **sections: Any) -> list[LogEntry]:
        plan = self.plan(fleet, **sections)
        return self.drill.decide(StartRollout(plan=plan, requested_by="operator"))

    def act(self, action: str, fleet: str = "fleet-1", reason: str = "") -> list[LogEntry]:
        command = OperateRollout(fleet=fleet, action=action, requested_by="operator", reason=reason)
        return self.drill.decide(command)

    def rotate(
        self, fleet: str = "fleet-1", overlap_s: int | None = 3600, reason: str = ""
    ) -> list[LogEntry]:
        command = RotateFleet(
            fleet=fleet, requested_by="operator", overlap_s=overlap_s, reason=reason
        )
        return self.drill.decide(command)

    def schedule(self, every_days: int, overlap_s: int, fleet: str = "fleet-1") -> list[LogEntry]:
        command = ScheduleRotation(
            fleet=fleet, every_days=every_days, overlap_s=overlap_s, requested_by="operator"
        )
        return self.drill.decide(command)

    def replace(self, node_id: str, replacement: str, fleet: str = "fleet-1") -> list[LogEntry]:
        command = ReplaceMember(
            fleet=fleet, node_id=node_id, replacement=replacement, requested_by="operator"
        )
        return self.drill.decide(command)

    def retire(
        self,
        fleet: str = "fleet-1",
        successor: str | None = "fleet-2",
        *,
        force: bool = False,
        drain_s: int = 3600,
    ) -> list[LogEntry]:
        command = StartRetirement(
            fleet=fleet,
            successor=successor,
            force=force,
            drain_s=drain_s,
            requested_by="operator",
            reason=f"replaced by {successor}" if successor else "retired",
        )
        return self.drill.decide(command)

    async def settle(self) -> None:
        await self.drill.settle()

    async def wait_out(self, seconds: float) -> None:
        """Let ``seconds`` pass and carry out what falls due."""
        self.clock.advance(int(seconds * 1000))
        await self.drill.settle()

    async def close(self) -> None:
        await self.bed.close()
