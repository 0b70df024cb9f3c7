"""A node's replica votes with the identity key its fleet's configuration names: a node that
rotated its identity key joins with the new one, and a later configuration of the same group
naming another of its keys switches the replica's vote key (real daemons, real nats-server)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import nats
import pytest

from messages import Ed25519Signer, subjects
from messages.ceremony import Joined, JoinFleet
from messages.envelope import Envelope
from messages.quorum import Config, MemberKey
from node.daemon import NodeDaemon
from node.hsm import SoftHsm
from node.measurement import measure
from node.pins import read_pins, write_pin
from node.vendor import VendorCA, provision
from ops.natsserver import NatsServer
from transport.outbox import Outbox

KEY = bytes(range(32))


NODES = ("n1", "n2", "n3")


def config(epoch: int, keys: dict) -> Config:
    return Config(
        fleet="fleet-v",
        epoch=epoch,
        members=tuple(
            MemberKey(member=n, alg=k.alg, public_key=k.public_key) for n, k in keys.items()
        ),
        prepare_set=NODES,
        accept_set=NODES,
        prepare_quorum=2,
        accept_quorum=2,
    )


@pytest.fixture
async def nodes(tmp_path):
    orchestrator = Ed25519Signer.generate()
    write_pin(tmp_path / "pins.json", "orchestrator", orchestrator)
    vendor = VendorCA.init(tmp_path / "vendor", datetime.now(UTC))
    daemons = []
    async with NatsServer(tmp_path / "nats", name="vote-key") as server:
        nc = await nats.connect(server.url)
        for node_id in NODES:
            hsm = SoftHsm(tmp_path / node_id / "hsm", KEY)
            provision(hsm, vendor, datetime.now(UTC))
            pins = read_pins(tmp_path / "pins.json")
            daemon = NodeDaemon(
                hsm, tmp_path / node_id, "dc1", pins, node_id=node_id, measurement=measure()
            )
            await daemon.start(nc)
            daemons.append(daemon)
        yield daemons, nc, Outbox("orchestrator", orchestrator)
        for daemon in daemons:
            await daemon.stop()
            daemon.hsm.close()
        await nc.close()


async def join(nc, outbox, cfg: Config, epoch: int, group: str | None) -> Joined:
    """Join every node; the answer of n1, which probes."""
    answers = []
    for node_id in NODES:
        body = JoinFleet(
            fleet="fleet-v",
            epoch=epoch,
            rollout=f"r{epoch}",
            config=cfg,
            probe=node_id == "n1",
            group=group,
        )
        subject = subjects.node_command(node_id, "join")
        answers.append(nc.request(subject, outbox.envelope(body).encode(), timeout=10))
    answer = Envelope.decode((await asyncio.gather(*answers))[0].data)
    assert answer.type == Joined.TYPE, answer.body
    return Joined.from_json(answer.body)


def vote_kids(joined: Joined) -> set[str]:
    return {Envelope.decode(vote).sig.kid for vote in joined.proof.votes}


async def test_a_rotated_node_votes_with_the_key_its_configuration_names(nodes):
    daemons, nc, outbox = nodes
    hsm = daemons[0].hsm
    first = hsm.public_key("identity")
    second = hsm.generate("identity.2", first.alg)
    third = hsm.generate("identity.3", first.alg)
    others = {d.node_id: d.hsm.public_key("identity") for d in daemons[1:]}

    joined = await join(nc, outbox, config(1, {"n1": second, **others}), 1, None)
    assert second.kid in vote_kids(joined) and first.kid not in vote_kids(joined)

    # The same group continued under a configuration naming another key: the replica switches.
    joined = await join(nc, outbox, config(2, {"n1": third, **others}), 2, "r1")
    assert third.kid in vote_kids(joined) and second.kid not in vote_kids(joined)
    assert daemons[0].fleets.replicas["fleet-v"][1].outbox.signer.kid == third.kid
