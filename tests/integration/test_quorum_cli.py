"""``hsmfleet member``: lay out a local fleet, run its members as processes, use the vault
with what the layout prints and writes for clients."""

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import nats

from messages.artifact import FleetKey
from messages.signing import Ed25519Signer
from messages.vault_authorization import AccountAuthority
from transport.vault_client import VaultClient, VaultKeysInForce

HSMFLEET = [sys.executable, "-m", "ops.cli"]


def lay_out(root: Path, fleet: str, url: str) -> list[str]:
    """``hsmfleet member local-fleet``; returns the lines it printed."""
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
    return out.stdout.strip().splitlines()


def client_of(root: Path, printed: list[str], nc) -> VaultClient:
    """A vault client made from the client file the layout wrote (and printed), its requests
    authorized with the authority key the layout kept."""
    client = json.loads((root / "client.json").read_text())
    keys = VaultKeysInForce(
        client["fleet"], FleetKey.from_json(client["kem"]), FleetKey.from_json(client["server"])
    )
    authority = client["authority"]
    assert f"fleet: {keys.fleet}" in printed
    assert f"vault key (vault-kem, ecdh-p256): {keys.kem.public_key.hex()}" in printed
    server = (
        f"OPAQUE server key (vault-opaque, opaque-ristretto255): {keys.server.public_key.hex()}"
    )
    assert server in printed
    assert printed[-1] == f"client settings: {root / 'client.json'}"
    seed = bytes.fromhex(Path(authority["key_file"]).read_text().strip())
    signer = Ed25519Signer.from_seed(seed)
    assert signer.public_key.hex() == authority["public_key"]
    assert Path(authority["key_file"]).stat().st_mode & 0o777 == 0o600

    def authorize(user: str, op: str, request: str):
        now = time.time_ns() // 1_000_000
        return AccountAuthority(signer).authorize(keys.fleet, user, op, request, now)

    return VaultClient(nc, keys, authorize, timeout=3)


async def test_members_run_as_processes_and_serve_the_vault(tmp_path, nats_server):
    printed = await asyncio.to_thread(lay_out, tmp_path, "cli1", nats_server.url)
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
        client = client_of(tmp_path, printed, nc)
        for _ in range(100):
            try:
                await client.register("alice", b"42", b"s")
                break
            except Exception:
                await asyncio.sleep(0.2)
        assert (await client.recover("alice", b"42")).secret == b"s"
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
