"""Node daemons on a real nats-server: announce, heartbeat, attest, refuse forgeries, restart.

The orchestrator's side here is :func:`ops.bench.enrollment.request_attestation` and the pure
verifier; recording enrollment events is the orchestrator's own business.
"""

import asyncio
import json
import os
import threading
import time
from datetime import UTC, datetime

import pytest
from structlog.testing import capture_logs

from messages import Ed25519Signer, TrustStore, subjects
from messages.attestation import (
    ECDH_P256,
    Attestation,
    AttestationRejected,
    AttestRequest,
    NodeAnnounce,
    NodeHeartbeat,
    verify_attestation,
)
from messages.signing import ECDSA_P256, ED25519, TrustedKey, verify_envelope
from node.attest import attest
from node.daemon import NodeConfigError, NodeDaemon
from node.hsm import HsmStateTampered, SoftHsm, softhsm
from node.hsm.cryptoki import Pkcs11Hsm, token_lock
from node.hsm.soft import STATE_FILE
from node.identity import IDENTITY, NODE_FILE, NodeIdentityError
from node.measurement import measure
from node.pins import read_pins, write_pin
from node.vendor import VendorCA, provision
from ops.bench.enrollment import request_attestation
from tests.integration.test_pkcs11_backend import PIN, softhsm_dir, token_label  # noqa: F401
from transport.bus import RequestRejected, request
from transport.gate import Gate
from transport.outbox import IdSource, Outbox

KEY = bytes(range(32))


@pytest.fixture(scope="module")
def vendor(tmp_path_factory):
    return VendorCA.init(tmp_path_factory.mktemp("vendor"), datetime.now(UTC))


@pytest.fixture(scope="module")
def orchestrator():
    return Ed25519Signer.generate()


@pytest.fixture
def pins(tmp_path, orchestrator):
    path = tmp_path / "orchestrator.json"
    write_pin(path, "orchestrator", orchestrator)
    return read_pins(path)


def soft_daemon(state, vendor, pins, domain="dc1", **kw):
    hsm = SoftHsm(state / "hsm", KEY)
    provision(hsm, vendor, datetime.now(UTC))
    return NodeDaemon(hsm, state, domain, pins, **kw)


def pkcs11_daemon(label, state, vendor, pins, node_id, domain="dc1"):
    """A node on a fresh SoftHSM2 token without Ed25519 (a P-256-only HSM), certified."""
    token = Pkcs11Hsm(softhsm.MODULE, label, PIN, algorithms=(ECDSA_P256, ECDH_P256))
    provision(token, vendor, datetime.now(UTC))
    return NodeDaemon(token, state, domain, pins, node_id=node_id)


async def enroll(nc, orchestrator, vendor, node_id):
    nonce = os.urandom(32)
    now = time.time_ns() // 1_000_000
    answer = await request_attestation(
        nc, Outbox("orchestrator", orchestrator), node_id, nonce, now + 5000
    )
    return verify_attestation(
        answer,
        nonce=nonce,
        vendor_roots=[vendor.root],
        allowed_measurements={measure()},
        now_ms=now,
    )


async def test_announces_then_heartbeats(nc, tmp_path, vendor, pins):
    daemon = soft_daemon(tmp_path, vendor, pins, heartbeat_s=0.05)
    seen = asyncio.Queue()
    gate = Gate(TrustStore())

    async def collect(msg):
        seen.put_nowait(gate.admit(msg.data, None))

    sub = await nc.subscribe(subjects.node_status(daemon.node_id), cb=collect)
    await daemon.start(nc)
    try:
        announce = await asyncio.wait_for(seen.get(), 5)
        beats = [await asyncio.wait_for(seen.get(), 5) for _ in range(2)]
    finally:
        await daemon.stop()
        await sub.unsubscribe()
    assert announce.body == NodeAnnounce(daemon.node_id, "dc1", "soft", measure())
    assert [b.body.seq for b in beats] == [1, 2]
    assert all(isinstance(b.body, NodeHeartbeat) and b.body.hsm_ok for b in beats)
    trust = TrustStore(
        [TrustedKey(daemon.node_id, ED25519, daemon.node.identity.public_key, frozenset({"node"}))]
    )
    assert verify_envelope(announce.envelope, trust, "node").public_key == (
        daemon.node.identity.public_key
    )


