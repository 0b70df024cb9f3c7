"""Issue 3 end to end: five software-HSM nodes and one PKCS#11 node (SoftHSM2) announce
themselves and are enrolled by the orchestrator against a real nats-server; the log it wrote
replays to the same state."""

from __future__ import annotations

from datetime import UTC, datetime

import nats
import pytest

from messages.inputs import EnrollNode
from messages.signing import ECDSA_P256, ED25519
from node.daemon import NodeDaemon
from node.hsm import SoftHsm, softhsm
from node.hsm.cryptoki import Pkcs11Hsm
from node.measurement import measure
from node.pins import read_pins, write_pin
from node.vendor import VendorCA, provision
from ops.natsserver import NatsServer
from orchestrator.shell.keys import load_signer, trust_for
from orchestrator.shell.log import LogReader
from orchestrator.shell.replay import Replayer
from orchestrator.shell.store import EventStore
from tests.integration.test_pkcs11_backend import PIN, softhsm_dir, token_label  # noqa: F401
from tests.replay.fleet import running, wait_for, write_config

SEALING_KEY = bytes(range(32))
ECDH_P256 = "ecdh-p256"

# Measured once: other work in a shared checkout must not change it between
# the orchestrator's allow-list and the nodes' claims.
SOFTWARE = measure()


@pytest.fixture
async def server(tmp_path):
    async with NatsServer(tmp_path / "nats", name="fleet") as server:
        yield server


@pytest.fixture
def vendor(tmp_path):
    return VendorCA.init(tmp_path / "vendor", datetime.now(UTC))


@pytest.fixture
def config(tmp_path, server, vendor):
    return write_config(tmp_path / "orch", server.url, tmp_path / "vendor" / "root.pem", SOFTWARE)


def soft_node(tmp_path, name, domain, vendor, pins):
    hsm = SoftHsm(tmp_path / name / "hsm", SEALING_KEY)
    provision(hsm, vendor, datetime.now(UTC))
    return NodeDaemon(hsm, tmp_path / name, domain, pins, measurement=SOFTWARE, heartbeat_s=0.5)


async def test_five_software_and_one_pkcs11_node_enroll_through_the_orchestrator(
    tmp_path,
    server,
    vendor,
    config,
    token_label,  # noqa: F811
):
    signer = load_signer(tmp_path / "orch" / "orchestrator.key")
    write_pin(tmp_path / "pins.json", "orchestrator", signer)
    pins = read_pins(tmp_path / "pins.json")
    daemons = [soft_node(tmp_path, f"soft{i}", f"dc-{i % 3}", vendor, pins) for i in range(5)]
    token = Pkcs11Hsm(softhsm.MODULE, token_label, PIN, algorithms=(ECDSA_P256, ECDH_P256))
    provision(token, vendor, datetime.now(UTC))
    daemons.append(
        NodeDaemon(token, tmp_path / "p11", "dc-9", pins, node_id="hsm-p11", measurement=SOFTWARE)
    )
    nc = await nats.connect(server.url)
    try:
        async with running(config) as orch:
            await wait_for(lambda: orch.active, what="the orchestrator to take the lease")
            for daemon in daemons:
                await daemon.start(nc)
            await wait_for(lambda: len(orch.state.nodes) == 6, what="six announcements")
            for daemon in daemons:
                await orch.submit(EnrollNode(node_id=daemon.node_id, requested_by="test"))
            await wait_for(
                lambda: all(n.status == "enrolled" for n in orch.state.nodes.values()),
                what="six enrollments",
            )
            state, last = orch.state, orch.last_seq
    finally:
        for daemon in daemons:
            await daemon.stop()
        token.close()
        await nc.close()
    for daemon in daemons:
        node = state.nodes[daemon.node_id]
        assert node.domain == daemon.domain
        assert node.identity.identity_key == daemon.node.identity.public_key
        assert node.identity.transport_key == daemon.node.transport.public_key
    algs = sorted(n.identity.identity_alg for n in state.nodes.values())
    assert algs == sorted([ED25519] * 5 + [ECDSA_P256])
    assert len({n.identity.device_fingerprint for n in state.nodes.values()}) == 6

    # The log the orchestrator wrote re-runs decision by decision to the same state.
    nc = await nats.connect(server.url)
    try:
        reader = LogReader(trust_for(signer))
        replayer = Replayer(check=True)
        await EventStore(nc).scan(
            1, last, lambda seq, data: replayer.apply(reader.admit(data, f"seq {seq}"))
        )
        reader.settle()
        assert replayer.finish(f"seq {last}") == state
    finally:
        await nc.close()
