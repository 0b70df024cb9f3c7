"""Every receiver the fuzzer aims at, running for real in this process on a real nats-server.

:func:`open_world` lays out and starts: the orchestrator with its HTTP API (it consumes node
status), a node daemon with a software HSM (its command subjects), a cosigner served over NATS
and HTTP, and a quorum fleet of four members, three of them running (acceptors, replicas, vault
services with their HSMs' vault applets). The fourth member's vote key, the orchestrator's key
and the fleet operator's key sign the fuzzer's seeds, so mutants re-signed with them get past
the signature check; the fleet's vault key seals its vault seeds and its account authority
authorizes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import shutil
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats
from aiohttp import web
from nats.aio.client import Client as NATS

from cosigner.http import NATS_SERVICE, Server, make_app
from cosigner.testbed import COSIGNERS, init_cosigners
from messages.signing import Ed25519Signer, Signer
from messages.vault_authorization import Authorization
from node.daemon import NodeDaemon
from node.hsm.soft import SoftHsm
from node.http import create_app as create_node_app
from node.measurement import measure
from node.pins import read_pins, write_pin
from node.quorum.localfleet import LocalFleet
from node.quorum.member import VOTE_KEY, Member, open_hsm
from node.vendor import VendorCA, provision
from ops.natsserver import NatsServer
from orchestrator.api.app import create_app
from orchestrator.api.requests import ORCHESTRATOR
from orchestrator.shell.config import Settings
from orchestrator.shell.keys import generate, load_signer
from orchestrator.shell.service import Orchestrator

OPERATOR_TOKEN = "fuzz-operator-token-0123456789"
READ_TOKEN = "fuzz-read-token-0123456789"
FLEET = "fuzzfleet"
NODE_ID = "fuzz-node"
RUNNING = ("m1", "m2", "m3")
OUTSIDER = "m4"
START_TIMEOUT_S = 30.0


@dataclass
class World:
    """The running receivers and the keys that sign the fuzzer's seeds."""

    root: Path
    server: NatsServer
    nc: NATS
    orchestrator: Orchestrator
    api_url: str
    orchestrator_key: Signer
    daemon: NodeDaemon
    cosigner: Server
    fleet: LocalFleet
    members: dict[str, Member]
    outsider_key: Signer
    api_app: web.Application | None = None
    node_app: web.Application | None = None
    node_url: str = ""
    """The node daemon's HTTP face (``/health``, ``/metrics``)."""

    @property
    def cosigner_url(self) -> str:
        return self.cosigner.url

    def cosigner_rejects(self) -> int:
        return sum(self.cosigner.app[NATS_SERVICE].gate.rejects.values())

    def authorize(self, user: str, op: str, request: str) -> Authorization:
        """The fleet's account authority's authorization of one vault request."""
        return self.fleet.authorize(user, op, request, time.time_ns() // 1_000_000)


async def _wait(predicate: Any, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + START_TIMEOUT_S
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def _orchestrator_config(root: Path, nats_url: str, measurement: str) -> Settings:
    VendorCA.init(root / "vendor", datetime.now(UTC))
    directory = root / "orch"
    directory.mkdir(parents=True)
    generate(directory / "orchestrator.key", directory / "orchestrator.pub")
    config = {
        "holder": "orch-fuzz",
        "key_file": "orchestrator.key",
        "vendor_roots": [str(root / "vendor" / "root.pem")],
        "allowed_measurements": [measurement],
        "nats": nats_url,
        "lease_ttl_s": 2.0,
        "listen": "127.0.0.1:0",
        "tokens": {OPERATOR_TOKEN: "operator", READ_TOKEN: "read"},
    }
    path = directory / "orch-fuzz.json"
    path.write_text(json.dumps(config, indent=2))
    return Settings.load(path)


@contextlib.asynccontextmanager
async def open_world(root: Path) -> AsyncIterator[World]:
    """Start every receiver under ``root`` (which must not exist) and stop them afterwards."""
    await asyncio.to_thread(root.mkdir, parents=True)
    measurement = measure()
    async with contextlib.AsyncExitStack() as stack:
        server = NatsServer(root / "nats", name="fuzz")
        await server.start()
        stack.push_async_callback(server.stop)

        settings = _orchestrator_config(root, server.url, measurement)
        orchestrator_key = load_signer(settings.key_file)
        app = create_app(settings, orchestrator_key)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        orchestrator = app[ORCHESTRATOR]
        await _wait(lambda: orchestrator.active, "the orchestrator to become active")

        write_pin(root / "pins.json", "orchestrator", orchestrator_key)
        hsm = SoftHsm(root / "node" / "hsm", bytes(32))
        stack.callback(hsm.close)
        provision(hsm, VendorCA.open(root / "vendor"), datetime.now(UTC))
        daemon = NodeDaemon(
            hsm,
            root / "node",
            "dc-fuzz",
            read_pins(root / "pins.json"),
            node_id=NODE_ID,
            measurement=measurement,
            heartbeat_s=1.0,
        )
        nc = await nats.connect(server.url, name="fuzzer")
        stack.push_async_callback(nc.close)
        await daemon.start(nc)
        stack.push_async_callback(daemon.stop)
        await _wait(lambda: NODE_ID in orchestrator.state.nodes, "the node's announcement")
        node_app = create_node_app(daemon)
        node_runner = web.AppRunner(node_app, access_log=None)
        await node_runner.setup()
        stack.push_async_callback(node_runner.cleanup)
        await web.TCPSite(node_runner, "127.0.0.1", 0).start()
        node_host, node_port = node_runner.addresses[0][:2]

        peers = init_cosigners(root / "cosigners", orchestrator_key, COSIGNERS)
        cosigner = Server(make_app(root / "cosigners" / peers[0].id, server.url))
        await cosigner.start()
        stack.push_async_callback(cosigner.stop)

        fleet = LocalFleet.create(
            root / "fleet", FLEET, 4, [server.url], phase_timeout=0.3, deadline=3.0
        )
        # A new fleet becomes ready with every member; the outsider then leaves, so that its
        # key (still a member's) signs the fuzzer's quorum messages and no receiver is its own.
        members = {m: Member(fleet.settings(m), new=True) for m in (*RUNNING, OUTSIDER)}
        for member in members.values():
            await member.start()
        await asyncio.gather(*(m.replica.wait_voting(START_TIMEOUT_S) for m in members.values()))
        await members.pop(OUTSIDER).stop()
        for member in members.values():
            stack.push_async_callback(member.stop)
        outsider_hsm = open_hsm(fleet.state_dir(OUTSIDER), fleet.state_dir(OUTSIDER) / "hsm.key")
        stack.callback(outsider_hsm.close)
        outsider_key = outsider_hsm.signer(VOTE_KEY)

        yield World(
            root=root,
            server=server,
            nc=nc,
            orchestrator=orchestrator,
            api_url=f"http://{host}:{port}",
            api_app=app,
            orchestrator_key=orchestrator_key,
            daemon=daemon,
            cosigner=cosigner,
            fleet=fleet,
            members=members,
            outsider_key=outsider_key,
            node_app=node_app,
            node_url=f"http://{node_host}:{node_port}",
        )
    shutil.rmtree(root, ignore_errors=True)


def tree_digest(directory: Path, skip: tuple[str, ...] = ()) -> str:
    """SHA-256 over the names and contents of the files under ``directory`` (names containing
    any of ``skip`` left out): what a node keeps on disk."""
    h = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        name = str(path.relative_to(directory))
        if any(s in name for s in skip):
            continue
        h.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def stranger() -> Signer:
    """A key nobody in the world trusts."""
    return Ed25519Signer.generate()
