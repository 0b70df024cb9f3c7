"""The ``hsmfleet`` command as an operator runs it: a real process, a real server."""

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import nats
import pytest

from transport.credentials import connect, party_options

HSMFLEET = [sys.executable, "-m", "ops.cli"]


def test_help_lists_the_verbs():
    out = subprocess.run([*HSMFLEET, "--help"], capture_output=True, text=True, check=True)
    assert "nats" in out.stdout
    assert "usage: hsmfleet" in out.stdout


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "hsmfleet"
    out = subprocess.run([str(script), "nats", "up", "--help"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "--port" in out.stdout


async def test_nats_up_serves_until_interrupted(tmp_path):
    """The dev server is secured by default: a party connects with its seed, nobody without."""
    proc = await asyncio.create_subprocess_exec(
        *HSMFLEET,
        "--log-json",
        "nats",
        "up",
        "--port",
        "0",
        "--state",
        str(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ},
    )
    try:
        url = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode().strip()
        assert url.startswith("nats://127.0.0.1:")
        seed = tmp_path / "auth" / "keys" / "orchestrator-orch-a.nk"
        with pytest.raises(nats.errors.Error):
            await nats.connect(url, allow_reconnect=False, connect_timeout=2)
        nc = await connect(url, party_options("orchestrator", "orch-a", seed))
        info = await nc.jetstream().account_info()
        assert info.limits is not None
        await nc.close()
    finally:
        proc.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(proc.wait(), 20)
    assert code == 0
    stderr = (await proc.stderr.read()).decode()
    assert '"event": "nats server stopped"' in stderr
    assert (tmp_path / "jetstream").is_dir()


def test_busy_port_is_a_clear_error(tmp_path, nats_server):
    port = nats_server.url.rsplit(":", 1)[1]
    out = subprocess.run(
        [*HSMFLEET, "nats", "up", "--port", port, "--state", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2
    assert "nats-server exited on start" in out.stderr
    assert "address already in use" in out.stderr
