"""A fleet to roll out on a real nats-server: node daemons with software HSMs, two cosigners
(served over NATS and HTTP), an orchestrator configuration with an operator HSM, and plans.

Everything is the real component. :class:`SeededHsm` is the software HSM with its entropy
fixed (keys drawn from a seed, ECDSA signatures deterministic, RFC 6979), so that two runs of
a rollout with the same inputs make the same keys and the same attestations: the crash tests
compare their stage bundles byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from nats.aio.client import Client as NATS

from cosigner.http import Server, make_app
from cosigner.testbed import COSIGNERS, init_cosigners
from messages.canonical import b64
from messages.pins import OperatorPin, Pins, QuorumFloor
from messages.signing import ECDH_P256, ECDSA_P256, ED25519, Ed25519Signer
from node.daemon import NodeDaemon
from node.hsm import keys
from node.hsm.base import Hsm, PublicKey
from node.hsm.sealing import new_operator_key
from node.hsm.soft import SoftHsm, _Key
from node.measurement import measure
from node.pins import read_pins, write_pin
from node.vault.applet import VaultApplet
from node.vault.journal import EvaluationJournal
from node.vendor import VendorCA, provision
from ops.natsserver import NatsServer
from orchestrator.shell.config import Settings
from orchestrator.shell.keys import load_signer, make_operator_key
from tests.replay.fleet import write_config
from transport.cosign_client import Peer

SEALING_KEY = bytes(range(32))
SOFTWARE = measure()
MEMBERS = (
    ("node-1", "dc1"),
    ("node-2", "dc1"),
    ("node-3", "dc2"),
    ("node-4", "dc2"),
    ("node-5", "dc3"),
)
SPARE = ("node-6", "dc3")
"""A node provisioned beside the members, started on request: a replacement for one of them."""
_ORDER = int("FFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551", 16)


class SeededHsm(SoftHsm):
    """A software HSM whose keys come from ``seed`` and the key's label (a fleet key from the
    fleet id and role, whatever the rollout's id, and how many keys of that fleet and role the
    HSM holds already: a rotation's keys differ from the ones they replace), and whose ECDSA
    signatures are deterministic."""

    def __init__(self, state_dir: Path, operator_key: bytes, seed: bytes) -> None:
        self.seed = seed
        super().__init__(state_dir, operator_key)

    def generate(self, label: str, alg: str, *, wrappable: bool = False) -> PublicKey:
        if alg not in (ED25519, ECDSA_P256, ECDH_P256):  # symmetric keys and OPAQUE setups
            return super().generate(label, alg, wrappable=wrappable)
        parts = label.split(":")
        name = label
        if parts[0] == "fleet" and len(parts) == 4:
            kind = ("fleet", parts[1], parts[3])
            held = sum(1 for o in (x.split(":") for x in self.labels()) if (o[0], *o[1::2]) == kind)
            name = f"{parts[1]}:{parts[3]}" + (f":{held}" if held else "")
        material = hashlib.sha256(self.seed + b"\n" + name.encode()).digest()
        if alg == ED25519:
            private: keys.PrivateKey = ed25519.Ed25519PrivateKey.from_private_bytes(material)
        else:
            scalar = int.from_bytes(material, "big") % (_ORDER - 1) + 1
            private = ec.derive_private_key(scalar, ec.SECP256R1())
        return self._add(label, _Key(alg, private, keys.public_bytes(private), wrappable))

    def sign(self, label: str, data: bytes) -> bytes:
        key = self._get(label)
        if isinstance(key.private, ec.EllipticCurvePrivateKey):
            return key.private.sign(data, ec.ECDSA(hashes.SHA256(), deterministic_signing=True))
        return super().sign(label, data)


@dataclass
class RolloutBed:
    """What a rollout test runs against; :meth:`close` stops what it started."""

    root: Path
    nats_url: str
    config: Path
    peers: list[Peer]
    operator: OperatorPin
    cosigners: list[Server] = field(default_factory=list)
    daemons: list[NodeDaemon] = field(default_factory=list)
    nc: NATS | None = None
    authority: Ed25519Signer = field(default_factory=lambda: Ed25519Signer.from_seed(bytes(32)))
    """The account authority of the bed's vaults."""

    @property
    def settings(self) -> Settings:
        return Settings.load(self.config)

    def plan(self, fleet: str = "fleet-1", **sections: Any) -> dict[str, Any]:
        """A plan for all members (JSON form); ``sections`` replace or extend its tables."""
        plan: dict[str, Any] = {
            "fleet": fleet,
            "members": {"ids": [d.node_id for d in self.daemons], "min_per_domain": 1},
            "keys": {"vault": "ed25519", "signing": "ecdsa-p256-sha256"},
            "cosigners": {
                "threshold": 2,
                "pins": [
                    {
                        "id": p.id,
                        "name": p.pin.name,
                        "public_key": b64(p.pin.public_key),
                        "url": p.pin.url,
                    }
                    for p in self.peers
                ],
            },
            "rollout": {"wave_size": 2, "approve_publish": False, "member_deadline_s": 30},
        }
        for name, value in sections.items():
            plan[name] = {**plan[name], **value} if isinstance(plan.get(name), dict) else value
        return plan

    def vault(self, limit: int = 10, replace_interval_s: int = 0) -> dict[str, Any]:
        """A plan's vault section, its requests authorized by :attr:`authority`."""
        return {
            "limit": limit,
            "authority_key": b64(self.authority.public_key),
            "replace_interval_s": replace_interval_s,
        }

    def pins(self, floor: QuorumFloor | None = None) -> Pins:
        """What a client of the fleet pins: both cosigners (2 of 2) and the operator."""
        return Pins(
            cosigners=tuple(p.pin for p in self.peers),
            threshold=2,
            operator=self.operator,
            floor=floor or QuorumFloor(),
        )

    async def start_nodes(self, hsms: dict[str, Hsm]) -> None:
        pins = read_pins(self.root / "pins.json")
        assert self.nc is not None
        for node_id, domain in [m for m in (*MEMBERS, SPARE) if m[0] in hsms]:
            state = self.root / "nodes" / node_id
            daemon = NodeDaemon(
                hsms[node_id],
                state,
                domain,
                pins,
                node_id=node_id,
                measurement=SOFTWARE,
                heartbeat_s=0.5,
                applet=VaultApplet(hsms[node_id], EvaluationJournal(state / "vault-journal")),
            )
            await daemon.start(self.nc)
            self.daemons.append(daemon)

    async def close(self) -> None:
        for daemon in self.daemons:
            await daemon.stop()
            daemon.hsm.close()
            if daemon.fleets.applet is not None:
                daemon.fleets.applet.journal.close()
        for server in self.cosigners:
            await server.stop()
        if self.nc is not None:
            await self.nc.close()


