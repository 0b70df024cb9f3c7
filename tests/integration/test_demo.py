"""``hsmfleet demo`` as the README runs it: every party a process (each node daemon beside its
HSM's device process), a fleet rolled out to a validation bundle that the verifier accepts, and
a secret registered and recovered through the fleet's vault with the keys that bundle lists;
Ctrl-C stops every process the demo started. NATS runs with permissions and TLS on, and every
process connects as itself."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
import sys
from pathlib import Path

import aiohttp
import nats
import nkeys
import pytest

from messages.canonical import b64
from messages.vault_policy import KEM_ROLE, VAULT_KEYS
from messages.verify import parse_bundle

DEMO = [sys.executable, "-m", "ops.cli", "demo"]
SUFFIX = ("", "-hsm")
"""Each node's log and its HSM device's."""


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
    logs = {p.name for p in (root / "logs").iterdir()}
    assert logs >= {"orchestrator.log", *(f"node-{i}{s}.log" for i in range(1, 6) for s in SUFFIX)}
    # The vault answered a client that took its keys from the verified bundle.
    bundle = parse_bundle(json.loads((root / "bundle.json").read_text()))
    keys = {k.role: k for k in bundle.artifact.keys}
    for role, alg in VAULT_KEYS.items():
        assert f"key {role} {alg} {b64(keys[role].public_key)}" in text
    assert (
        "vault: registered a PIN-guarded secret and recovered it through demo-fleet's HSMs"
        " (OPAQUE: the PIN never left the client)"
    ) in text
    assert f"sealed to the bundle's {KEM_ROLE} key {b64(keys[KEM_ROLE].public_key)}" in text
    # With --exit every process stops: no command that needs them running is offered.
    assert "check it:" in text and "recover it:" not in text and "audit it:" not in text
    # A whole rollout with no refused subscription or publish: each role's grants cover its work.
    server_log = (root / "nats" / "nats-server.log").read_text()
    assert "Violation" not in server_log

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
    assert len(started) >= 13  # nats-server, 2 cosigners, the orchestrator, 5 nodes, 5 HSMs
    await _every_party_connects_as_itself(tmp_path / "demo")
    # The lines the demo prints to steer it from another shell work as printed.
    (export,) = [line.split("export ")[1] for line in seen if line.strip().startswith("export ")]
    env = dict(os.environ) | dict(v.split("=", 1) for v in export.split())
    env["PATH"] = env["PATH"].replace("$PATH", os.environ["PATH"])
    listed = await asyncio.create_subprocess_exec(
        "hsmfleet", "nodes", env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(listed.communicate(), 60)
    assert listed.returncode == 0, err.decode()
    assert sum(f"node-{i} " in out.decode() for i in range(1, 6)) == 5
    (command,) = [line.split("recover it: ")[1] for line in seen if "recover it: " in line]
    await _the_vault_command_recovers_and_registers(tmp_path, command)
    proc.send_signal(signal.SIGINT)
    await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0
    assert not [pid for pid in started if _alive(pid)]


def _public_key(seed_file: Path) -> str:
    pair = nkeys.from_seed(bytearray(seed_file.read_bytes().strip()))
    try:
        return pair.public_key.decode()
    finally:
        pair.wipe()


async def _every_party_connects_as_itself(root: Path) -> None:
    """The server's connections (its /connz) are the demo's parties, each over TLS with the nkey
    of its own seed file; a client without credentials is turned away."""
    (ports_file,) = (root / "nats" / "ports").glob("*.ports")
    ports = json.loads(ports_file.read_text())
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{ports['monitoring'][0]}/connz", params={"auth": "true"}) as resp,
    ):
        connections = (await resp.json())["connections"]
    keys = {p.stem: _public_key(p) for p in (root / "nats-auth" / "keys").glob("*.nk")}
    seen = {c["name"]: c["authorized_user"] for c in connections}
    parties = {f"node-node-{i}" for i in range(1, 6)}
    parties |= {"orchestrator-orch-a", "cosigner-cosigner-a", "cosigner-cosigner-b"}
    assert set(seen) == parties
    assert seen == {name: keys[name] for name in parties}
    assert all(c["tls_version"] for c in connections)
    tls = ssl.create_default_context(cafile=str(root / "nats-auth" / "tls" / "ca.pem"))
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(ports["nats"][0], tls=tls, allow_reconnect=False)


async def _hsmfleet(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ops.cli", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, out.decode(), err.decode()


async def _the_vault_command_recovers_and_registers(tmp_path: Path, command: str) -> None:
    """``hsmfleet vault`` as the demo prints it: the demo user's secret comes back with the
    right PIN (from a file, never an argument); a new user registers and recovers; a wrong PIN
    is a refusal with the guesses left, exit 1."""
    words, pin = command.split("  (PIN ")
    args = words.split()[1:]  # after "hsmfleet"
    assert args[:3] == ["vault", "recover", "demo-user"]
    pin_file = tmp_path / "pin"
    pin_file.write_text(pin.rstrip(")\n") + "\n")
    code, out, err = await _hsmfleet(*args, "--pin-file", str(pin_file))
    assert code == 0, err
    assert out == "the demo user's backup key"
    assert "RECOVERED demo-user attempt 2" in err

    common = args[3:-2]  # the bundle, trust, NATS and authority options, without --out
    secret_file = tmp_path / "secret"
    secret_file.write_bytes(b"carol's key")
    code, out, err = await _hsmfleet(
        "vault", "register", "carol", *common, "--pin-file", str(pin_file),
        "--secret-file", str(secret_file),
    )  # fmt: skip
    assert (code, out.strip()) == (0, "REGISTERED carol generation 1"), err
    out_file = tmp_path / "carol.out"
    code, out, err = await _hsmfleet(
        "vault", "recover", "carol", *common, "--pin-file", str(pin_file), "--out",
        str(out_file), "--json",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["attempt"] == 1
    assert out_file.read_bytes() == b"carol's key" and out_file.stat().st_mode & 0o777 == 0o600

    wrong = tmp_path / "wrong"
    wrong.write_text("0000\n")
    code, out, err = await _hsmfleet(
        "vault", "recover", "carol", *common, "--pin-file", str(wrong), "--out", "-", "--json"
    )
    assert code == 1, err
    refused = json.loads(out)
    assert (refused["kind"], refused["remaining"]) == ("wrong_guess", 9)
