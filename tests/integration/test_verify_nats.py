"""The verifier's vectors again, on bundles the cosigners made over a real nats-server: the
orchestrator's client sends signed requests on ``cosign.<id>.sign`` and the cosigners answer
through their gates. Every test of ``tests/unit/test_verify.py`` runs against this world."""

from __future__ import annotations

from collections.abc import AsyncIterator

import nats
import pytest

from ops.natsserver import NatsServer
from tests.unit.test_verify import *  # noqa: F403  (the same tests, collected with this world)
from tests.unit.test_verify import World, build_world


@pytest.fixture(scope="module")
async def world(
    tmp_path_factory: pytest.TempPathFactory, nats_server: NatsServer
) -> AsyncIterator[World]:
    nc = await nats.connect(nats_server.url, name="verify-world")
    try:
        yield await build_world(tmp_path_factory.mktemp("verify-nats"), nc)
    finally:
        await nc.close()
