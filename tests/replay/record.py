"""Record the golden logs in ``tests/data`` (run ``python -m tests.replay.record [NAME...]``).

Each scenario is recorded with the pure core and a fixed orchestrator key, whose public key is
``tests/data/orchestrator.pub``. Files are named ``<scenario>.v<N>.jsonl`` after the message
version of the entries that changed between versions (``node.announced``). Divergent logs are
recorded as an older, buggy build would have written them: validly signed, but holding events
that today's ``decide`` does not emit.

Rollout scenarios (``rollout-*``) run the core against simulated nodes (real software HSMs and
node code) and two real cosigners in this process (:mod:`tests.replay.world`).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from messages.attestation import NodeAnnounce
from messages.bundle import DESTROY, Evidence, StageBundle
from messages.events import (
    ArtifactPrepared,
    LogEntry,
    NodeAnnounced,
    NodeEnrolled,
    StageBundleIssued,
    StageEntered,
)
from messages.inputs import AttestationAnswer, EnrollNode, SetPolicy, Tick
from messages.signing import Ed25519Signer
from orchestrator.core import evidence
from orchestrator.core.decisions import decide, open_enrollments
from orchestrator.shell.log import GENESIS
from orchestrator.shell.logfile import Header
from orchestrator.shell.recorder import Recorder
from tests.replay.kit import MEASUREMENT, T0, PureLog, Vendor
from tests.replay.world import World

DATA = Path(__file__).resolve().parent.parent / "data"
SIGNER = Ed25519Signer.from_seed(hashlib.sha256(b"hsmfleet golden log orchestrator").digest())
DOMAINS = ("dc-1", "dc-2", "dc-3")


@dataclass(frozen=True)
class NodeAnnouncedV1(LogEntry):
    """``node.announced`` as version 1 wrote it: the failure domain was called ``zone``."""

    TYPE = "node.announced"
    VERSION = 1
    node_id: str
    zone: str
    hsm: str
    measurement: str

    def subject(self) -> str:
        return f"fleet.evt.node.{self.node_id}"


def _as_v1(events: list[LogEntry]) -> list[LogEntry]:
    return [
        NodeAnnouncedV1(e.node_id, e.domain, e.hsm, e.measurement)
        if isinstance(e, NodeAnnounced)
        else e
        for e in events
    ]


def enrollment_mixed(version: int = 2) -> PureLog:
    """Two orchestrators in turn enroll five nodes; two are rejected, one never answers."""
    log = PureLog(SIGNER, holder="orch-a")
    vendor, stranger = Vendor(), Vendor("Unknown Vendor")
    now = T0
    log.take_lease(1, now)
    log.decide(
        SetPolicy(
            vendor_roots=(vendor.root_der,),
            allowed_measurements=(MEASUREMENT,),
            nonce_ttl_ms=30_000,
            auto_enroll=False,
        ),
        now,
    )
    for i in range(5):
        now += 10
        command = NodeAnnounce(
            node_id=f"n{i}", domain=DOMAINS[i % 3], hsm="soft", measurement=MEASUREMENT
        )
        ctx = log.context(now)
        events = decide(log.state, command, ctx)
        log.record(command, events, ctx, _as_v1(events) if version == 1 else None)
    answers = {
        "n0": vendor.device("n0"),
        "n1": vendor.device("n1"),
        "n2": stranger.device("n2"),
        "n3": vendor.device("n3"),
    }
    for node_id, device in answers.items():
        now += 100
        (issued,) = log.decide(EnrollNode(node_id=node_id, requested_by="operator"), now)
        measurement = MEASUREMENT if node_id != "n3" else "sha256:" + "0" * 64
        log.decide(
            AttestationAnswer(
                enrollment_id=issued.enrollment_id,
                node_id=node_id,
                reply=device.answer(issued.nonce, measurement),
            ),
            now + 50,
        )
        if node_id == "n1":
            log.holder = "orch-b"
            log.take_lease(7, now + 60)
    now += 100
    log.decide(EnrollNode(node_id="n4", requested_by="operator"), now)
    log.decide(Tick(), now + 40_000)
    return log


def divergent_measurement() -> PureLog:
    """A buggy build enrolled a node whose software is not on the allow-list."""
    log = enrollment_mixed()
    vendor = Vendor()
    log.decide(
        SetPolicy(
            vendor_roots=(vendor.root_der,),
            allowed_measurements=(MEASUREMENT,),
            nonce_ttl_ms=30_000,
            auto_enroll=False,
        ),
        T0 + 50_000,
    )
    log.decide(NodeAnnounce(node_id="n9", domain="dc-1", hsm="soft", measurement="rogue"), T0)
    (issued,) = log.decide(EnrollNode(node_id="n9", requested_by="operator"), T0 + 50_010)
    device = vendor.device("n9")
    att = device.attestation(issued.nonce, "sha256:" + "ee" * 32)
    command = AttestationAnswer(
        enrollment_id=issued.enrollment_id, node_id="n9", reply=device.reply(att)
    )
    enrolled = NodeEnrolled(
        enrollment_id=issued.enrollment_id,
        node_id="n9",
        domain="dc-1",
        identity_alg=att.identity_alg,
        identity_key=att.identity_key,
        transport_alg=att.transport_alg,
        transport_key=att.transport_key,
        measurement=att.measurement,
        device_fingerprint=hashlib.sha256(att.chain[-1]).hexdigest(),
        attestation_digest="0" * 64,
    )
    log.record(command, [enrolled], log.context(T0 + 50_020))
    return log


def divergent_extra_event() -> PureLog:
    """A buggy build recorded a node announcement twice in one decision."""
    log = enrollment_mixed()
    command = NodeAnnounce(node_id="n8", domain="dc-2", hsm="soft", measurement=MEASUREMENT)
    event = NodeAnnounced(node_id="n8", domain="dc-2", hsm="soft", measurement=MEASUREMENT)
    log.record(command, [event, event], log.context(T0 + 60_000))
    return log


def divergent_fenced() -> PureLog:
    """The deposed orchestrator kept deciding after the lease moved on."""
    log = enrollment_mixed()
    log.holder = "orch-a"
    command = NodeAnnounce(node_id="n7", domain="dc-3", hsm="soft", measurement=MEASUREMENT)
    event = NodeAnnounced(node_id="n7", domain="dc-3", hsm="soft", measurement=MEASUREMENT)
    log.record(command, [event], log.context(T0 + 60_000))
    return log


def _in_world(play: Callable[[World], object]) -> Recorder:
    """Run ``play`` (a coroutine function) in a world recorded with the golden key."""

    async def run() -> Recorder:
        with tempfile.TemporaryDirectory(prefix="hsmfleet-golden-") as tmp:
            world = World(Path(tmp), signer=SIGNER)
            try:
                await play(world)
            finally:
                await world.close()
            return world.drill.recorder

    return asyncio.run(run())


def rollout_active() -> Recorder:
    """A fleet rolled out to active: every stage, the approval gate, both cosigners."""

    async def play(world: World) -> None:
        world.start(rollout={"approve_publish": True})
        await world.settle()
        world.act("approve")
        await world.settle()

    return _in_world(play)


def rollout_faults() -> Recorder:
    """A member lost in enroll pauses the rollout, resume goes on without it; a second plan
    supersedes a rollout of another fleet, which is then aborted (keys destroyed)."""

    async def play(world: World) -> None:
        world.nodes.down.add("node-2")
        world.start()
        await world.settle()
        await world.wait_out(11)
        world.act("resume")
        await world.settle()
        world.nodes.down.clear()
        world.start("fleet-2", rollout={"approve_publish": True})
        await world.settle()
        world.start("fleet-2", rollout={"approve_publish": True, "wave_size": 1})
        await world.settle()
        world.act("abort", fleet="fleet-2", reason="recorded")
        await world.settle()

    return _in_world(play)


def divergent_rollout_bundle() -> Recorder:
    """A buggy build left a member's attestation out of the enroll bundle."""

    async def play(world: World) -> None:
        world.start()
        await world.drill.settle(until=lambda state: len(open_enrollments(state)) == 1)
        (last,) = open_enrollments(world.state)
        reply = world.nodes.nodes[last.node_id].attest(last.nonce, last.expires_ms)
        command = AttestationAnswer(last.enrollment_id, last.node_id, reply)
        recorder = world.drill.recorder
        ctx = recorder.context(world.clock())
        events = decide(recorder.state, command, ctx)
        written = [
            replace(e, bundle=_without(e.bundle, last.node_id))
            if isinstance(e, StageBundleIssued)
            else e
            for e in events
        ]
        recorder.record(command, events, ctx, written)

    return _in_world(play)


