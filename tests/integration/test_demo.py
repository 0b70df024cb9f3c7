"""``hsmfleet demo`` as the README runs it: every party a process, a fleet rolled out to a
validation bundle that the verifier accepts; Ctrl-C stops every process the demo started."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

DEMO = [sys.executable, "-m", "ops.cli", "demo"]


def _children(pid: int) -> set[int]:
    """The processes ``pid`` started (Linux /proc)."""
    out: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        out |= {int(child) for child in text}
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


async def test_the_demo_rolls_out_a_fleet_to_a_verified_bundle(tmp_path):
    root = tmp_path / "demo"
    proc = await asyncio.create_subprocess_exec(
        *DEMO, "--dir", str(root), "--exit", "--timeout", "120",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 180)
    text = out.decode()
    assert proc.returncode == 0, text
    for line in ("waiting for approval", "approving the gate", "validation bundle ACCEPTED"):
        assert line in text
    for stage in ("enroll", "ceremony", "quorum", "publish", "activate"):
        assert stage in text
    assert (root / "bundle.json").exists() and (root / "trust.json").exists()
    assert {p.name for p in (root / "logs").iterdir()} >= {"orchestrator.log", "node-1.log"}

    # The verifier command accepts the bundle with the trust file the demo wrote.
    verify = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ops.cli", "verify", str(root / "bundle.json"),
        "--trust", str(root / "trust.json"), stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(verify.communicate(), 60)
    assert verify.returncode == 0, out
    assert b"ACCEPTED fleet demo-fleet epoch 1" in out


async def test_ctrl_c_stops_every_process_the_demo_started(tmp_path):
    proc = await asyncio.create_subprocess_exec(
        *DEMO, "--dir", str(tmp_path / "demo"), "--timeout", "120",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert proc.stdout is not None
    seen = []
    async with asyncio.timeout(180):
        while not any("Ctrl-C stops" in line for line in seen):
            line = (await proc.stdout.readline()).decode()
            assert line, "".join(seen)
            seen.append(line)
    started = _children(proc.pid)
    assert len(started) >= 8  # nats-server, 2 cosigners, the orchestrator, 5 nodes
    proc.send_signal(signal.SIGINT)
    await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0
    assert not [pid for pid in started if _alive(pid)]
