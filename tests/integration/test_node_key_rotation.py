"""Identity-key rotation with real node daemons on a real nats-server.

The orchestrator's side is the pure core (a :class:`Recorder` signing with the orchestrator's key)
and the effect that carries a rotation out (:func:`orchestrator.shell.effects.node_key_request`, run
by the service's runner); one test runs the whole orchestrator process, on JetStream, and replays
the log it wrote.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from datetime import UTC, datetime

import nats
import pytest
import structlog
from cryptography.hazmat.primitives import serialization

from messages.attestation import ECDH_P256, NODE_ROLE, AttestRequest, NodeAnnounce
from messages.envelope import Envelope
from messages.errors import MessageError
from messages.events import NodeEnrolled
from messages.inputs import AttestationAnswer, EnrollNode, SetPolicy
from messages.node_keys import (
    NodeKeyAdopted,
    NodeKeyChallenged,
    NodeKeyRotated,
    NodeKeyRotationRefused,
    RotateIdentity,
    RotateNodeKey,
)
from messages.signing import ECDSA_P256, Ed25519Signer, TrustedKey, TrustStore, verify_envelope
from node.daemon import NodeDaemon
from node.hsm import SoftHsm, softhsm
from node.hsm.cryptoki import Pkcs11Hsm
from node.identity import IDENTITY
from node.measurement import measure
from node.pins import read_pins, write_pin
from node.vendor import VendorCA, provision
from ops.natsserver import NatsServer
from orchestrator.core.node_key_jobs import node_key_jobs
from orchestrator.shell.config import Settings
from orchestrator.shell.effects import carry_out, node_key_request
from orchestrator.shell.keys import load_signer, operator_signer, trust_for
from orchestrator.shell.log import SOURCE, LogReader
from orchestrator.shell.metrics import Metrics
from orchestrator.shell.recorder import Recorder
from orchestrator.shell.replay import Replayer
from orchestrator.shell.service import Orchestrator
from orchestrator.shell.store import EventStore
from tests.integration.test_pkcs11_backend import PIN, softhsm_dir, token_label  # noqa: F401
from tests.replay.fleet import wait_for, write_config
from transport.outbox import Outbox

KEY = bytes(range(32))
SOFTWARE = measure()


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@pytest.fixture
async def own_server(tmp_path):
    """A server of the test's own: the orchestrator's log and lease start empty."""
    async with NatsServer(tmp_path / "nats", name="node-keys") as server:
        yield server


@pytest.fixture
def vendor(tmp_path):
    return VendorCA.init(tmp_path / "vendor", datetime.now(UTC))


@pytest.fixture
def orchestrator():
    return Ed25519Signer.generate()


@pytest.fixture
def pins(tmp_path, orchestrator):
    write_pin(tmp_path / "pins.json", SOURCE, orchestrator)
    return read_pins(tmp_path / "pins.json")


def policy(vendor: VendorCA, measurement: str = SOFTWARE) -> SetPolicy:
    root = vendor.root.public_bytes(serialization.Encoding.DER)
    return SetPolicy(
        vendor_roots=(root,),
        allowed_measurements=(measurement,),
        nonce_ttl_ms=20_000,
        auto_enroll=False,
    )


def soft_daemon(state, vendor, pins) -> NodeDaemon:
    hsm = SoftHsm(state / "hsm", KEY)
    if hsm.certificate("device") is None:
        provision(hsm, vendor, datetime.now(UTC))
    return NodeDaemon(hsm, state, "dc1", pins, node_id="n1", measurement=SOFTWARE)


class Core:
    """The orchestrator's pure core on a recorded log, its requests signed by its key; it
    carries out effects with the service's runner (an :class:`orchestrator.shell.effects.Host`)."""

    active = True

    def __init__(self, nc, signer: Ed25519Signer, vendor: VendorCA) -> None:
        self.nc = nc
        self.outbox = Outbox(SOURCE, signer)
        self.recorder = Recorder(signer)
        self.recorder.take_lease(1, now_ms())
        self.recorder.decide(policy(vendor), now_ms())
        self.metrics = Metrics()
        self.effect_errors: dict[str, str] = {}
        self.log = structlog.get_logger("test")

    def clock_ms(self) -> int:
        return now_ms()

    def decide(self, command):
        return self.recorder.decide(command, now_ms())

    async def submit(self, command):
        return self.decide(command)

    @property
    def state(self):
        return self.recorder.state

    async def enroll(self, daemon: NodeDaemon) -> NodeEnrolled:
        self.decide(NodeAnnounce(daemon.node_id, daemon.domain, daemon.hsm.kind, SOFTWARE))
        (issued,) = self.decide(EnrollNode(node_id=daemon.node_id, requested_by="test"))
        request = self.outbox.envelope(AttestRequest(issued.nonce, issued.expires_ms))
        msg = await self.nc.request(
            f"fleet.node.{daemon.node_id}.cmd.attest", request.encode(), timeout=5
        )
        (event,) = self.decide(AttestationAnswer(issued.enrollment_id, daemon.node_id, msg.data))
        assert isinstance(event, NodeEnrolled), event
        return event

    async def step(self):
        """Carry out the one request the state waits on; the events the answer caused."""
        (job,) = node_key_jobs(self.state)
        return self.decide(await ask_node(self.nc, self.outbox, job))

    async def attest_reply(self, node_id: str) -> Envelope:
        """The node's answer to an attest request, as it arrived."""
        request = self.outbox.envelope(AttestRequest(b"\x01" * 32, now_ms() + 5000))
        msg = await self.nc.request(f"fleet.node.{node_id}.cmd.attest", request.encode(), 5)
        return Envelope.decode(msg.data)

    async def attest_signer_kid(self, node_id: str) -> str:
        """The key id the node's answers are signed with now."""
        return (await self.attest_reply(node_id)).sig.kid


