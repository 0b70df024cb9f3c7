"""Vault writes on a 3-server NATS cluster (permissions on) that loses servers while users
register and recover: each server in turn (the one most members reach the cluster through first)
is stopped for a while and started again. Every user's history stays linearizable, and every
acknowledged registration (or a later one) is the one in force afterwards.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import Counter

import pytest

from node.quorum.localfleet import LocalFleet
from ops.natsauth.connect import SecuredCluster
from ops.natsauth.layout import CLIENT, NODE, parse_layout
from tests.faults.clusterworld import SETTLE_S, Tally, connect, connected_to, report
from tests.faults.fleets import FAST, RunningFleet
from tests.faults.harness import Recorder, owner
from tests.faults.linearizability import UNKNOWN, check
from tests.faults.models import VaultUser

pytestmark = [pytest.mark.faults, pytest.mark.cluster]

FLEET = "vault-1"
SIZE = 3
LIMIT = 10
USERS = 6
UP_S = 0.8
DOWN_S = 1.5
BUSY_S = 3 * (UP_S + DOWN_S) + 2 * UP_S
"""How long users keep writing: through every outage (restarts take a moment more)."""
APP = "app"


@pytest.fixture(scope="module")
def nats_cluster_layout():
    return parse_layout(
        {
            "nodes": [{"id": f"m{i}", "fleet": FLEET} for i in range(1, SIZE + 1)],
            "clients": [APP],
            "auditors": ["witness"],
        }
    )


def secured_fleet(root, cluster: SecuredCluster) -> RunningFleet:
    """A new fleet of ``SIZE`` members that reach every server, each as its own NATS user."""
    local = LocalFleet.create(root, FLEET, SIZE, cluster.urls, limit=LIMIT, **FAST)
    for member in local.members:
        settings = local.settings(member)
        seed = cluster.bundle.seed_file(cluster.bundle.layout.party(NODE, member))
        ca = str(cluster.bundle.ca_file) if cluster.bundle.tls else None
        own = dataclasses.replace(settings, nats_seed=str(seed), nats_ca=ca)
        own.save(local.settings_path(member))
    return RunningFleet(local)


def busiest(cluster: SecuredCluster, fleet: RunningFleet) -> Counter[str]:
    """How many members reach the cluster through each server."""
    return Counter(
        s.name for m in fleet.running.values() for s in cluster.servers if connected_to(m.nc, s)
    )


async def outage(cluster: SecuredCluster, fleet: RunningFleet, tally: Tally) -> None:
    """Stop each server in turn for ``DOWN_S`` (the busiest with members first), between
    spells of a whole cluster."""
    members = busiest(cluster, fleet)
    for server in sorted(cluster.servers, key=lambda s: -members[s.name]):
        await asyncio.sleep(UP_S)
        cut = busiest(cluster, fleet)[server.name]
        await server.stop()
        tally.fault(f"stopped {server.name} for {DOWN_S:.1f}s, cutting off {cut} members")
        await asyncio.sleep(DOWN_S)
        await server.start()
        await cluster.wait_ready(SETTLE_S)
    await asyncio.sleep(UP_S)


async def test_acknowledged_vault_writes_survive_each_server_stopping(
    tmp_path, nats_cluster, request
):
    tally = Tally(request.node.name)
    fleet = secured_fleet(tmp_path, nats_cluster)
    recorder = Recorder()
    users = [f"user{i}" for i in range(USERS)]
    nc = await connect(nats_cluster, CLIENT, APP)
    try:
        await asyncio.gather(*(fleet.start(m, new=True, wait=False) for m in fleet.local.members))
        await asyncio.gather(*(fleet[m].replica.wait_voting(10) for m in fleet.local.members))
        vaults = [fleet.client(nc, timeout=4.0) for _ in users]
        until = time.monotonic() + BUSY_S
        *finals, _ = await asyncio.gather(
            *(owner(recorder, vaults[i], user, i, until) for i, user in enumerate(users)),
            outage(nats_cluster, fleet, tally),
        )
        for i, user in enumerate(users):
            # The last registration made may not have taken effect: read with each PIN down
            # to the last acknowledged one; every read joins the history that is checked.
            for k in range(finals[i], max(acknowledged(recorder, user), 1) - 1, -1):
                read = await recorder.recover(vaults[i], user, i, k)
                if isinstance(read, tuple) and read[0] == "ok":
                    break
            else:
                tally.lost += 1
    finally:
        await fleet.stop_all()
        await nc.close()

    for user, history in recorder.histories.items():
        result = check(VaultUser(LIMIT), history)
        assert result.ok, f"history of {user} is not linearizable: {history}"
        tally.writes_checked += sum(1 for op in history if op.output is not UNKNOWN)
    report(request, tally)
    print("errors:", recorder.errors)  # shown when the test fails
    assert len(tally.faults) == len(nats_cluster.servers)
    assert tally.lost == 0
    assert tally.writes_checked > 20 * USERS


def acknowledged(recorder: Recorder, user: str) -> int:
    """The last registration of ``user`` that was acknowledged (0: none)."""
    return max(
        (
            op.input[1]
            for op in recorder.histories[user]
            if op.input[0] == "register" and op.output == "ok"
        ),
        default=0,
    )
