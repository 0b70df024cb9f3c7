"""A cosigner process rotates its log key while a verifier follows (real processes, real
nats-server): ``hsmfleet cosigner run`` twice; ``hsmfleet cosigner rotate-key`` once with A
stopped, once while it runs; each rotation is logged by both; ``hsmfleet verify`` (a process)
pinned to the original keys accepts the epoch-2 bundle by walking the chain the bundle
carries, and refuses a frozen view until the bundle is refreshed with the cosigners' re-signed
checkpoints;
``hsmfleet audit`` walks the rotated log from its pinned key."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from nats.aio.client import Client as NATS

from cosigner.testbed import MEMBERS, sample_artifact, sample_chain
from messages.checkpoint import Checkpoint
from messages.cosignature import Cosignature
from messages.ids import format_time
from messages.note import Note
from messages.pins import CosignerPin, OperatorPin, Pins
from messages.rotation import KeyRotation
from messages.signing import Ed25519Signer
from messages.validation import with_rotations
from ops.verifier_files import save_pins
from tests.integration import test_cosigner_cli
from tests.integration.test_cosigner_cli import hsmfleet
from transport.cosign_client import CosigningClient, NatsTransport, Peer
from transport.outbox import Outbox

running = test_cosigner_cli.running  # the two cosigner processes

FAST = "0.2"


async def _verify(tmp_path: Path, bundle: bytes, *extra: str) -> tuple[int, dict]:
    path = tmp_path / "bundle.json"
    path.write_bytes(bundle)
    code, out, err = await hsmfleet(
        "verify", str(path), "--pins", str(tmp_path / "pins.json"),
        "--state", str(tmp_path / "state.json"), "--json", *extra,
    )  # fmt: skip
    assert code in (0, 1), err
    return code, json.loads(out)


async def _own_timestamps(url: str, origin: str, count: int) -> list[tuple[int, int]]:
    """(size, own cosignature time) of the log's checkpoint, read ``count`` times 1.1 s apart."""
    import aiohttp

    seen = []
    async with aiohttp.ClientSession() as http:
        for _ in range(count):
            async with http.get(f"{url}/checkpoint") as response:
                note = Note.parse(await response.text())
            size = Checkpoint.from_text(note.text).size
            own = [
                Cosignature.from_note_signature(s).timestamp
                for s in note.signatures
                if s.name == origin and len(s.signature) == 72
            ]
            seen.append((size, max(own, default=0)))
            await asyncio.sleep(1.1)
    return seen


async def test_a_cosigner_process_rotates_its_key_and_a_verifier_follows(running, nc: NATS) -> None:
    tmp_path, orchestrator, pins, procs = running
    for proc in procs.values():  # serve again with a fast checkpoint re-signing period
        await proc.stop()
        proc.extra = ("--refresh-every", FAST)
        await proc.start()
    operator = Ed25519Signer.generate()
    peers = [Peer(cid, CosignerPin.from_json(pin)) for cid, pin in pins.items()]
    transport = NatsTransport(nc, Outbox("orchestrator", orchestrator), timeout=10)
    client = CosigningClient(transport, peers, operator, threshold=2)
    a_name = pins["cosigner-a"]["name"]
    verifier_pins = Pins(
        cosigners=tuple(CosignerPin(p.pin.name, p.pin.public_key, procs[p.id].url) for p in peers),
        threshold=2,
        operator=OperatorPin(operator.alg, operator.public_key),
        max_checkpoint_age=120,
    )
    save_pins(tmp_path / "pins.json", verifier_pins)

    first = sample_artifact(members=MEMBERS[:3])
    for bundle in sample_chain(artifact=first):
        await client.log(bundle)
    code, result = await _verify(tmp_path, (await client.publish(first)).to_bytes())
    assert code == 0 and result["rotations"] == [], result

    # Nothing logged, yet the log re-signs its checkpoint with a newer time.
    seen = await _own_timestamps(procs["cosigner-a"].url, a_name, 2)
    assert seen[0][0] == seen[1][0] and 0 < seen[0][1] < seen[1][1]

    # Cosigner A's key, v1 -> v2 with the process stopped, v2 -> v3 while it runs (the command
    # asks it over its control socket); each rotation (already in A's own log) is submitted to
    # both, so B follows it as a witness.
    chain = []
    for version, running_now in ((2, False), (3, True)):
        if not running_now:
            await procs["cosigner-a"].stop()
        code, out, err = await hsmfleet(
            "cosigner", "rotate-key", "--state", str(tmp_path / "cosigner-a")
        )
        assert code == 0, err
        rotation = KeyRotation.from_json(json.loads(out))
        assert (rotation.signer, rotation.version) == (a_name, version)
        assert rotation.old.public_key == client.peers[0].pin.public_key
        if not running_now:
            await procs["cosigner-a"].start()
        chain.append(client.notice(await client.log(rotation)))
    assert client.peers[0].pin.public_key == rotation.new.public_key
    code, out, err = await hsmfleet("cosigner", "pin", "--state", str(tmp_path / "cosigner-a"))
    assert code == 0, err
    assert CosignerPin.from_json(json.loads(out)) == CosignerPin(
        a_name, rotation.new.public_key, None, 3
    )

    second = sample_artifact(epoch=2, legacy=True)
    bundle = with_rotations(await client.publish(second), chain)
    code, result = await _verify(tmp_path, bundle.to_bytes())
    assert code == 0, result
    assert [(r["signer"], r["version"]) for r in result["rotations"]] == [(a_name, 2), (a_name, 3)]
    state = json.loads((tmp_path / "state.json").read_text())
    assert [k["version"] for k in state["keys"][a_name]] == [1, 2, 3]

    # Ten minutes on, the bundle's checkpoints are too old: a frozen view, refused, state kept.
    later = format_time(time.time_ns() // 1_000_000 + 600_000)
    code, result = await _verify(tmp_path, bundle.to_bytes(), "--now", later)
    assert (code, result["kind"]) == (1, "stale_view")
    # The cosigners re-sign on schedule; a refreshed bundle is fresh again.
    refreshed = await client.refresh(bundle)
    assert len(refreshed.rotations) == 2
    code, result = await _verify(tmp_path, refreshed.to_bytes())
    assert code == 0, result

    code, out, err = await hsmfleet("audit", "--pins", str(tmp_path / "pins.json"), "--json")
    assert code == 0, out + err
    report = {log["log"]: log for log in json.loads(out)["logs"]}
    assert [(r["signer"], r["version"]) for r in report[a_name]["rotations"]] == [
        (a_name, 2),
        (a_name, 3),
    ]
