"""The orchestrator's CLI verbs as an operator runs them, against a running orchestrator
process and real node daemons: exit codes say how it went, ``--json`` is for scripts."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import UTC, datetime

import nats
import pytest

from messages import subjects
from messages.attestation import NodeAnnounce
from node.daemon import NodeDaemon
from node.hsm import SoftHsm
from node.measurement import measure
from node.pins import read_pins, write_pin
from node.vendor import VendorCA, provision
from ops.natsserver import NatsServer
from orchestrator.shell.keys import load_signer
from tests.replay.fleet import (
    OPERATOR_TOKEN,
    READ_TOKEN,
    OrchestratorProcess,
    wait_for_health,
    write_config,
)
from transport.bus import publish
from transport.outbox import Outbox

# Measured once: other work in a shared checkout must not change it between
# the orchestrator's allow-list and the nodes' claims.
SOFTWARE = measure()


async def hsmfleet(*args: str, token: str | None = None, timeout: float = 60):
    """Run ``hsmfleet ARGS``; returns (exit code, stdout, stderr)."""
    env = dict(os.environ)
    if token is not None:
        env["HSMFLEET_TOKEN"] = token
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ops.cli", *args,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture
async def fleet(tmp_path):
    """A server, an orchestrator process, a genuine node and one running unapproved software."""
    async with NatsServer(tmp_path / "nats", name="cli") as server:
        VendorCA.init(tmp_path / "vendor", datetime.now(UTC))
        vendor = VendorCA.open(tmp_path / "vendor")
        config = write_config(
            tmp_path / "orch", server.url, tmp_path / "vendor" / "root.pem", SOFTWARE
        )
        signer = load_signer(tmp_path / "orch" / "orchestrator.key")
        write_pin(tmp_path / "pins.json", "orchestrator", signer)
        pins = read_pins(tmp_path / "pins.json")
        daemons = []
        for name, measurement in (("good", SOFTWARE), ("odd", "sha256:" + "00" * 32)):
            hsm = SoftHsm(tmp_path / name / "hsm", bytes(32))
            provision(hsm, vendor, datetime.now(UTC))
            daemons.append(NodeDaemon(hsm, tmp_path / name, "dc-1", pins, measurement=measurement))
        orch = await OrchestratorProcess(config).start()
        nc = await nats.connect(server.url)
        try:
            await wait_for_health(orch.api, lambda h: h["active"])
            for daemon in daemons:
                await daemon.start(nc)
            yield server, orch, daemons, nc, tmp_path
        finally:
            for daemon in daemons:
                await daemon.stop()
            await nc.close()
            await orch.stop()


async def test_operator_session(fleet):
    _, orch, (good, odd), nc, _ = fleet
    api = ["--api", orch.api]
    await wait_for_health(orch.api, lambda h: h["last_seq"] >= 8)  # lease, policy, 2 nodes
    code, out, err = await hsmfleet("nodes", *api, "--json", token=READ_TOKEN)
    assert code == 0, err
    nodes = {n["node_id"]: n for n in json.loads(out)}
    assert {n["status"] for n in nodes.values()} == {"announced"}
    assert nodes[good.node_id]["domain"] == "dc-1"

    code, out, err = await hsmfleet("nodes", *api)
    assert code == 2 and "bearer token" in err
    code, out, _ = await hsmfleet("nodes", *api, token=READ_TOKEN)
    assert code == 0 and good.node_id in out and "DOMAIN" in out

    code, out, err = await hsmfleet("enroll", good.node_id, *api, token=READ_TOKEN)
    assert code == 2 and "may only read" in err
    code, out, err = await hsmfleet("enroll", "ghost", *api, token=OPERATOR_TOKEN)
    assert code == 2 and "no node of this id" in err

    code, out, err = await hsmfleet("enroll", good.node_id, *api, "--json", token=OPERATOR_TOKEN)
    assert code == 0, err
    assert json.loads(out)["status"] == "enrolled"
    code, out, _ = await hsmfleet("enroll", odd.node_id, *api, token=OPERATOR_TOKEN)
    assert code == 1 and "rejected: measurement_not_allowed" in out

    # A node that announced itself but never answers: the command gives up with exit 3.
    silent = NodeAnnounce(node_id="silent", domain="dc-2", hsm="soft", measurement=SOFTWARE)
    await publish(nc, subjects.node_status("silent"), Outbox("silent").envelope(silent))
    await asyncio.sleep(0.5)
    code, out, err = await hsmfleet(
        "enroll", "silent", *api, "--timeout", "1", token=OPERATOR_TOKEN
    )
    assert code == 3 and "has not answered yet" in out
    assert "waiting for silent to attest" in err


async def test_export_replay_and_watch(fleet):
    server, orch, (good, _), _, tmp_path = fleet
    api = ["--api", orch.api]
    await wait_for_health(orch.api, lambda h: h["last_seq"] >= 8)
    watch = asyncio.create_task(
        hsmfleet("events", "watch", *api, "--from", "1", "--count", "6", "--json", token=READ_TOKEN)
    )
    code, _, err = await hsmfleet("enroll", good.node_id, *api, token=OPERATOR_TOKEN)
    assert code == 0, err
    code, out, err = await watch
    assert code == 0, err
    types = [json.loads(line)["type"] for line in out.splitlines()]
    assert types[:2] == ["orchestrator.decision", "orchestrator.lease_taken"]

    code, log, err = await hsmfleet("log", "export", "--nats", server.url)
    assert code == 0 and "exported" in err
    whole = tmp_path / "log.jsonl"
    whole.write_text(log)
    pub = str(tmp_path / "orch" / "orchestrator.pub")
    first = await hsmfleet("replay", str(whole), "--trust", pub, "--json")
    second = await hsmfleet("replay", str(whole), "--trust", pub, "--json", "--verify-every", "1")
    assert first[0] == second[0] == 0, first[2]
    summary = json.loads(first[1])
    assert summary["ok"] and summary["enrolled"] == 1
    assert {k: v for k, v in summary.items() if k != "entries_per_s"} == {
        k: v for k, v in json.loads(second[1]).items() if k != "entries_per_s"
    }

    # An export from a later sequence continues the chain of the first part.
    cut = 4
    code, tail, _ = await hsmfleet("log", "export", "--from", str(cut), "--nats", server.url)
    assert code == 0 and json.loads(tail.splitlines()[0])["from_seq"] == cut
    head_part = tmp_path / "part1.jsonl"
    head_part.write_text("".join(log.splitlines(keepends=True)[:cut]))
    tail_part = tmp_path / "part2.jsonl"
    tail_part.write_text(tail)
    code, out, _ = await hsmfleet(
        "replay", str(head_part), str(tail_part), "--trust", pub, "--json"
    )
    assert code == 0 and json.loads(out)["entries"] == summary["entries"]

    # A damaged export names the line; a divergent one exits 1.
    lines = log.splitlines(keepends=True)
    damaged = tmp_path / "damaged.jsonl"
    damaged.write_text("".join(lines[:3]) + '{"broken\n' + "".join(lines[4:]))
    code, _, err = await hsmfleet("replay", str(damaged), "--trust", pub)
    assert code == 2 and "damaged.jsonl line 4" in err
    code, out, _ = await hsmfleet(
        "replay", "tests/data/divergent-measurement.v2.jsonl", "--trust",
        "tests/data/orchestrator.pub",
    )  # fmt: skip
    assert code == 1 and "diverged" in out and "line 45" in out