async def test_five_software_and_one_pkcs11_node_enroll(
    nc,
    tmp_path,
    vendor,
    pins,
    orchestrator,
    token_label,  # noqa: F811
):
    daemons = [
        soft_daemon(tmp_path / f"soft{i}", vendor, pins, domain=f"dc{i % 3}") for i in range(5)
    ]
    daemons.append(pkcs11_daemon(token_label, tmp_path / "p11", vendor, pins, "hsm-p11", "dc9"))
    token = daemons[-1].hsm
    for daemon in daemons:
        await daemon.start(nc)
    try:
        attested = await asyncio.gather(
            *(enroll(nc, orchestrator, vendor, d.node_id) for d in daemons)
        )
    finally:
        for daemon in daemons:
            await daemon.stop()
        token.close()
    assert [a.node_id for a in attested] == [d.node_id for d in daemons]
    for daemon, node in zip(daemons, attested, strict=True):
        assert node.identity_key == daemon.node.identity.public_key
        assert node.transport_key == daemon.node.transport.public_key
    assert [a.identity_alg for a in attested] == [ED25519] * 5 + [ECDSA_P256]
    assert len({a.device_fingerprint for a in attested}) == 6


async def test_forged_attest_requests_get_no_answer_that_counts(
    nc, tmp_path, vendor, pins, orchestrator
):
    daemon = soft_daemon(tmp_path, vendor, pins)
    await daemon.start(nc)
    subject = subjects.node_command(daemon.node_id, "attest")
    mallory = Ed25519Signer.generate()
    body = AttestRequest(nonce=os.urandom(32), expires_ms=2**40)
    forgeries = [
        Outbox("orchestrator", mallory).envelope(body),
        Outbox("orchestrator").envelope(body),
        Outbox("someone-else", orchestrator).envelope(body),
    ]
    genuine = Outbox("orchestrator", orchestrator).envelope(body)
    answers = []
    try:
        for env in forgeries:
            with pytest.raises(RequestRejected) as info:
                await request(nc, subject, env, Gate(TrustStore()), None)
            answers.append(info.value.detail["kind"])
        first = await request(nc, subject, genuine, Gate(TrustStore()), None)
        with pytest.raises(RequestRejected, match="already accepted"):
            await request(nc, subject, genuine, Gate(TrustStore()), None)
        await nc.publish(subject, b"\x00 not a message")
        await nc.flush()
    finally:
        await daemon.stop()
    assert answers == ["unknown_signer", "unsigned", "unknown_signer"]
    assert isinstance(first.body, Attestation)
    assert daemon.gate.accepted == 1
    assert daemon.gate.rejects["unknown_signer"] == 2 and daemon.gate.rejects["unsigned"] == 1
    assert daemon.gate.rejects["replayed"] == 1