async def ask_node(nc, outbox: Outbox, job):
    """The core's input for the node's answer to ``job``'s request, sent as the service sends
    it (one attempt of :func:`orchestrator.shell.effects.node_key_request`)."""
    return await node_key_request(nc, outbox, job).perform(5.0)


def signed_by(env: Envelope, node_id: str, alg: str, public_key: bytes) -> bool:
    """Whether ``env`` verifies as the node's message under this key."""
    trust = TrustStore([TrustedKey(node_id, alg, public_key, frozenset({NODE_ROLE}))])
    try:
        verify_envelope(env, trust, NODE_ROLE)
    except MessageError:
        return False
    return True


async def test_node_rotates_adopts_and_keeps_the_new_key_across_a_restart(
    nc, tmp_path, vendor, pins, orchestrator
):
    daemon = soft_daemon(tmp_path / "n1", vendor, pins)
    await daemon.start(nc)
    core = Core(nc, orchestrator, vendor)
    try:
        enrolled = await core.enroll(daemon)
        old_kid = daemon.node.identity.kid
        (challenged,) = core.decide(RotateNodeKey(node_id="n1", requested_by="test"))
        assert isinstance(challenged, NodeKeyChallenged)
        (rotated,) = await core.step()
        assert isinstance(rotated, NodeKeyRotated), rotated
        assert rotated.previous_kid == old_kid
        assert rotated.identity_key == daemon.node.pending.public_key
        assert daemon.node.pending.label == f"{IDENTITY}.2"
        # until it adopts, the node still speaks with its old key
        assert await core.attest_signer_kid("n1") == old_kid
        (adopted,) = await core.step()
        assert adopted == NodeKeyAdopted(challenged.rotation_id, "n1")
        assert node_key_jobs(core.state) == []
        new_kid = core.state.nodes["n1"].identity.kid
        assert daemon.node.identity.kid == new_kid != old_kid
        # the old key signs none of its answers any more
        reply = await core.attest_reply("n1")
        new = core.state.nodes["n1"].identity
        assert signed_by(reply, "n1", new.identity_alg, new.identity_key)
        assert not signed_by(reply, "n1", enrolled.identity_alg, enrolled.identity_key)
        assert core.state.nodes["n1"].past_identities[0].identity_key == enrolled.identity_key
    finally:
        await daemon.stop()

    restarted = soft_daemon(tmp_path / "n1", vendor, pins)
    assert restarted.node.identity.kid == new_kid
    assert restarted.outbox.signer.kid == new_kid
    await restarted.start(nc)
    try:
        assert await core.attest_signer_kid("n1") == new_kid
        # a second rotation is proved with the first rotated key
        core.decide(RotateNodeKey(node_id="n1", requested_by="test"))
        (again,) = await core.step()
        assert isinstance(again, NodeKeyRotated) and again.previous_kid == new_kid
        assert again.version == 3
        await core.step()
        assert await core.attest_signer_kid("n1") == restarted.node.identity.kid
        assert restarted.node.identity.label == f"{IDENTITY}.3"
    finally:
        await restarted.stop()
    # every identity the node had is still in its HSM (replicas may name them)
    labels = SoftHsm(tmp_path / "n1" / "hsm", KEY).labels()
    assert {IDENTITY, f"{IDENTITY}.2", f"{IDENTITY}.3"} <= set(labels)


