"""``hsmfleet vendor``, ``hsmfleet hsm serve`` and ``hsmfleet node run`` as an operator runs
them: real processes, each node daemon reaching its HSM through a device process."""

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest

from messages import Ed25519Signer
from messages.attestation import load_vendor_roots, verify_attestation
from messages.signing import ED25519
from node import cli as node_cli
from node.daemon import NodeConfigError
from node.hsm.device.cli import DeviceConfigError, open_backend
from node.hsm.sealing import load_operator_key
from node.hsm.soft import STATE_FILE, SoftHsm
from node.measurement import measure
from node.pins import write_pin
from node.vendor import VendorCA, provision
from ops.bench.enrollment import request_attestation
from ops.cli import build_parser
from ops.natsserver import free_port
from tests.integration.test_pkcs11_backend import PIN, softhsm_dir, token_label  # noqa: F401
from transport.outbox import Outbox

HSMFLEET = [sys.executable, "-m", "ops.cli"]


def hsmfleet(*args, env=None):
    return subprocess.run(
        [*HSMFLEET, *args], capture_output=True, text=True, timeout=60, env=env or os.environ
    )


@pytest.fixture
def operator(tmp_path):
    """A vendor CA, an operator sealing key and a pinned orchestrator key, made by the CLI."""
    assert hsmfleet("vendor", "init", "--dir", str(tmp_path / "vendor")).returncode == 0
    out = hsmfleet("node", "sealing-key", "--out", str(tmp_path / "hsm.key"))
    assert out.returncode == 0, out.stderr
    orchestrator = Ed25519Signer.generate()
    write_pin(tmp_path / "orch.json", "orchestrator", orchestrator)
    return orchestrator


async def run_node(nats_server, tmp_path, *extra, env=None):
    """Start ``hsmfleet node run``; returns the process and the node id it prints."""
    proc = await asyncio.create_subprocess_exec(
        *HSMFLEET,
        "--log-json",
        "node",
        "run",
        "--state",
        str(tmp_path / "state"),
        "--domain",
        "dc1",
        "--nats",
        nats_server.url,
        "--orchestrator-key",
        str(tmp_path / "orch.json"),
        *extra,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env or os.environ,
    )
    line = await asyncio.wait_for(proc.stdout.readline(), 30)
    if not line:
        await proc.wait()
        pytest.fail((await proc.stderr.read()).decode())
    return proc, line.decode().strip()


async def stop(proc):
    proc.send_signal(signal.SIGTERM)
    return await asyncio.wait_for(proc.wait(), 30)


async def enroll(nc, orchestrator, tmp_path, node_id):
    nonce, now = os.urandom(32), time.time_ns() // 1_000_000
    answer = await request_attestation(
        nc, Outbox("orchestrator", orchestrator), node_id, nonce, now + 5000, timeout=10
    )
    roots = load_vendor_roots((tmp_path / "vendor" / "root.pem").read_bytes())
    return verify_attestation(
        answer, nonce=nonce, vendor_roots=roots, allowed_measurements={measure()}, now_ms=now
    )


@pytest.fixture
def socket_path():
    """A socket in a short directory the device creates itself (socket paths are short)."""
    return Path(tempfile.mkdtemp(prefix="hsmserve-")) / "run" / "hsm.sock"


