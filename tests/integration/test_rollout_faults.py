"""Members lost during a rollout on a real nats-server, and a rollout aborted: the plan says
whether a lost minority pauses the rollout or is left out, and either way it never wedges; an
abort destroys the fleet keys on every member over NATS and closes the chain with an ``abort``
bundle; a node daemon restarted after the rollout serves the fleet's replication group again."""

from __future__ import annotations

import dataclasses

import pytest
from nats.js.api import DiscardPolicy

from messages.bundle import ABORT
from messages.ceremony import key_label
from messages.inputs import OperateRollout, StartRollout
from messages.plan import parse_plan
from messages.subjects import EVENT_STREAM
from messages.verifier_state import VerifierState
from messages.verify import verify_bundle
from node.daemon import NodeDaemon
from node.hsm.base import KeyNotFound
from node.pins import read_pins
from orchestrator.core.decisions import open_enrollments
from orchestrator.core.errors import AppendConflict
from orchestrator.core.rollout.effects import member_commands
from tests.replay.fleet import running, wait_for
from tests.replay.rolloutbed import MEMBERS, SOFTWARE, served_bed


@pytest.fixture
async def bed(tmp_path, rollout_template):
    async with served_bed(rollout_template, tmp_path, "faults") as bed:
        yield bed


def act(action: str) -> OperateRollout:
    return OperateRollout(fleet="fleet-1", action=action, requested_by="test", reason="")


def daemon(bed, node_id: str) -> NodeDaemon:
    return next(d for d in bed.daemons if d.node_id == node_id)


async def test_a_member_lost_in_enroll_pauses_and_resume_goes_on_without_it(bed):
    async with running(bed.config) as orch:
        await wait_for(lambda: len(orch.state.nodes) == 5, what="five nodes")
        await daemon(bed, "node-2").stop()
        plan = bed.plan(rollout={"on_member_loss": "pause", "member_deadline_s": 2})
        await orch.submit(StartRollout(plan=parse_plan(plan), requested_by="test"))
        await wait_for(
            lambda: orch.state.book.of_fleet("fleet-1").status == "paused",
            timeout=30,
            what="the pause",
        )
        rollout = orch.state.book.of_fleet("fleet-1")
        assert rollout.members["node-2"].status == "failed" and "node-2" in rollout.reason
        await orch.submit(act("resume"))
        await wait_for(
            lambda: orch.state.book.of_fleet("fleet-1").status == "active",
            timeout=60,
            what="the rollout without node-2",
        )
        rollout = orch.state.book.of_fleet("fleet-1")
    assert rollout.members["node-2"].status == "lost"
    assert {m.id for m in rollout.artifact.quorum.members} == {
        "node-1",
        "node-3",
        "node-4",
        "node-5",
    }
    verify_bundle(
        rollout.validation, bed.pins(), VerifierState(), rollout.artifact.not_before_ms + 1
    )


async def test_the_generator_lost_in_the_ceremony_is_left_out_with_continue(bed):
    async with running(bed.config) as orch:
        await wait_for(lambda: len(orch.state.nodes) == 5, what="five nodes")
        plan = bed.plan(rollout={"on_member_loss": "continue", "member_deadline_s": 2})
        await orch.submit(StartRollout(plan=parse_plan(plan), requested_by="test"))
        await orch.submit(act("pause"))  # hold it in enroll while node-1 attests
        await wait_for(
            lambda: orch.state.book.of_fleet("fleet-1").members["node-1"].attestation,
            what="node-1's attestation",
        )
        await daemon(bed, "node-1").stop()  # the first member: the one to make the keys
        await orch.submit(act("resume"))
        await wait_for(
            lambda: orch.state.book.of_fleet("fleet-1").status == "active",
            timeout=60,
            what="the rollout without node-1",
        )
        rollout = orch.state.book.of_fleet("fleet-1")
    assert rollout.members["node-1"].status == "lost" and rollout.generator != "node-1"
    assert {m.id for m in rollout.artifact.quorum.members} == {
        "node-2",
        "node-3",
        "node-4",
        "node-5",
    }


