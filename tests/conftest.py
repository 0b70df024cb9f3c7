"""Fixtures shared by every tier: real nats-server processes on free loopback ports.

No test talks to a fake broker: ``nats_server`` is one real JetStream server for the whole
session, ``nats_cluster`` a real 3-server cluster for the tests that ask for it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from ops.natsserver import NatsCluster, NatsServer


@pytest.fixture(scope="session")
async def nats_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[NatsServer]:
    """One JetStream server for the session, on a free port, with a temporary store."""
    server = NatsServer(tmp_path_factory.mktemp("nats"), name="test")
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[NATS]:
    """A client connected to the session's server, closed after the test."""
    client = await nats.connect(nats_server.url, name="pytest")
    yield client
    await client.close()


@pytest.fixture
def js(nc: NATS) -> JetStreamContext:
    return nc.jetstream()


@pytest.fixture
async def nats_cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[NatsCluster]:
    """A fresh 3-server JetStream cluster on loopback, for tests that stop servers."""
    cluster = NatsCluster(tmp_path_factory.mktemp("cluster"))
    await cluster.start()
    yield cluster
    await cluster.stop()