def serve(*args: str, env=None) -> tuple[subprocess.Popen, dict]:
    """Start ``hsmfleet hsm serve``; the process and the line it prints once it listens."""
    proc = subprocess.Popen(
        [*HSMFLEET, "hsm", "serve", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env or os.environ,
    )
    line = proc.stdout.readline()
    if not line:
        proc.wait(30)
        pytest.fail(proc.stderr.read())
    return proc, json.loads(line)


def terminate(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(30)


def soft_device(tmp_path, socket_path, *extra: str) -> list[str]:
    """``hsm serve`` arguments of the software HSM in ``tmp_path/hsm``, sealed under the key
    the ``operator`` fixture made."""
    state = ["--state", str(tmp_path / "hsm"), "--sealing-key-file", str(tmp_path / "hsm.key")]
    return ["--socket", str(socket_path), *state, *extra]


async def test_software_node_runs_enrolls_and_restarts_as_itself(
    nats_server, nc, tmp_path, operator, socket_path
):
    """A node daemon and its software HSM's device process, started as an operator starts
    them; both restarted (the device certified at its first start needs no vendor again), the
    node is the same node, with the same identity key."""
    device, _ = serve(*soft_device(tmp_path, socket_path, "--vendor", str(tmp_path / "vendor")))
    try:
        proc, node_id = await run_node(nats_server, tmp_path, "--hsm-socket", str(socket_path))
        try:
            first = await enroll(nc, operator, tmp_path, node_id)
        finally:
            assert await stop(proc) == 0
    finally:
        assert terminate(device) == 0
    device, _ = serve(*soft_device(tmp_path, socket_path))
    port = free_port()
    try:
        proc, again = await run_node(
            nats_server, tmp_path, "--hsm-socket", str(socket_path), "--http", f"127.0.0.1:{port}"
        )
        try:
            second = await enroll(nc, operator, tmp_path, again)
            url = f"http://127.0.0.1:{port}/health"
            async with aiohttp.ClientSession() as http, http.get(url) as resp:
                assert resp.status == 200
                assert (await resp.json())["node_id"] == node_id
        finally:
            assert await stop(proc) == 0
    finally:
        assert terminate(device) == 0
    assert again == node_id == first.node_id
    assert second.identity_key == first.identity_key and first.identity_alg == ED25519
    assert not (tmp_path / "state" / "hsm").exists(), "no key material beside the node"


def test_a_node_without_its_device_or_with_a_bad_address_refuses_to_start(
    nats_server, tmp_path, operator, socket_path
):
    args = ["node", "run", "--state", str(tmp_path / "state"), "--domain", "dc1"]
    args += ["--nats", nats_server.url, "--orchestrator-key", str(tmp_path / "orch.json")]
    out = hsmfleet(*args)
    assert out.returncode == 2 and "--hsm-socket" in out.stderr
    out = hsmfleet(*args, "--hsm-socket", str(socket_path))
    assert out.returncode == 2 and "the HSM device is not there" in out.stderr
    out = hsmfleet(*args, "--hsm-socket", str(socket_path), "--http", "localhost")
    assert out.returncode == 2 and "the HTTP address must be HOST:PORT" in out.stderr


def test_a_device_refuses_a_software_hsm_whose_sealed_state_was_altered(
    tmp_path, operator, socket_path
):
    hsm = SoftHsm(tmp_path / "hsm", load_operator_key(tmp_path / "hsm.key"))
    provision(hsm, VendorCA.open(tmp_path / "vendor"), datetime.now(UTC))
    hsm.close()
    path = tmp_path / "hsm" / STATE_FILE
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x10
    path.write_bytes(bytes(data))
    out = hsmfleet("hsm", "serve", *soft_device(tmp_path, socket_path))
    assert out.returncode == 2
    assert "sealed HSM state fails authentication: the file was altered" in out.stderr
    assert not socket_path.exists()


async def test_pkcs11_node_is_certified_by_the_vendor_tool_and_enrolls(
    nats_server,
    nc,
    tmp_path,
    operator,
    socket_path,
    token_label,  # noqa: F811
):
    env = {**os.environ, "HSMFLEET_PKCS11_PIN": PIN}
    out = hsmfleet(
        "vendor", "certify", "--dir", str(tmp_path / "vendor"), "--token", token_label, env=env
    )
    assert out.returncode == 0, out.stderr
    token = ["--backend", "pkcs11", "--token", token_label, "--state", str(tmp_path / "device")]
    device, _ = serve("--socket", str(socket_path), *token, env=env)
    try:
        proc, node_id = await run_node(nats_server, tmp_path, "--hsm-socket", str(socket_path))
        try:
            node = await enroll(nc, operator, tmp_path, node_id)
        finally:
            assert await stop(proc) == 0
    finally:
        assert terminate(device) == 0
    assert node.node_id == node_id


def test_missing_or_clashing_settings_are_typed_errors(tmp_path, monkeypatch):
    def parse(*args):
        return build_parser().parse_args(args)

    key = tmp_path / "hsm.key"
    key.write_text("kept\n")
    with pytest.raises(NodeConfigError, match="never overwritten") as info:
        node_cli.node_sealing_key(parse("node", "sealing-key", "--out", str(key)))
    assert info.value.kind == "node_config" and key.read_text() == "kept\n"
    serve_args = ["hsm", "serve", "--socket", str(tmp_path / "s.sock")]
    serve_args += ["--state", str(tmp_path / "device")]
    monkeypatch.setenv("HSMFLEET_HSM_KEY", "00" * 32)
    with pytest.raises(DeviceConfigError, match="--vendor") as info:
        open_backend(parse(*serve_args))
    assert info.value.kind == "device_config"
    with pytest.raises(DeviceConfigError, match="--token"):
        open_backend(parse(*serve_args, "--backend", "pkcs11"))
    monkeypatch.delenv("HSMFLEET_PKCS11_PIN", raising=False)
    with pytest.raises(DeviceConfigError, match="PIN"):
        open_backend(parse(*serve_args, "--backend", "pkcs11", "--token", "t"))
