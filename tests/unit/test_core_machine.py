"""The pure core under interleavings nobody wrote by hand: operator commands, members answering
(or down), time passing, and the orchestrator crashing and coming back from its log, in any
order Hypothesis finds. After every step: at most one active epoch per fleet and each fleet's
stage bundles numbered without a gap; after every command, a refusal changes nothing; at every
restart and at the end, the log replays to the very state the orchestrator holds."""

from __future__ import annotations

import asyncio
import hashlib
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from messages.errors import HsmfleetError
from messages.inputs import ROLLOUT_ACTIONS
from messages.signing import Ed25519Signer
from orchestrator.shell.recorder import Recorder
from tests.replay.world import MEMBERS, World

SIGNER = Ed25519Signer.from_seed(hashlib.sha256(b"state machine orchestrator").digest())
FLEETS = ("fleet-1", "fleet-2")
NODES = tuple(node for node, _ in MEMBERS)


class CoreMachine(RuleBasedStateMachine):
    """One world (five simulated nodes, two cosigners) per example, driven through the core."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.tmp = tempfile.TemporaryDirectory()
        self.world = World(Path(self.tmp.name), signer=SIGNER)
        self.restarts = 0

    def teardown(self) -> None:
        try:
            self._replays_to_the_same_state()
        finally:
            self.loop.run_until_complete(self.world.close())
            self.loop.close()
            self.tmp.cleanup()

    # --- what happens ----------------------------------------------------------------------

    def _command(self, act) -> None:
        """Run an operator command; a refusal must leave the log and the state as they were."""
        entries, state = len(self.world.recorder.entries), self.world.state
        try:
            act()
        except HsmfleetError:
            assert len(self.world.recorder.entries) == entries
            assert self.world.state is state

    @rule(fleet=st.sampled_from(FLEETS))
    def start_rollout(self, fleet: str) -> None:
        self._command(
            lambda: self.world.start(fleet, members={"count": 3}, rollout={"wave_size": 1})
        )

    @rule(action=st.sampled_from(ROLLOUT_ACTIONS), fleet=st.sampled_from(FLEETS))
    def operate(self, action: str, fleet: str) -> None:
        self._command(lambda: self.world.act(action, fleet))

    @rule(fleet=st.sampled_from(FLEETS))
    def rotate(self, fleet: str) -> None:
        self._command(lambda: self.world.rotate(fleet, overlap_s=60))

    @rule(steps=st.integers(min_value=1, max_value=200))
    def members_and_cosigners_answer(self, steps: int) -> None:
        self.loop.run_until_complete(self.world.drill.carry_out(steps))

    @rule(seconds=st.integers(min_value=1, max_value=120))
    def time_passes(self, seconds: int) -> None:
        self.world.clock.advance(seconds * 1000)
        self.loop.run_until_complete(self.world.drill.carry_out(5))

    @rule(node=st.sampled_from(NODES))
    def node_goes_down(self, node: str) -> None:
        self.world.nodes.down.add(node)

    @rule(node=st.sampled_from(NODES))
    def node_comes_back(self, node: str) -> None:
        self.world.nodes.down.discard(node)

    @precondition(lambda self: self.world.recorder.entries)
    @rule()
    def orchestrator_restarts(self) -> None:
        """Only the log survives; the next holder re-runs every decision in it."""
        before = self.world.state
        recorder = Recorder.resume(self.world.recorder.entries, SIGNER, "orch-a")
        assert recorder.state == before
        recorder.take_lease(recorder.epoch + 1, self.world.clock())
        self.world.recorder = self.world.drill.recorder = recorder
        self.restarts += 1

    # --- what must always hold ------------------------------------------------------------

    @invariant()
    def one_active_epoch_per_fleet(self) -> None:
        book = self.world.state.book
        for fleet, chain in book.fleets.items():
            active = [
                r for r in book.rollouts.values() if r.fleet == fleet and r.status == "active"
            ]
            assert len(active) <= 1, (fleet, [r.rollout_id for r in active])
            if active:
                assert chain.active_epoch == active[0].epoch

    @invariant()
    def stage_bundles_are_numbered_without_a_gap(self) -> None:
        for chain in self.world.state.book.fleets.values():
            assert [b.seq for b in chain.bundles] == list(range(1, len(chain.bundles) + 1))
            assert chain.logged <= len(chain.bundles)

    def _replays_to_the_same_state(self) -> None:
        entries = self.world.recorder.entries
        if entries:
            assert Recorder.resume(entries, SIGNER, "orch-a").state == self.world.state


CoreMachine.TestCase.settings = settings(
    max_examples=25,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_the_core_keeps_its_invariants_under_any_interleaving = CoreMachine.TestCase
