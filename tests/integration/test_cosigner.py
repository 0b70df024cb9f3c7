"""Two cosigners on a real nats-server: a fleet's chain and artifact go through both, the
validation bundle verifies, every bad request is refused with its kind and changes nothing, and a
cosigner restarted mid-chain continues from its durable state."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS

from cosigner.http import NATS_SERVICE, Server, make_app
from cosigner.testbed import MEMBERS, init_cosigners, sample_artifact, sample_chain
from messages import subjects
from messages.cosigning import COSIGNER_ROLE, SignRequest
from messages.pins import OperatorPin, Pins
from messages.signing import Ed25519Signer, TrustStore
from messages.verification import BelowThreshold
from messages.verifier_state import VerifierState
from messages.verify import verify_bundle
from ops.natsserver import NatsServer
from transport.bus import RequestRejected, request
from transport.cosign_client import (
    CosignerRefused,
    CosigningClient,
    NatsTransport,
    NotEnoughCosigners,
    Peer,
)
from transport.gate import Gate
from transport.outbox import Outbox

NOW = time.time_ns() // 1_000_000
"""The cosigners here date their cosignatures by the wall clock, and a verifier refuses one
dated more than five minutes ahead of its own: verify at the wall clock too."""
IDS = ("cosigner-a", "cosigner-b")


@dataclasses.dataclass
class Fleet:
    """Two cosigners served over NATS and HTTP, and the orchestrator's client of both."""

    states: dict[str, Path]
    servers: dict[str, Server]
    peers: list[Peer]
    orchestrator: Ed25519Signer
    operator: Ed25519Signer
    client: CosigningClient
    nats_url: str

    def pins(self, threshold: int = 2) -> Pins:
        return Pins(
            cosigners=tuple(p.pin for p in self.peers),
            threshold=threshold,
            operator=OperatorPin(self.operator.alg, self.operator.public_key),
        )

    async def restart(self, cid: str) -> None:
        await self.servers[cid].stop()
        self.servers[cid] = Server(make_app(self.states[cid], self.nats_url))
        await self.servers[cid].start()


@pytest.fixture
async def fleet(tmp_path: Path, nats_server: NatsServer, nc: NATS) -> AsyncIterator[Fleet]:
    orchestrator = Ed25519Signer.generate()
    operator = Ed25519Signer.generate()
    peers = init_cosigners(
        tmp_path, orchestrator, [(cid, f"{cid}.example/log", os.urandom(32)) for cid in IDS]
    )
    states = {cid: tmp_path / cid for cid in IDS}
    servers = {cid: Server(make_app(states[cid], nats_server.url)) for cid in IDS}
    for server in servers.values():
        await server.start()
    transport = NatsTransport(nc, Outbox("orchestrator", orchestrator))
    client = CosigningClient(transport, peers, operator, threshold=2)
    yield Fleet(states, servers, peers, orchestrator, operator, client, nats_server.url)
    for server in servers.values():
        await server.stop()


async def test_chain_and_artifact_through_two_cosigners_verify(fleet: Fleet) -> None:
    artifact = sample_artifact(members=MEMBERS[:3])
    chain = sample_chain(artifact=artifact)
    for bundle in chain:
        logged = await fleet.client.log(bundle)
        assert set(logged.answers) == set(IDS)
        assert logged.vouchers(fleet.peers) == {p.name for p in fleet.peers}
    validation = await fleet.client.publish(artifact)
    accepted = verify_bundle(validation.to_bytes(), fleet.pins(), VerifierState(), NOW)
    assert accepted.vouchers == tuple(sorted(p.name for p in fleet.peers))
    for cid in IDS:
        cosigner = fleet.servers[cid].cosigner
        assert cosigner.notary.size == len(chain) + 1
        assert cosigner.witness.cosigned >= len(chain) + 1
    # Epoch 2 extends what the verifier stored, with proofs fetched over NATS.
    second = await fleet.client.publish(sample_artifact(epoch=2, legacy=True))
    proofs = {}
    for proof in second.proofs:
        peer = next(p for p in fleet.peers if p.name == proof.log)
        old = accepted.state.checkpoints[proof.log].size
        new = proof.statement.index + 1
        proofs[(proof.log, old, new)] = await fleet.client.transport.consistency(peer, old, new)
    assert verify_bundle(second, fleet.pins(), accepted.state, NOW, proofs).state.epoch == 2


async def _refusal(fleet: Fleet, cid: str, document: dict) -> str:
    peer = next(p for p in fleet.peers if p.id == cid)
    with pytest.raises(CosignerRefused) as caught:
        await fleet.client.transport.sign(peer, document)
    return caught.value.refusal