async def test_refused_rotation_leaves_the_node_on_its_old_key(
    nc, tmp_path, vendor, pins, orchestrator
):
    daemon = soft_daemon(tmp_path / "n1", vendor, pins)
    await daemon.start(nc)
    core = Core(nc, orchestrator, vendor)
    try:
        await core.enroll(daemon)
        old_kid = daemon.node.identity.kid
        # the allow-list no longer lists the node's software: its fresh attestation fails
        core.decide(policy(vendor, "sha256:" + "00" * 32))
        core.decide(RotateNodeKey(node_id="n1", requested_by="test"))
        (refused,) = await core.step()
        assert refused.reason == "measurement_not_allowed"
        assert core.state.nodes["n1"].identity.kid == old_kid
        assert node_key_jobs(core.state) == []
        assert await core.attest_signer_kid("n1") == old_kid
        pending = daemon.node.pending
        # a request naming a key the node never had is refused by the node, on record
        core.decide(policy(vendor))
        (challenged,) = core.decide(RotateNodeKey(node_id="n1", requested_by="test"))
        (job,) = node_key_jobs(core.state)
        forged = RotateIdentity(challenged.nonce, challenged.expires_ms, "0" * 16)
        forged_job = type(job)(**{**job.__dict__, "body": forged})
        (refused,) = core.decide(await ask_node(nc, core.outbox, forged_job))
        assert isinstance(refused, NodeKeyRotationRefused) and refused.reason == "refused"
        # the next rotation proves the key the node made before, never adopted
        core.decide(RotateNodeKey(node_id="n1", requested_by="test"))
        (rotated,) = await core.step()
        assert isinstance(rotated, NodeKeyRotated)
        assert rotated.identity_key == pending.public_key
    finally:
        await daemon.stop()


async def test_an_unadopted_rotation_is_adopted_by_the_next_one(
    nc, tmp_path, vendor, pins, orchestrator
):
    """The orchestrator recorded the new key but the adoption never reached the node: its next
    rotation names that key as the one in force, and the node adopts it before moving on."""
    daemon = soft_daemon(tmp_path / "n1", vendor, pins)
    await daemon.start(nc)
    core = Core(nc, orchestrator, vendor)
    try:
        await core.enroll(daemon)
        core.decide(RotateNodeKey(node_id="n1", requested_by="test"))
        (first,) = await core.step()
        core.decide(RotateNodeKey(node_id="n1", requested_by="test"))
        (second,) = await core.step()
        assert isinstance(second, NodeKeyRotated)
        assert second.previous_kid == core.state.nodes["n1"].past_identities[-1].kid
        assert daemon.node.identity.public_key == first.identity_key
        await core.step()
        assert daemon.node.identity.public_key == second.identity_key
    finally:
        await daemon.stop()


async def test_a_node_that_does_not_answer_is_asked_until_the_nonce_expires(
    nc, tmp_path, vendor, pins, orchestrator
):
    daemon = soft_daemon(tmp_path / "n1", vendor, pins)
    await daemon.start(nc)
    core = Core(nc, orchestrator, vendor)
    try:
        await core.enroll(daemon)
    finally:
        await daemon.stop()
    core.decide(dataclasses.replace(policy(vendor), nonce_ttl_ms=600))
    (challenged,) = core.decide(RotateNodeKey(node_id="n1", requested_by="test"))
    (job,) = node_key_jobs(core.state)
    started = time.monotonic()
    await asyncio.wait_for(carry_out(core, node_key_request(nc, core.outbox, job)), 10)
    assert time.monotonic() - started >= 0.3  # it kept asking until the deadline
    assert core.state.rotations[challenged.rotation_id].status == "open"
    # the node's next rotation closes the unanswered one
    closed, _ = core.decide(RotateNodeKey(node_id="n1", requested_by="test"))
    assert closed == NodeKeyRotationRefused(challenged.rotation_id, "n1", "no_answer")
    assert core.state.nodes["n1"].identity_version == 1


