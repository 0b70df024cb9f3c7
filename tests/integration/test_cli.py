"""The ``hsmfleet`` command as an operator runs it: a real process, a real server."""

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import nats
import pytest

from ops.demo import working_directory
from transport.credentials import connect, party_options

HSMFLEET = [sys.executable, "-m", "ops.cli"]


def test_help_lists_the_verbs():
    out = subprocess.run([*HSMFLEET, "--help"], capture_output=True, text=True, check=True)
    assert "nats" in out.stdout
    assert "usage: hsmfleet" in out.stdout


def test_version_names_the_installed_release():
    out = subprocess.run([*HSMFLEET, "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"hsmfleet {version('hsmfleet')}"


def test_demo_refuses_a_working_directory_in_use_and_takes_an_empty_one(tmp_path):
    """A demo never writes over another's keys and logs: a directory with anything in it, or a
    file, is one line and exit code 2, with nothing written; an empty directory will do."""
    used = tmp_path / "used"
    used.mkdir()
    (used / "trust.json").write_text("{}")
    for path in (used, used / "trust.json"):
        out = subprocess.run(
            [*HSMFLEET, "demo", "--dir", str(path)], capture_output=True, text=True
        )
        assert out.returncode == 2
        assert out.stderr.startswith("hsmfleet: --dir") and "Traceback" not in out.stderr
    assert [p.name for p in used.iterdir()] == ["trust.json"]
    (tmp_path / "empty").mkdir()
    assert working_directory(tmp_path / "empty") == (tmp_path / "empty").resolve()
    assert working_directory(tmp_path / "new" / "run").is_dir()


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


def test_watch_says_it_is_reconnecting_and_gives_up_at_its_deadline():
    """A watch that cannot reach the orchestrator says so on stderr and keeps trying for
    ``--reconnect`` seconds (an orchestrator restarting is back within a few), then stops with
    one line and exit code 2, instead of giving up on the first failed look."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nobody listens on it once the socket is closed
    argv = ["rollout", "status", "fleet-1", "--watch", "--reconnect", "1", "--interval", "0.1"]
    started = time.monotonic()
    out = subprocess.run(
        [*HSMFLEET, *argv, "--api", f"http://127.0.0.1:{port}", "--token", "t"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert time.monotonic() - started >= 1
    assert out.returncode == 2
    lines = out.stderr.splitlines()
    assert lines[0].startswith(f"reconnecting to http://127.0.0.1:{port}")
    assert lines[-1].startswith("hsmfleet: cannot reach the orchestrator API")