def prepare(root: Path) -> None:
    """Lay out, once, what every run copies: vendor CA, orchestrator keys and configuration
    (with an operator HSM), cosigners' states, and each node's provisioned HSM."""
    vendor = VendorCA.init(root / "vendor", datetime.now(UTC))
    (root / "operator.key").write_text(new_operator_key() + "\n")
    config = write_config(
        root / "orch",
        "nats://127.0.0.1:4222",
        root / "vendor" / "root.pem",
        SOFTWARE,
        operator_hsm=str(root / "operator-hsm"),
        operator_hsm_key=str(root / "operator.key"),
    )
    operator = make_operator_key(Settings.load(config))
    signer = load_signer(root / "orch" / "orchestrator.key")
    write_pin(root / "pins.json", "orchestrator", signer)
    pin = OperatorPin(operator.alg, operator.public_key)
    init_cosigners(root / "cosigners", signer, COSIGNERS, pin)
    for node_id, _ in (*MEMBERS, SPARE):
        hsm = SeededHsm(root / "nodes" / node_id / "hsm", SEALING_KEY, node_id.encode())
        provision(hsm, vendor, datetime.now(UTC))
        hsm.close()


async def open_bed(
    template: Path,
    root: Path,
    nats_url: str,
    *,
    spare: bool = False,
    hsms: dict[str, Hsm] | None = None,
) -> RolloutBed:
    """A copy of ``template`` under ``root``, its cosigners served and its nodes started (with
    ``spare``, the spare node too); ``hsms`` gives some nodes another HSM than their software
    one (a PKCS#11 token, provisioned by the caller)."""
    shutil.copytree(template, root)
    config = root / "orch" / "orch-a.json"
    raw = json.loads(config.read_text())
    raw.update(
        nats=nats_url,
        operator_hsm=str(root / "operator-hsm"),
        operator_hsm_key=str(root / "operator.key"),
        vendor_roots=[str(root / "vendor" / "root.pem")],
    )
    config.write_text(json.dumps(raw, indent=2))
    settings = Settings.load(config)
    peers = init_cosigners(root / "cosigners", load_signer(settings.key_file), COSIGNERS)
    operator = make_operator_key(settings)
    bed = RolloutBed(root, nats_url, config, [], OperatorPin(operator.alg, operator.public_key))
    for peer in peers:
        server = Server(make_app(root / "cosigners" / peer.id, nats_url))
        url = await server.start()
        bed.cosigners.append(server)
        bed.peers.append(Peer(peer.id, type(peer.pin)(peer.pin.name, peer.pin.public_key, url)))
    bed.nc = await nats.connect(nats_url, name="rollout-bed")
    chosen: dict[str, Hsm] = {
        node_id: SeededHsm(root / "nodes" / node_id / "hsm", SEALING_KEY, node_id.encode())
        for node_id, _ in (*MEMBERS, SPARE)
        if (spare or node_id != SPARE[0]) and node_id not in (hsms or {})
    }
    await bed.start_nodes({**chosen, **(hsms or {})})
    return bed


@asynccontextmanager
async def served_bed(
    template: Path,
    root: Path,
    name: str,
    *,
    spare: bool = False,
    hsms: dict[str, Hsm] | None = None,
) -> AsyncIterator[RolloutBed]:
    """A bed copied from ``template`` on a nats-server of its own, both under ``root``."""
    async with NatsServer(root / "nats", name=name) as server:
        bed = await open_bed(template, root / "run", server.url, spare=spare, hsms=hsms)
        try:
            yield bed
        finally:
            await bed.close()