async def test_abort_destroys_the_keys_on_every_member_and_logs_it(bed):
    async with running(bed.config) as orch:
        await wait_for(lambda: len(orch.state.nodes) == 5, what="five nodes")
        plan = bed.plan(rollout={"approve_publish": True})
        await orch.submit(StartRollout(plan=parse_plan(plan), requested_by="test"))
        await wait_for(
            lambda: orch.state.book.of_fleet("fleet-1").awaiting_approval,
            timeout=60,
            what="the gate before publish",
        )
        assert all("fleet-1" in d.fleets.replicas for d in bed.daemons)
        await orch.submit(act("abort"))
        chain = lambda: orch.state.book.fleets["fleet-1"]  # noqa: E731
        await wait_for(lambda: chain().logged == 4, timeout=30, what="the abort bundle")
        rollout = orch.state.book.of_fleet("fleet-1")
    assert rollout.status == "aborted" and chain().bundles[-1].stage == ABORT
    assert {r.node for r in chain().bundles[-1].evidence.receipts} == {n for n, _ in MEMBERS}
    for node in bed.daemons:
        assert "fleet-1" not in node.fleets.replicas
        with pytest.raises(KeyNotFound):
            node.hsm.public_key(key_label("fleet-1", rollout.rollout_id, "vault"))
    for server in bed.cosigners:
        assert server.cosigner.notary.size == 4  # enroll, ceremony, quorum, abort


async def test_a_restarted_node_serves_the_fleet_again(bed):
    async with running(bed.config) as orch:
        await wait_for(lambda: len(orch.state.nodes) == 5, what="five nodes")
        await orch.submit(StartRollout(plan=parse_plan(bed.plan()), requested_by="test"))
        await wait_for(
            lambda: orch.state.book.of_fleet("fleet-1").status == "active",
            timeout=60,
            what="the rollout",
        )
    old = daemon(bed, "node-3")
    await old.stop()
    bed.daemons.remove(old)
    again = NodeDaemon(
        old.hsm,
        bed.root / "nodes" / "node-3",
        "dc2",
        read_pins(bed.root / "pins.json"),
        node_id="node-3",
        measurement=SOFTWARE,
    )
    await again.start(bed.nc)
    bed.daemons.append(again)
    replica = again.fleets.replicas["fleet-1"][1]
    await replica.wait_voting(10)


def waiting_only_for(orch, node_id: str) -> bool:
    """Whether the one answer the orchestrator still waits for is ``node_id``'s."""
    state = orch.state
    waiting = [c.node_id for c in member_commands(state)]
    waiting += [e.node_id for e in open_enrollments(state)]
    return waiting == [node_id]


async def test_an_answer_that_arrives_while_the_log_takes_no_appends_is_recorded_later(bed):
    """The event stream refuses appends for a while (full, discarding new messages: what a
    client sees during a stream leader election too) when the one member the rollout waits
    for answers: its answer is recorded once the stream takes appends again, not dropped
    until the member's deadline fails it."""
    async with running(bed.config) as orch:
        await wait_for(lambda: orch.active and len(orch.state.nodes) == 5, what="five nodes")
        plan = bed.plan(rollout={"on_member_loss": "pause", "member_deadline_s": 20})
        late = daemon(bed, "node-2")
        await late.stop()
        bed.daemons.remove(late)
        await orch.submit(StartRollout(plan=parse_plan(plan), requested_by="test"))
        await wait_for(lambda: waiting_only_for(orch, "node-2"), what="the others' answers")

        js = orch.nc.jetstream()
        info = await js.stream_info(EVENT_STREAM)
        full = dataclasses.replace(
            info.config, max_msgs=info.state.messages, discard=DiscardPolicy.NEW
        )
        await js.update_stream(full)
        # The answer's decision is refused by the stream (counted as store_unavailable) until
        # the append attempts run out (append_conflict): only the effect that got it counts that.
        refused = orch.metrics.errors.labels(AppendConflict.kind)
        before = refused._value.get()
        again = NodeDaemon(
            late.hsm,
            bed.root / "nodes" / "node-2",
            dict(MEMBERS)["node-2"],
            read_pins(bed.root / "pins.json"),
            node_id="node-2",
            measurement=SOFTWARE,
        )
        await again.start(bed.nc)
        bed.daemons.append(again)
        await wait_for(lambda: refused._value.get() > before, what="the answer refused")
        await js.update_stream(info.config)
        await wait_for(
            lambda: orch.state.book.of_fleet("fleet-1").status in ("active", "paused"),
            timeout=60,
            what="the rollout to end its run",
        )
        rollout = orch.state.book.of_fleet("fleet-1")
    assert rollout.status == "active"
    assert all(m.status != "failed" for m in rollout.in_order())