async def test_cosigner_refuses_bad_bundles_and_says_which(fleet: Fleet) -> None:
    one, two, three, _ = sample_chain()
    for bundle in (one, two):
        await fleet.client.log(bundle)
    cosigner = fleet.servers["cosigner-a"].cosigner
    size = cosigner.notary.size
    forked = dataclasses.replace(three, prev=one.digest)
    stale = dataclasses.replace(two, stage="quorum-retry", evidence=three.evidence)
    skipped = dataclasses.replace(three, serial=4)
    malformed = three.to_json() | {"serial": "3"}
    other_kind = {"format": "hsmfleet/something/v1"}
    assert await _refusal(fleet, "cosigner-a", forked.to_json()) == "wrong_prev"
    assert await _refusal(fleet, "cosigner-a", stale.to_json()) == "stale_serial"
    assert await _refusal(fleet, "cosigner-a", dataclasses.replace(one, stage="x").to_json()) == (
        "stale_serial"
    )
    assert await _refusal(fleet, "cosigner-a", skipped.to_json()) == "serial_gap"
    assert await _refusal(fleet, "cosigner-a", two.to_json()) == "digest_seen"
    assert await _refusal(fleet, "cosigner-a", malformed) == "malformed_document"
    assert await _refusal(fleet, "cosigner-a", other_kind) == "unknown_format"
    assert cosigner.notary.size == size
    rejects = cosigner.stats()["rejects"]
    assert rejects["wrong_prev"] == 1 and rejects["digest_seen"] == 1
    assert rejects["stale_serial"] == 2 and rejects["serial_gap"] == 1
    assert rejects["malformed_document"] == 1 and rejects["unknown_format"] == 1
    # The chain goes on from where it was.
    assert set((await fleet.client.log(three)).answers) == set(IDS)


async def test_epochs_and_expiry_are_enforced(fleet: Fleet) -> None:
    await fleet.client.log(sample_artifact(epoch=4))
    assert await _refusal(fleet, "cosigner-a", sample_artifact(epoch=4, days=2).to_json()) == (
        "stale_epoch"
    )
    assert await _refusal(fleet, "cosigner-a", sample_artifact(epoch=6).to_json()) == "epoch_gap"
    expired = sample_artifact("fleet-2", not_before="2020-01-01T00:00:00.000Z", days=1)
    assert await _refusal(fleet, "cosigner-a", expired.to_json()) == "document_expired"


async def test_requests_from_unpinned_keys_are_refused_and_counted(fleet: Fleet, nc: NATS) -> None:
    intruder = Outbox("orchestrator", Ed25519Signer.generate())
    env = intruder.envelope(SignRequest(document=sample_chain()[0].to_json()))
    trust = TrustStore()
    trust.trust("cosigner-a", fleet.servers["cosigner-a"].cosigner.signer, COSIGNER_ROLE)
    with pytest.raises(RequestRejected) as caught:
        await request(nc, subjects.cosign("cosigner-a"), env, Gate(trust), COSIGNER_ROLE)
    assert caught.value.detail["kind"] == "unknown_signer"
    unsigned = Outbox("orchestrator").envelope(SignRequest(document={}))
    with pytest.raises(RequestRejected) as caught:
        await request(nc, subjects.cosign("cosigner-a"), unsigned, Gate(trust), COSIGNER_ROLE)
    assert caught.value.detail["kind"] == "unsigned"
    service = fleet.servers["cosigner-a"].app
    cosigner = fleet.servers["cosigner-a"].cosigner
    assert cosigner.notary.size == 0
    assert service[NATS_SERVICE].rejects() == {"unknown_signer": 1, "unsigned": 1}


async def test_a_restarted_cosigner_continues_the_chain(fleet: Fleet) -> None:
    chain = sample_chain()
    await fleet.client.log(chain[0])
    await fleet.client.log(chain[1])
    before = fleet.servers["cosigner-a"].cosigner.notary.head()
    await fleet.restart("cosigner-a")
    restarted = fleet.servers["cosigner-a"].cosigner
    assert restarted.notary.size == 2
    assert restarted.notary.head() == before
    # Its memory of the chain survived: a repeat is refused, the next bundle accepted.
    assert await _refusal(fleet, "cosigner-a", chain[1].to_json()) == "digest_seen"
    for bundle in chain[2:]:
        assert set((await fleet.client.log(bundle)).answers) == set(IDS)
    # As a witness it remembers what it cosigned of the other log.
    seen = restarted.witness.latest("cosigner-b.example/log")
    assert seen is not None and seen.size == 4


async def test_a_lost_answer_is_recovered_from_the_receipt(fleet: Fleet) -> None:
    first = sample_chain()[0]
    peer = fleet.peers[0]
    original = await fleet.client.transport.sign(peer, first.to_json())
    logged = await fleet.client.log(first)
    assert logged.answers[peer.id].statement == original.statement
    assert logged.answers[peer.id].signature == original.signature


async def test_a_cosigner_that_missed_bundles_catches_up(fleet: Fleet) -> None:
    chain = sample_chain()
    a = fleet.peers[0]
    for bundle in chain[:2]:
        await fleet.client.transport.sign(a, bundle.to_json())
    logged = await fleet.client.log(chain[2], earlier=chain[:2])
    assert set(logged.answers) == set(IDS)
    assert fleet.servers["cosigner-b"].cosigner.notary.size == 3


async def test_one_cosigner_down_is_below_two_of_two_but_meets_one(fleet: Fleet) -> None:
    await fleet.servers["cosigner-b"].stop()
    artifact = sample_artifact()
    with pytest.raises(NotEnoughCosigners) as caught:
        await fleet.client.publish(artifact)
    assert caught.value.errors["cosigner-b"].kind == "cosigner_unreachable"
    one = CosigningClient(fleet.client.transport, fleet.peers, fleet.operator, threshold=1)
    bundle = await one.publish(artifact)
    assert verify_bundle(bundle, fleet.pins(1), VerifierState(), NOW).vouchers == (
        "cosigner-a.example/log",
    )
    with pytest.raises(BelowThreshold):
        verify_bundle(bundle, fleet.pins(2), VerifierState(), NOW)
    fleet.servers["cosigner-b"] = Server(make_app(fleet.states["cosigner-b"], fleet.nats_url))
    await fleet.servers["cosigner-b"].start()
