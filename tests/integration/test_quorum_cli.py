"""``hsmfleet member``: lay out a local fleet, run its members as processes, use the vault."""

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path

import nats

from messages.vault import Registration
from messages.vault_client import VaultClient

HSMFLEET = [sys.executable, "-m", "ops.cli"]


def lay_out(root: Path, fleet: str, url: str) -> bytes:
    """``hsmfleet member local-fleet``; returns the fleet's session public key."""
    out = subprocess.run(
        [
            *HSMFLEET,
            "member",
            "local-fleet",
            "--dir",
            str(root),
            "--fleet",
            fleet,
            "--size",
            "3",
            "--nats",
            url,
            "--limit",
            "3",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return bytes.fromhex(out.stdout.strip().splitlines()[-1].split(": ")[1])


async def test_members_run_as_processes_and_serve_the_vault(tmp_path, nats_server):
    session_key = await asyncio.to_thread(lay_out, tmp_path, "cli1", nats_server.url)
    settings = sorted(tmp_path.glob("m*/settings.json"))
    assert [json.loads(p.read_text())["member"] for p in settings] == ["m1", "m2", "m3"]
    procs = [
        await asyncio.create_subprocess_exec(
            *HSMFLEET,
            "--log-json",
            "member",
            "run",
            "--settings",
            str(p),
            "--new",
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for p in settings
    ]
    nc = await nats.connect(nats_server.url)
    try:
        client = VaultClient(nc, "cli1", session_key, timeout=3)
        for _ in range(100):
            try:
                await client.register("alice", Registration(pin=b"42", secret=b"s"))
                break
            except Exception:
                await asyncio.sleep(0.2)
        assert await client.recover("alice", b"42") == b"s"
    finally:
        await nc.close()
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        codes = [await asyncio.wait_for(proc.wait(), 15) for proc in procs]
    assert codes == [0, 0, 0]


def test_a_member_without_its_state_refuses_to_start(tmp_path, nats_server):
    subprocess.run(
        [
            *HSMFLEET,
            "member",
            "local-fleet",
            "--dir",
            str(tmp_path),
            "--fleet",
            "cli2",
            "--nats",
            nats_server.url,
        ],
        capture_output=True,
        check=True,
    )
    run = subprocess.run(
        [*HSMFLEET, "member", "run", "--settings", str(Path(tmp_path) / "m1" / "settings.json")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert run.returncode == 2
    assert "rejoin the fleet" in run.stderr