async def test_pkcs11_node_rotates_its_p256_identity(
    nc,
    tmp_path,
    vendor,
    pins,
    orchestrator,
    token_label,  # noqa: F811
):
    token = Pkcs11Hsm(softhsm.MODULE, token_label, PIN, algorithms=(ECDSA_P256, ECDH_P256))
    provision(token, vendor, datetime.now(UTC))
    daemon = NodeDaemon(token, tmp_path / "p11", "dc9", pins, node_id="p11", measurement=SOFTWARE)
    await daemon.start(nc)
    core = Core(nc, orchestrator, vendor)
    try:
        await core.enroll(daemon)
        core.decide(RotateNodeKey(node_id="p11", requested_by="test"))
        (rotated,) = await core.step()
        assert isinstance(rotated, NodeKeyRotated), rotated
        assert rotated.identity_alg == ECDSA_P256
        await core.step()
        new_kid = core.state.nodes["p11"].identity.kid
        assert await core.attest_signer_kid("p11") == new_kid
    finally:
        await daemon.stop()
        token.close()
    reopened = Pkcs11Hsm(softhsm.MODULE, token_label, PIN, algorithms=(ECDSA_P256, ECDH_P256))
    try:
        restarted = NodeDaemon(reopened, tmp_path / "p11", "dc9", pins, measurement=SOFTWARE)
        assert restarted.node.identity.kid == new_kid
        assert restarted.outbox.signer.kid == new_kid
    finally:
        reopened.close()


async def test_the_orchestrator_process_rotates_a_node_key_and_its_log_replays(
    tmp_path, own_server, vendor
):
    nats_server = own_server
    config = write_config(
        tmp_path / "orch", nats_server.url, tmp_path / "vendor" / "root.pem", SOFTWARE
    )
    settings = Settings.load(config)
    signer = load_signer(settings.key_file)
    write_pin(tmp_path / "pins.json", SOURCE, signer)
    daemon = soft_daemon(tmp_path / "n1", vendor, read_pins(tmp_path / "pins.json"))
    nc = await nats.connect(nats_server.url)
    orch_nc = await nats.connect(nats_server.url)
    orch = Orchestrator(orch_nc, settings, signer, operator=operator_signer(settings))
    task = asyncio.create_task(orch.run())
    try:
        await wait_for(lambda: orch.active, what="the lease")
        await daemon.start(nc)
        await wait_for(lambda: "n1" in orch.state.nodes, what="the announcement")
        await orch.submit(EnrollNode(node_id="n1", requested_by="test"))
        await wait_for(lambda: orch.state.nodes["n1"].status == "enrolled", what="enrollment")
        old_kid = daemon.node.identity.kid
        (challenged,) = await orch.submit(RotateNodeKey(node_id="n1", requested_by="test"))
        rid = challenged.rotation_id
        await wait_for(lambda: orch.state.rotations[rid].status == "adopted", what="adoption")
        state, last = orch.state, orch.last_seq
    finally:
        orch.stop()
        await asyncio.wait_for(task, 10)
        await daemon.stop()
        await orch_nc.close()
        await nc.close()
    assert daemon.node.identity.kid == state.nodes["n1"].identity.kid != old_kid
    assert daemon.outbox.signer.kid == daemon.node.identity.kid
    assert state.nodes["n1"].identity_version == 2
    nc = await nats.connect(nats_server.url)
    try:
        reader = LogReader(trust_for(signer))
        replayer = Replayer(check=True)
        await EventStore(nc).scan(
            1, last, lambda seq, data: replayer.apply(reader.admit(data, f"seq {seq}"))
        )
        assert replayer.finish(f"seq {last}") == state
    finally:
        await nc.close()