def _without(bundle: StageBundle, node_id: str) -> StageBundle:
    refs = tuple(r for r in bundle.evidence.attestations if r.node != node_id)
    return replace(bundle, evidence=Evidence.of(attestations=refs))


def divergent_rollout_gate() -> Recorder:
    """A buggy build prepared the artifact for publication without the operator's approval."""

    async def play(world: World) -> None:
        world.start(rollout={"approve_publish": True})
        await world.settle()
        rollout = world.rollout()
        recorder = world.drill.recorder
        ctx = recorder.context(world.clock())
        prepared = ArtifactPrepared(
            rollout.rollout_id,
            rollout.fleet,
            evidence.artifact(recorder.state, rollout, ctx.now_ms),
        )
        recorder.record(Tick(), [prepared], ctx)

    return _in_world(play)


def fleet_flows() -> Recorder:
    """A fleet's keys rotated (old keys destroyed once the overlap ends), a rotation schedule,
    a second fleet rolled out and the first retired in its favour (drained, keys destroyed,
    retirement logged)."""

    async def play(world: World) -> None:
        world.start()
        await world.settle()
        world.rotate(overlap_s=60)
        await world.settle()
        await world.wait_out(61)
        world.schedule(every_days=90, overlap_s=3600)
        world.start("fleet-2")
        await world.settle()
        world.retire("fleet-1", "fleet-2", drain_s=60)
        await world.settle()
        await world.wait_out(61)

    return _in_world(play)


