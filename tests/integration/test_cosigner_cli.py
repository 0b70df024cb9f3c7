"""Cosigners as an operator runs them: ``hsmfleet cosigner`` processes on a real nats-server,
one killed with SIGKILL mid-chain and restarted; then ``hsmfleet verify`` and ``hsmfleet audit``
as processes on what they produced."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS

from cosigner.cli import run_command
from cosigner.config import ConfigError, CosignerConfig, RequesterPin, load_config
from cosigner.engine import Cosigner
from cosigner.testbed import COSIGNERS, MEMBERS, init_cosigners, sample_artifact, sample_chain
from messages.canonical import b64
from messages.documents import MalformedDocument
from messages.ids import format_time
from messages.pins import CosignerPin, OperatorPin
from messages.signing import Ed25519Signer
from ops.cli import build_parser
from ops.natsserver import NatsServer
from transport.cosign_client import CosigningClient, NatsTransport, Peer
from transport.outbox import Outbox

HSMFLEET = [sys.executable, "-m", "ops.cli", "--log-json"]
NOW = format_time(time.time_ns() // 1_000_000)
"""As the cosigner processes date their cosignatures (a verifier refuses one dated more than
five minutes ahead of its clock)."""


async def hsmfleet(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *HSMFLEET, *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, out.decode(), err.decode()


class Running:
    """A ``hsmfleet cosigner run`` process and the URL it printed; started again, it listens
    on the same address. ``extra`` are more arguments for ``run``."""

    def __init__(self, state: Path, nats_url: str) -> None:
        self.state = state
        self.nats_url = nats_url
        self.proc: asyncio.subprocess.Process | None = None
        self.url = ""
        self.extra: tuple[str, ...] = ()

    async def start(self) -> None:
        address = ("--http", self.url.removeprefix("http://")) if self.url else ()
        self.proc = await asyncio.create_subprocess_exec(
            *HSMFLEET,
            "cosigner",
            "run",
            "--state",
            str(self.state),
            "--nats",
            self.nats_url,
            *address,
            *self.extra,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        line = await asyncio.wait_for(self.proc.stdout.readline(), 30)
        assert line, (await self.proc.stderr.read()).decode()
        self.url = json.loads(line)["url"]

    async def stop(self, sig: int = signal.SIGINT) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        code = await asyncio.wait_for(self.proc.wait(), 30)
        self.proc = None
        return code


@pytest.fixture
async def running(tmp_path: Path, nats_server: NatsServer):
    """Two cosigners created with the CLI, witnessing each other, running as processes."""
    orchestrator = Ed25519Signer.generate()
    requester = [
        {"owner": "orchestrator", "alg": "ed25519", "public_key": b64(orchestrator.public_key)}
    ]
    (tmp_path / "orchestrator.json").write_text(json.dumps(requester))
    pins = {}
    for cid in ("cosigner-a", "cosigner-b"):
        code, out, err = await hsmfleet(
            "cosigner", "init", "--state", str(tmp_path / cid), "--id", cid,
            "--requester-key", str(tmp_path / "orchestrator.json"),
        )  # fmt: skip
        assert code == 0, err
        pins[cid] = json.loads(out)
        (tmp_path / f"{cid}.pin").write_text(out)
    assert pins["cosigner-a"]["name"] == "cosigner-a.cosigner/log"
    for cid, other in (("cosigner-a", "cosigner-b"), ("cosigner-b", "cosigner-a")):
        code, _, err = await hsmfleet(
            "cosigner", "witness-of", "--state", str(tmp_path / cid), str(tmp_path / f"{other}.pin")
        )
        assert code == 0, err
    procs = {cid: Running(tmp_path / cid, nats_server.url) for cid in pins}
    for proc in procs.values():
        await proc.start()
    yield tmp_path, orchestrator, pins, procs
    for proc in procs.values():
        if proc.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                await proc.stop(signal.SIGKILL)


async def test_cosigner_processes_sign_survive_sigkill_and_verify(running, nc: NATS) -> None:
    tmp_path, orchestrator, pins, procs = running
    operator = Ed25519Signer.generate()
    (tmp_path / "operator.pub").write_text(operator.public_key.hex() + "\n")
    peers = [Peer(cid, CosignerPin.from_json(pin)) for cid, pin in pins.items()]
    transport = NatsTransport(nc, Outbox("orchestrator", orchestrator), timeout=10)
    client = CosigningClient(transport, peers, operator, threshold=2)

    artifact = sample_artifact(members=MEMBERS[:3])
    chain = sample_chain(artifact=artifact)
    for bundle in chain[:2]:
        await client.log(bundle)
    assert await procs["cosigner-a"].stop(signal.SIGKILL) == -signal.SIGKILL
    await procs["cosigner-a"].start()
    for bundle in chain[2:]:
        assert set((await client.log(bundle)).answers) == set(pins)
    (tmp_path / "bundle.json").write_bytes((await client.publish(artifact)).to_bytes())

    pin_files = []
    for cid, proc in procs.items():
        code, out, err = await hsmfleet(
            "cosigner", "pin", "--state", str(tmp_path / cid), "--url", proc.url
        )
        assert code == 0, err
        pin_files += ["--cosigner", str(tmp_path / f"{cid}.url.pin")]
        (tmp_path / f"{cid}.url.pin").write_text(out)
    code, _, err = await hsmfleet(
        "pins", *pin_files, "--operator-key", str(tmp_path / "operator.pub"),
        "--threshold", "2", "--min-domains", "2", "--out", str(tmp_path / "pins.json"),
    )  # fmt: skip
    assert code == 0, err

    verify = ["verify", "--pins", str(tmp_path / "pins.json"), "--state", str(tmp_path / "st")]
    code, out, err = await hsmfleet(*verify, str(tmp_path / "bundle.json"), "--now", NOW, "--json")
    assert code == 0, out + err
    result = json.loads(out)
    assert result["accepted"] and result["epoch"] == 1 and len(result["vouchers"]) == 2
    state = (tmp_path / "st").read_bytes()

    # A tampered bundle is refused with its kind, and the state file stays as it was.
    tampered = json.loads((tmp_path / "bundle.json").read_text())
    tampered["artifact"]["quorum"]["members"][2]["domain"] = "dc1"
    (tmp_path / "tampered.json").write_text(json.dumps(tampered))
    code, out, _ = await hsmfleet(*verify, str(tmp_path / "tampered.json"), "--now", NOW, "--json")
    assert code == 1 and json.loads(out)["kind"] == "digest_mismatch"
    assert (tmp_path / "st").read_bytes() == state

    # Epoch 2: the consistency proofs from the stored checkpoints come over HTTP.
    second = await client.publish(sample_artifact(epoch=2, legacy=True, members=MEMBERS[:3]))
    (tmp_path / "second.json").write_bytes(second.to_bytes())
    code, out, err = await hsmfleet(*verify, str(tmp_path / "second.json"), "--now", NOW)
    assert code == 0, out + err
    assert out.startswith("ACCEPTED fleet fleet-1 epoch 2")
    code, out, _ = await hsmfleet(*verify, str(tmp_path / "bundle.json"), "--now", NOW, "--json")
    assert code == 1 and json.loads(out)["kind"] == "stale_checkpoint"

    audit = ["audit", "--pins", str(tmp_path / "pins.json"), "--state", str(tmp_path / "au")]
    code, out, err = await hsmfleet(*audit, "--json")
    assert code == 0, out + err
    report = json.loads(out)
    assert [log["size"] for log in report["logs"]] == [6, 6]
    fleet = report["logs"][0]["fleets"]["fleet-1"]
    assert [b["stage"] for b in fleet["bundles"]] == ["enroll", "ceremony", "quorum", "publish"]
    assert [a["epoch"] for a in fleet["artifacts"]] == [1, 2]
    assert any("legacy until" in change for change in fleet["changes"])
    await client.log(sample_artifact("fleet-2", epoch=3))
    code, out, err = await hsmfleet(*audit)
    assert code == 0 and out.startswith("AUDIT PASSED"), out + err

    for proc in procs.values():
        assert await proc.stop() == 0


async def test_a_port_in_use_is_a_config_error_and_the_state_is_closed(tmp_path: Path) -> None:
    (peer,) = init_cosigners(tmp_path, Ed25519Signer.generate(), [COSIGNERS[0]])
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = argparse.Namespace(
            state=tmp_path / peer.id,
            nats=None,
            nats_seed=None,
            nats_ca=None,
            http=f"127.0.0.1:{port}",
        )
        with pytest.raises(ConfigError, match="cannot listen"):
            await run_command(args)
    # Closed again: a second opening is not refused as busy.
    await (await asyncio.to_thread(Cosigner.open, tmp_path / peer.id)).close()


def test_a_configuration_names_each_witnessed_log_once() -> None:
    requester = RequesterPin("orchestrator", "ed25519", Ed25519Signer.generate().public_key)
    log = CosignerPin("other.example/log", Ed25519Signer.generate().public_key)
    again = CosignerPin("other.example/log", Ed25519Signer.generate().public_key)
    config = CosignerConfig("me", "me.example/log", (requester,), (log,))
    assert config.witnessing(again).witness_of == (again,)
    with pytest.raises(MalformedDocument, match="named once"):
        CosignerConfig("me", "me.example/log", (requester,), (log, again))


def test_init_pins_the_operator_key_it_is_given_and_refuses_a_bad_one(tmp_path: Path) -> None:
    orchestrator, operator = Ed25519Signer.generate(), Ed25519Signer.generate()
    requester = {
        "owner": "orchestrator",
        "alg": "ed25519",
        "public_key": b64(orchestrator.public_key),
    }
    (tmp_path / "orchestrator.json").write_text(json.dumps(requester))
    (tmp_path / "operator.hex").write_text(operator.public_key.hex() + "\n")
    (tmp_path / "bad").write_text("not a key")

    def init(cid: str, operator_key: Path) -> int:
        args = build_parser().parse_args(
            ["cosigner", "init", "--state", str(tmp_path / cid), "--id", cid,
             "--requester-key", str(tmp_path / "orchestrator.json"),
             "--operator-key", str(operator_key)]
        )  # fmt: skip
        return args.run(args)

    assert init("cosigner-a", tmp_path / "operator.hex") == 0
    assert load_config(tmp_path / "cosigner-a").operator == OperatorPin(
        "ed25519", operator.public_key
    )
    with pytest.raises(ConfigError, match="not an operator key"):
        init("cosigner-b", tmp_path / "bad")
    assert not (tmp_path / "cosigner-b").exists()