async def test_a_garbled_answer_is_rejected_as_garbled(nc, tmp_path, vendor, pins, orchestrator):
    """A hostile host answers in a node's place with a truncated or foreign message."""
    daemon = soft_daemon(tmp_path, vendor, pins)
    genuine = daemon.outbox.envelope(
        attest(daemon.node, daemon.hsm, measure(), AttestRequest(os.urandom(32), 0))
    ).encode()
    replies = [
        genuine[: len(genuine) // 2],
        daemon.outbox.envelope(NodeHeartbeat("x", "d", 1, 1, True)).encode(),
    ]

    async def impostor(msg):
        await nc.publish(msg.reply, replies.pop(0))

    sub = await nc.subscribe(subjects.node_command("impostor", "attest"), cb=impostor)
    try:
        for _ in range(2):
            with pytest.raises(AttestationRejected) as info:
                await request_attestation(
                    nc, Outbox("orchestrator", orchestrator), "impostor", os.urandom(32), 2**40
                )
            assert info.value.reason == "garbled"
    finally:
        await sub.unsubscribe()


async def test_an_answer_not_signed_by_its_identity_key_is_refused(
    nc, tmp_path, vendor, pins, orchestrator
):
    """A host relays a genuine attestation but cannot sign for the identity key it attests."""
    daemon = soft_daemon(tmp_path, vendor, pins)
    nonce = os.urandom(32)
    genuine = attest(daemon.node, daemon.hsm, measure(), AttestRequest(nonce, 0))
    relays = [
        Outbox(daemon.node_id, Ed25519Signer.generate()).envelope(genuine),
        Outbox(daemon.node_id).envelope(genuine),
    ]

    async def relay(msg):
        await nc.publish(msg.reply, relays.pop(0).encode())

    sub = await nc.subscribe(subjects.node_command(daemon.node_id, "attest"), cb=relay)
    try:
        for _ in range(2):
            with pytest.raises(AttestationRejected) as info:
                await request_attestation(
                    nc, Outbox("orchestrator", orchestrator), daemon.node_id, nonce, 2**40
                )
            assert info.value.reason == "bad_answer_signature"
    finally:
        await sub.unsubscribe()
    assert relays == []


async def test_node_with_a_skewed_clock_still_enrolls(nc, tmp_path, vendor, pins, orchestrator):
    daemon = soft_daemon(tmp_path, vendor, pins)
    hours_behind = IdSource(clock_ms=lambda: time.time_ns() // 1_000_000 - 3 * 3600 * 1000)
    daemon.outbox = Outbox(daemon.node_id, daemon.outbox.signer, ids=hours_behind)
    await daemon.start(nc)
    try:
        assert (await enroll(nc, orchestrator, vendor, daemon.node_id)).node_id == daemon.node_id
    finally:
        await daemon.stop()


async def test_restart_keeps_identity(nc, tmp_path, vendor, pins, orchestrator):
    first = soft_daemon(tmp_path, vendor, pins)
    await first.start(nc)
    before = await enroll(nc, orchestrator, vendor, first.node_id)
    await first.stop()
    again = NodeDaemon(SoftHsm(tmp_path / "hsm", KEY), tmp_path, "dc1", pins)
    await again.start(nc)
    try:
        after = await enroll(nc, orchestrator, vendor, again.node_id)
    finally:
        await again.stop()
    assert again.node_id == first.node_id == before.node_id == after.node_id
    assert after.identity_key == before.identity_key
    assert after.transport_key == before.transport_key
    assert after.device_fingerprint == before.device_fingerprint
    assert after.attestation_digest != before.attestation_digest


def test_restart_refuses_a_different_identity(tmp_path, vendor, pins):
    soft_daemon(tmp_path / "a", vendor, pins, node_id="alpha")
    with pytest.raises(NodeIdentityError, match="another node"):
        NodeDaemon(SoftHsm(tmp_path / "a" / "hsm", KEY), tmp_path / "a", "dc1", pins, node_id="b")
    other = SoftHsm(tmp_path / "b" / "hsm", KEY)
    provision(other, vendor, datetime.now(UTC))
    with pytest.raises(NodeIdentityError, match="does not hold the identity"):
        NodeDaemon(other, tmp_path / "a", "dc1", pins)


def test_a_node_record_that_does_not_parse_or_names_no_usable_id_is_refused(tmp_path, vendor, pins):
    soft_daemon(tmp_path, vendor, pins, node_id="alpha")
    record = tmp_path / NODE_FILE
    kid = json.loads(record.read_text())["identity_kid"]
    for text in ("{", '{"node_id": "alpha"}', json.dumps({"node_id": "a.b", "identity_kid": kid})):
        record.write_text(text)
        with pytest.raises(NodeIdentityError, match="not a node record"):
            NodeDaemon(SoftHsm(tmp_path / "hsm", KEY), tmp_path, "dc1", pins)
    fresh = SoftHsm(tmp_path / "new" / "hsm", KEY)
    provision(fresh, vendor, datetime.now(UTC))
    labels = fresh.labels()
    with pytest.raises(NodeIdentityError, match="node id"):
        NodeDaemon(fresh, tmp_path / "new", "dc1", pins, node_id="has space")
    assert not (tmp_path / "new" / NODE_FILE).exists() and fresh.labels() == labels


def test_tampered_hsm_state_stops_the_node_from_starting(tmp_path, vendor, pins):
    soft_daemon(tmp_path, vendor, pins)
    path = tmp_path / "hsm" / STATE_FILE
    path.write_bytes(path.read_bytes()[:-1] + bytes([path.read_bytes()[-1] ^ 0x80]))
    with pytest.raises(HsmStateTampered, match="altered"):
        NodeDaemon(SoftHsm(tmp_path / "hsm", KEY), tmp_path, "dc1", pins)


async def test_heartbeats_survive_an_hsm_that_cannot_sign(nc, tmp_path, vendor, pins):
    """A heartbeat the HSM cannot sign is skipped and logged; the loop goes on, stop is clean."""
    seen = asyncio.Queue()
    gate = Gate(TrustStore())

    async def collect(msg):
        seen.put_nowait(gate.admit(msg.data, None).body)

    with capture_logs() as logs:
        daemon = soft_daemon(tmp_path, vendor, pins, heartbeat_s=0.02)
        sub = await nc.subscribe(subjects.node_status(daemon.node_id), cb=collect)
        await daemon.start(nc)
        try:
            assert isinstance(await asyncio.wait_for(seen.get(), 5), NodeAnnounce)
            before = (await asyncio.wait_for(seen.get(), 5)).seq
            daemon.hsm.destroy(IDENTITY)
            for _ in range(500):
                if any(e["event"] == "heartbeat not signed" for e in logs):
                    break
                await asyncio.sleep(0.01)
            daemon.hsm.generate(IDENTITY, ED25519)
            while not seen.empty():
                seen.get_nowait()
            after = (await asyncio.wait_for(seen.get(), 5)).seq
        finally:
            await daemon.stop()
            await sub.unsubscribe()
    skipped = [e for e in logs if e["event"] == "heartbeat not signed"]
    assert skipped and skipped[0]["error"] == "hsm_key_not_found"
    assert after > before + 1


def test_a_heartbeat_interval_that_is_not_positive_is_refused(tmp_path, vendor, pins):
    for seconds in (0, -1.0, float("nan")):
        with pytest.raises(NodeConfigError, match="positive"):
            soft_daemon(tmp_path, vendor, pins, heartbeat_s=seconds)
    assert not (tmp_path / NODE_FILE).exists()


async def test_a_pkcs11_node_waits_for_its_token_off_the_event_loop(
    nc,
    tmp_path,
    vendor,
    pins,
    orchestrator,
    token_label,  # noqa: F811
):
    """While another thread holds the token, the loop stays free: it is what lets go of it."""
    daemon = pkcs11_daemon(token_label, tmp_path, vendor, pins, "hsm-busy")
    token = daemon.hsm
    await daemon.start(nc)
    release, released_by_loop = threading.Event(), []

    def hold_the_token():
        with token_lock(softhsm.MODULE, token_label):
            released_by_loop.append(release.wait(10))

    holder = threading.Thread(target=hold_the_token)
    holder.start()
    try:
        enrolled = asyncio.create_task(enroll(nc, orchestrator, vendor, daemon.node_id))
        await asyncio.sleep(0.2)  # the node's handler is now waiting for the token
        release.set()
        node = await asyncio.wait_for(enrolled, 10)
    finally:
        release.set()
        holder.join(10)
        await daemon.stop()
        token.close()
    assert released_by_loop == [True]
    assert node.node_id == "hsm-busy"
