"""The orchestrator service on a real server: a standby follows the log and takes over at once
when the active one stops; an entry appended by anyone but the lease holder is refused."""

from __future__ import annotations

from datetime import UTC, datetime

import nats
import pytest

from messages import subjects
from messages.attestation import NodeAnnounce
from node.vendor import VendorCA
from ops.natsserver import NatsServer
from orchestrator.core.context import Context
from orchestrator.core.decisions import decide
from orchestrator.core.errors import Fenced
from orchestrator.core.state import Lease, State
from orchestrator.shell.keys import load_signer, trust_for
from orchestrator.shell.log import entry_digest, seal
from orchestrator.shell.store import EventStore
from tests.replay.fleet import audit, running, wait_for, write_config
from transport.bus import publish
from transport.outbox import Outbox

MEASUREMENT = "sha256:" + "ab" * 32


@pytest.fixture
async def server(tmp_path):
    async with NatsServer(tmp_path / "nats", name="service") as server:
        yield server


@pytest.fixture
def configs(tmp_path, server):
    VendorCA.init(tmp_path / "vendor", datetime.now(UTC))
    root = tmp_path / "vendor" / "root.pem"
    return {
        holder: write_config(tmp_path / "orch", server.url, root, MEASUREMENT, holder=holder)
        for holder in ("orch-a", "orch-b")
    }


async def announce(nc, node_id: str, domain: str = "dc-1") -> None:
    body = NodeAnnounce(node_id=node_id, domain=domain, hsm="soft", measurement=MEASUREMENT)
    await publish(nc, subjects.node_status(node_id), Outbox(node_id).envelope(body))


async def test_standby_follows_and_takes_over_when_the_active_stops(server, configs):
    nc = await nats.connect(server.url)
    try:
        async with running(configs["orch-b"]) as b, running(configs["orch-a"]) as a:
            await wait_for(lambda: a.active or b.active, what="an active orchestrator")
            active, standby = (a, b) if a.active else (b, a)
            await announce(nc, "n1")
            await wait_for(lambda: "n1" in active.state.nodes, what="the announcement")
            await wait_for(lambda: standby.last_seq == active.last_seq, what="catch-up")
            assert standby.state == active.state and not standby.active
            epoch = active.state.lease.epoch
            active.stop()  # a graceful stop gives the lease up
            await wait_for(lambda: standby.active, timeout=10, what="the takeover")
            assert standby.state.lease.holder == standby.holder
            assert standby.state.lease.epoch > epoch
            await announce(nc, "n2")
            await wait_for(lambda: "n2" in standby.state.nodes, what="the next announcement")
    finally:
        await nc.close()


async def test_entries_from_outside_the_lease_are_refused(server, configs, tmp_path):
    signer = load_signer(tmp_path / "orch" / "orchestrator.key")
    nc = await nats.connect(server.url)
    try:
        async with running(configs["orch-a"]) as a:
            await wait_for(lambda: a.active, what="orch-a to become active")
            store = EventStore(nc)
            last = await store.last_seq()
            head = entry_digest(await store.entry(last))
            # Someone holding the signing key but not the lease appends a decision, with the
            # right expected sequence: the stream takes it, every reader refuses it.
            forged = NodeAnnounce(node_id="rogue", domain="dc-6", hsm="soft", measurement="x")
            ctx = Context(0, b"forged", a.state.lease.epoch, "orch-z")
            as_if_z_held_it = State(lease=Lease("orch-z", ctx.epoch))
            batch = seal(forged, decide(as_if_z_held_it, forged, ctx), ctx, head, signer)
            assert await store.append(batch, last) == last + len(batch)
            await announce(nc, "n1")  # orch-a's next append finds the log moved on
            await wait_for(lambda: "n1" in a.state.nodes, what="orch-a to record n1")
            assert "rogue" not in a.state.nodes
            refused = a.metrics.registry.get_sample_value(
                "hsmfleet_errors_total", {"kind": "fenced"}
            )
            assert refused >= 1
        with pytest.raises(Fenced, match=rf"seq {last + 1}: decision by orch-z"):
            await audit(nc, trust_for(signer))
    finally:
        await nc.close()
