"""``hsmfleet node rotate-key`` over the orchestrator's HTTP API, on a real nats-server with a
real node daemon: the API app of :func:`orchestrator.api.app.create_app` with the node-key routes
added, its orchestrator carrying out the node-key effects as the service hook would."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import nats
import pytest
from aiohttp.test_utils import TestServer

from messages.inputs import EnrollNode
from node.daemon import NodeDaemon
from node.hsm import SoftHsm
from node.measurement import measure
from node.pins import read_pins, write_pin
from node.vendor import VendorCA, provision
from ops.cli import build_parser
from ops.natsserver import NatsServer
from orchestrator.api.app import create_app
from orchestrator.api.requests import ORCHESTRATOR
from orchestrator.cli.orchestrator import ApiError, _call
from orchestrator.shell.config import Settings
from orchestrator.shell.keys import load_signer
from orchestrator.shell.log import SOURCE
from tests.replay.fleet import OPERATOR_TOKEN, READ_TOKEN, wait_for, write_config

SOFTWARE = measure()


def clock_ms() -> int:
    return time.time_ns() // 1_000_000


@pytest.fixture
async def nats_server(tmp_path):
    """A server of the test's own: the orchestrator's log and lease start empty."""
    async with NatsServer(tmp_path / "nats", name="node-keys") as server:
        yield server


@pytest.fixture
async def api(tmp_path, nats_server):
    vendor = VendorCA.init(tmp_path / "vendor", datetime.now(UTC))
    config = write_config(
        tmp_path / "orch", nats_server.url, tmp_path / "vendor" / "root.pem", SOFTWARE
    )
    settings = Settings.load(config)
    signer = load_signer(settings.key_file)
    write_pin(tmp_path / "pins.json", SOURCE, signer)
    hsm = SoftHsm(tmp_path / "n1" / "hsm", bytes(32))
    provision(hsm, vendor, datetime.now(UTC))
    daemon = NodeDaemon(
        hsm,
        tmp_path / "n1",
        "dc1",
        read_pins(tmp_path / "pins.json"),
        node_id="n1",
        measurement=SOFTWARE,
    )
    app = create_app(settings, signer)
    nc = await nats.connect(nats_server.url)
    async with TestServer(app) as server:
        orch = app[ORCHESTRATOR]
        try:
            await wait_for(lambda: orch.active, what="the lease")
            await daemon.start(nc)
            yield str(server.make_url("")), orch, daemon
        finally:
            await daemon.stop()
            await nc.close()


async def run(api_url: str, *argv: str, token: str = OPERATOR_TOKEN) -> int:
    args = build_parser().parse_args([*argv, "--api", api_url, "--token", token])
    return await args.run(args)


async def test_rotate_key_verb_follows_the_rotation_to_adoption(api, capsys):
    url, orch, daemon = api
    await wait_for(lambda: "n1" in orch.state.nodes, what="the announcement")
    assert await run(url, "node", "rotate-key", "n1", "--timeout", "10") == 1
    assert "not_enrolled" in capsys.readouterr().out
    await orch.submit(EnrollNode(node_id="n1", requested_by="test"))
    await wait_for(lambda: orch.state.nodes["n1"].status == "enrolled", what="enrollment")
    old_kid = daemon.node.identity.kid
    assert await run(url, "node", "rotate-key", "n1", "--timeout", "10") == 0
    out = capsys.readouterr().out
    new_kid = daemon.node.identity.kid
    assert new_kid != old_kid
    assert f"n1 signs with identity key {new_kid} (version 2" in out
    assert orch.state.nodes["n1"].identity.kid == new_kid


async def test_rotate_key_needs_an_operator_token_and_a_known_rotation(api):
    url, orch, _ = api
    await wait_for(lambda: "n1" in orch.state.nodes, what="the announcement")
    with pytest.raises(ApiError, match="may only read"):
        await run(url, "node", "rotate-key", "n1", token=READ_TOKEN)
    with pytest.raises(ApiError, match="no node of this id"):
        await run(url, "node", "rotate-key", "nobody")
    assert orch.state.rotations.get("nope") is None
    with pytest.raises(ApiError, match="no node-key rotation"):
        args = build_parser().parse_args(["nodes", "--api", url, "--token", READ_TOKEN])
        await _call(args, "GET", "/v1/node-key-rotations/nope")
