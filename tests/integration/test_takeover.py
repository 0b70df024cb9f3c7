"""Standby takeover with orchestrators as real processes: the active one is killed, later the
next one is paused, in the middle of enrollments. The log afterwards has every enrollment once,
no duplicate and no lost event, and replays decision by decision."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from datetime import UTC, datetime

import nats
import pytest

from messages import subjects
from messages.attestation import NodeAnnounce
from messages.events import ChallengeIssued, LeaseTaken, NodeEnrolled, NodeRejected
from node.daemon import NodeDaemon
from node.hsm import SoftHsm
from node.measurement import measure
from node.pins import read_pins, write_pin
from node.vendor import VendorCA, provision
from ops.natsserver import NatsServer
from orchestrator.shell.keys import load_signer, trust_for
from tests.replay.fleet import OrchestratorProcess, audit, wait_for_health, write_config
from transport.bus import publish

SEALING_KEY = bytes(range(32))

# Measured once: other work in a shared checkout must not change it between
# the orchestrator's allow-list and the nodes' claims.
SOFTWARE = measure()


@pytest.fixture
async def server(tmp_path):
    async with NatsServer(tmp_path / "nats", name="takeover") as server:
        yield server


def holders(log) -> list[tuple[str, int]]:
    return [(e.body["holder"], e.body["epoch"]) for e in log.of_type(LeaseTaken)]


async def test_killed_then_paused_active_hands_over_without_loss_or_duplicate(tmp_path, server):
    vendor = VendorCA.init(tmp_path / "vendor", datetime.now(UTC))
    orch_dir = tmp_path / "orch"
    configs = {
        holder: write_config(
            orch_dir,
            server.url,
            tmp_path / "vendor" / "root.pem",
            SOFTWARE,
            holder=holder,
            auto_enroll=True,
        )
        for holder in ("orch-a", "orch-b", "orch-c")
    }
    signer = load_signer(orch_dir / "orchestrator.key")
    trust = trust_for(signer)
    write_pin(tmp_path / "pins.json", "orchestrator", signer)
    pins = read_pins(tmp_path / "pins.json")

    def node(i: int) -> NodeDaemon:
        hsm = SoftHsm(tmp_path / f"n{i}" / "hsm", SEALING_KEY)
        provision(hsm, vendor, datetime.now(UTC))
        return NodeDaemon(
            hsm, tmp_path / f"n{i}", f"dc-{i % 3}", pins, measurement=SOFTWARE, heartbeat_s=0.5
        )

    daemons = [node(i) for i in range(7)]
    nc = await nats.connect(server.url)
    procs = {h: OrchestratorProcess(c) for h, c in configs.items()}
    started: list[NodeDaemon] = []

    async def start(*indexes: int) -> None:
        for i in indexes:
            await daemons[i].start(nc)
            started.append(daemons[i])

    async def log_shows(predicate, what: str, timeout: float = 20.0):
        deadline = time.monotonic() + timeout
        while True:
            log = await audit(nc, trust)
            if predicate(log):
                return log
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.1)

    def enrolled(log) -> int:
        return sum(1 for n in log.state.nodes.values() if n.status == "enrolled")

    try:
        await procs["orch-a"].start()
        await log_shows(lambda log: [h for h, _ in holders(log)] == ["orch-a"], "orch-a")
        await procs["orch-b"].start()
        await start(0, 1, 2)
        await log_shows(lambda log: enrolled(log) == 3, "three enrollments by orch-a")

        # Three nodes announce but do not answer yet: their challenges stay open.
        for d in daemons[3:6]:
            announce = NodeAnnounce(
                node_id=d.node_id, domain=d.domain, hsm="soft", measurement=d.measurement
            )
            await publish(nc, subjects.node_status(d.node_id), d.outbox.envelope(announce))
        await log_shows(lambda log: len(log.state.open_enrollments) == 3, "three open challenges")

        procs["orch-a"].signal(signal.SIGKILL)
        killed_at = time.monotonic()
        log = await log_shows(lambda log: len(holders(log)) == 2, "orch-b to take over")
        takeover_s = time.monotonic() - killed_at
        assert holders(log)[1][0] == "orch-b"
        await start(3, 4, 5)  # orch-b sends the open challenges again; the nodes answer now
        await log_shows(lambda log: enrolled(log) == 6, "six enrollments")

        procs["orch-b"].signal(signal.SIGSTOP)
        await procs["orch-c"].start()
        await log_shows(lambda log: len(holders(log)) == 3, "orch-c to take over")
        await start(6)
        await log_shows(lambda log: enrolled(log) == 7, "the seventh enrollment by orch-c")
        procs["orch-b"].signal(signal.SIGCONT)  # the paused one wakes up deposed
        log = await audit(nc, trust)
        # The deposed one stands down and follows the log written by its successor.
        await wait_for_health(
            procs["orch-b"].api,
            lambda h: (
                not h["active"]
                and h["lease"]["holder"] == "orch-c"
                and h["last_seq"] == len(log.envelopes)
            ),
        )
        await wait_for_health(procs["orch-c"].api, lambda h: h["active"])
    finally:
        for daemon in started:
            await daemon.stop()
        for proc in procs.values():
            await proc.stop()
        await nc.close()

    print(f"takeover after kill: {takeover_s:.2f}s")
    assert [h for h, _ in holders(log)] == ["orch-a", "orch-b", "orch-c"]
    epochs = [e for _, e in holders(log)]
    assert epochs == sorted(set(epochs))
    # No lost event: every node announced, challenged once and enrolled once; nothing rejected.
    node_ids = {d.node_id for d in daemons}
    assert {n.node_id for n in log.state.nodes.values() if n.status == "enrolled"} == node_ids
    challenged = Counter(e.body["node_id"] for e in log.of_type(ChallengeIssued))
    assert challenged == Counter({node_id: 1 for node_id in node_ids})
    assert Counter(e.body["node_id"] for e in log.of_type(NodeEnrolled)) == challenged
    assert log.of_type(NodeRejected) == []
    # No duplicate: every entry id once; the deposed orchestrator appended nothing after
    # the lease moved on (the audit's fence check would have refused it).
    assert len({e.id for e in log.envelopes}) == len(log.envelopes)
