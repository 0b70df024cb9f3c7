"""Fixtures shared by every tier: real nats-server processes on free loopback ports.

No test talks to a fake broker: ``nats_server`` is one real JetStream server for the whole
session with no authentication (low-level tests watch raw subjects on it);
``secure_nats_server`` is one with the accounts, nkey users and permissions of
:mod:`ops.natsauth` on, for the parties of ``SECURE_LAYOUT`` (its event stream holds entries the
permission tests wrote: a test that runs an orchestrator starts its own ``SecuredServer``);
``nats_cluster`` is a real 3-server cluster, secured the same way, for the tests that ask for it.
Both secured fixtures keep the bundle (``.bundle``) and connect as a party with
``await server.connect(role, id)``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from ops.natsauth.bundle import Bundle, write_bundle
from ops.natsauth.connect import SecuredCluster, SecuredServer
from ops.natsserver import NatsServer
from tests.replay.rolloutbed import prepare
from transport.parties import Layout, parse_layout

SECURE_LAYOUT = parse_layout(
    {
        "orchestrators": ["o1", "o2"],
        "nodes": [
            {"id": "n1", "fleet": "f1"},
            {"id": "n2", "fleet": "f1"},
            {"id": "n3", "fleet": "f2"},
        ],
        "cosigners": ["c1", "c2"],
        "clients": ["app"],
        "auditors": ["audit"],
        "operators": ["ops"],
    }
)


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


@pytest.fixture(scope="session")
def nats_bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    """Seeds, accounts and permissions for ``SECURE_LAYOUT``, written once for the session."""
    return write_bundle(SECURE_LAYOUT, tmp_path_factory.mktemp("natsauth") / "bundle")


@pytest.fixture(scope="session")
async def secure_nats_server(
    nats_bundle: Bundle, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[SecuredServer]:
    """One JetStream server for the session with ``nats_bundle``'s permissions on."""
    server = SecuredServer(nats_bundle, tmp_path_factory.mktemp("secure-nats"), name="secure")
    await server.start()
    yield server
    await server.stop()


@pytest.fixture(scope="module")
def nats_cluster_layout() -> Layout:
    """The parties ``nats_cluster`` is secured for: ``SECURE_LAYOUT`` unless a test module
    defines a fixture of this name with its own (its fleet, node, cosigner ids)."""
    return SECURE_LAYOUT


@pytest.fixture(scope="module")
def nats_cluster_bundle(
    nats_cluster_layout: Layout, nats_bundle: Bundle, tmp_path_factory: pytest.TempPathFactory
) -> Bundle:
    """``nats_bundle`` for ``SECURE_LAYOUT``, else one written for the module's layout."""
    if nats_cluster_layout == nats_bundle.layout:
        return nats_bundle
    return write_bundle(nats_cluster_layout, tmp_path_factory.mktemp("natsauth") / "bundle")


@pytest.fixture
async def nats_cluster(
    nats_cluster_bundle: Bundle, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[SecuredCluster]:
    """A fresh 3-server JetStream cluster on loopback with permissions on, for tests that stop
    servers. ``nats_cluster.bundle`` holds the credentials of ``nats_cluster_layout``;
    ``await nats_cluster.connect(role, id, **options)`` joins every server as that party, and
    ``nats_cluster.bundle.arguments(role, id)`` gives a process its ``--nats-seed``."""
    cluster = SecuredCluster(nats_cluster_bundle, tmp_path_factory.mktemp("cluster"))
    await cluster.start()
    yield cluster
    await cluster.stop()


@pytest.fixture(scope="session")
def rollout_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What every rollout bed copies (:func:`tests.replay.rolloutbed.prepare`), laid out once
    per session: beds copy it, so no test changes it."""
    root = tmp_path_factory.mktemp("rollout-template") / "fleet"
    prepare(root)
    return root
