"""Vault writes on a 3-server NATS cluster (permissions on) that loses servers while users
register and recover: the server most members reach the cluster through is stopped for a while
and started again, then the one the users' client reaches it through. Writes are acknowledged
while each server is down; every user's history stays linearizable, and every acknowledged
registration (or a later one) is the one in force afterwards.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import Counter

import pytest
from nats.aio.client import Client as NATS

from node.quorum.localfleet import LocalFleet
from ops.natsauth.connect import SecuredCluster
from ops.natsserver import NatsServer
from tests.faults.clusterworld import (
    SETTLE_S,
    Tally,
    connect,
    connected_to,
    report,
    seed_settings,
)
from tests.faults.fleets import FAST, RunningFleet
from tests.faults.harness import Recorder, owner
from tests.faults.linearizability import UNKNOWN, check
from tests.faults.models import VaultUser
from transport.parties import CLIENT, NODE, parse_layout

pytestmark = [pytest.mark.faults, pytest.mark.cluster]

FLEET = "vault-1"
SIZE = 3
LIMIT = 10
USERS = 6
UP_S = 0.8
DOWN_S = 2.5
RESTART_S = 1.0
BUSY_S = 2 * (UP_S + DOWN_S + RESTART_S) + UP_S
"""How long users keep writing: through both outages and the restarts after them."""
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
        own = dataclasses.replace(local.settings(member), **seed_settings(cluster, NODE, member))
        own.save(local.settings_path(member))
    return RunningFleet(local)


def busiest(cluster: SecuredCluster, fleet: RunningFleet) -> Counter[str]:
    """How many members reach the cluster through each server."""
    return Counter(
        s.name for m in fleet.running.values() for s in cluster.servers if connected_to(m.nc, s)
    )


async def outage(
    cluster: SecuredCluster, fleet: RunningFleet, client: NATS, tally: Tally, base: float
) -> list[tuple[float, float]]:
    """Stop, for ``DOWN_S`` each, the server most members reach the cluster through, then the
    one the client reaches it through (another, if that was the same); returns when each was
    down, in seconds since ``base``."""
    windows: list[tuple[float, float]] = []
    stopped: list[NatsServer] = []
    for _ in range(2):
        await asyncio.sleep(UP_S)
        members = busiest(cluster, fleet)
        others = [s for s in cluster.servers if s not in stopped]
        if stopped:
            server = next((s for s in others if connected_to(client, s)), others[0])
        else:
            server = max(others, key=lambda s: members[s.name])
        whose = "the client's and" if connected_to(client, server) else "not the client's but"
        stopped.append(server)
        await server.stop()
        down = time.monotonic() - base
        tally.fault(
            f"stopped {server.name} ({whose} {members[server.name]} members' server) "
            f"for {DOWN_S:.1f}s"
        )
        await asyncio.sleep(DOWN_S)
        windows.append((down, time.monotonic() - base))
        await server.start()
        await cluster.wait_ready(SETTLE_S)
    await asyncio.sleep(UP_S)
    return windows


async def test_vault_writes_acknowledged_while_servers_are_down_stay_in_force(
    tmp_path, nats_cluster, request
):
    tally = Tally(request.node.name)
    fleet = secured_fleet(tmp_path, nats_cluster)
    recorder = Recorder()
    base = time.monotonic()  # the recorder's times count from about here
    users = [f"user{i}" for i in range(USERS)]
    nc = await connect(nats_cluster, CLIENT, APP)
    try:
        await asyncio.gather(*(fleet.start(m, new=True, wait=False) for m in fleet.local.members))
        await asyncio.gather(*(fleet[m].replica.wait_voting(10) for m in fleet.local.members))
        vaults = [fleet.client(nc, timeout=1.5) for _ in users]
        until = time.monotonic() + BUSY_S
        *finals, windows = await asyncio.gather(
            *(owner(recorder, vaults[i], user, i, until) for i, user in enumerate(users)),
            outage(nats_cluster, fleet, nc, tally, base),
        )
        for i, user in enumerate(users):
            # The last registration made may not have taken effect: read with each PIN down
            # to the last acknowledged one (a read that times out is made again); every read
            # joins the history that is checked.
            for k in range(finals[i], max(acknowledged(recorder, user), 1) - 1, -1):
                read = UNKNOWN
                for _ in range(3):
                    if (read := await recorder.recover(vaults[i], user, i, k)) is not UNKNOWN:
                        break
                if isinstance(read, tuple) and read[0] == "ok":
                    break
            else:
                tally.lost += 1
    finally:
        await fleet.stop_all()
        await nc.close()

    during = Counter[int]()
    for user, history in recorder.histories.items():
        result = check(VaultUser(LIMIT), history)
        assert result.ok, f"history of {user} is not linearizable: {history}"
        acknowledged_ops = [op for op in history if op.output is not UNKNOWN]
        tally.writes_checked += len(acknowledged_ops)
        for i, (down, up) in enumerate(windows):
            during[i] += sum(1 for op in acknowledged_ops if down <= op.call and op.ret <= up)
    tally.writes_during_faults = sum(during.values())
    report(request, tally)
    print("acknowledged while a server was down:", during, "errors:", recorder.errors)
    assert len(tally.faults) == 2
    assert tally.lost == 0
    assert all(during[i] > 0 for i in range(len(windows))), during
    assert tally.writes_checked > 10 * USERS


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