def divergent_early_destroy() -> Recorder:
    """A buggy build began destroying a rotation's old keys on a tick before the overlap
    window ended."""

    async def play(world: World) -> None:
        world.start()
        await world.settle()
        world.rotate(overlap_s=3600)
        await world.settle()
        rotation = world.rollout()
        recorder = world.drill.recorder
        ctx = recorder.context(world.clock())
        early = StageEntered(rotation.rollout_id, rotation.fleet, DESTROY)
        recorder.record(Tick(), [early], ctx)

    return _in_world(play)


SCENARIOS = {
    "enrollment-mixed.v2": enrollment_mixed,
    "enrollment-mixed.v1": lambda: enrollment_mixed(version=1),
    "divergent-measurement.v2": divergent_measurement,
    "divergent-extra-event.v2": divergent_extra_event,
    "divergent-fenced.v2": divergent_fenced,
    "rollout-active.v2": rollout_active,
    "rollout-faults.v2": rollout_faults,
    "divergent-rollout-bundle.v2": divergent_rollout_bundle,
    "divergent-rollout-gate.v2": divergent_rollout_gate,
    "fleet-flows.v2": fleet_flows,
    "divergent-early-destroy.v2": divergent_early_destroy,
}


def write(name: str, log: Recorder) -> Path:
    path = DATA / f"{name}.jsonl"
    header = Header("FLEET_EVENTS", 1, GENESIS).encode()
    path.write_bytes(header + b"\n" + log.jsonl())
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description="record the golden logs in tests/data")
    parser.add_argument("names", nargs="*", help=f"any of {', '.join(SCENARIOS)} (default: all)")
    names = parser.parse_args().names or list(SCENARIOS)
    unknown = sorted(set(names) - set(SCENARIOS))
    if unknown:
        parser.error(f"no such scenario: {', '.join(unknown)}")
    DATA.mkdir(exist_ok=True)
    (DATA / "orchestrator.pub").write_text(SIGNER.public_key.hex() + "\n")
    for name in names:
        print(write(name, SCENARIOS[name]()))


if __name__ == "__main__":
    main()
