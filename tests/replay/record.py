"""Record the golden logs in ``tests/data`` (run ``python -m tests.replay.record``).

Each scenario is recorded with the pure core and a fixed orchestrator key, whose public key is
``tests/data/orchestrator.pub``. Files are named ``<scenario>.v<N>.jsonl`` after the message
version of the entries that changed between versions (``node.announced``). Divergent logs are
recorded as an older, buggy build would have written them: validly signed, but holding events
that today's ``decide`` does not emit.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from messages.attestation import NodeAnnounce
from messages.events import (
    AttestationAnswer,
    EnrollNode,
    LogEntry,
    NodeAnnounced,
    NodeEnrolled,
    SetPolicy,
    Tick,
)
from messages.signing import Ed25519Signer
from orchestrator.core import decide
from orchestrator.log import GENESIS
from orchestrator.logfile import Header
from tests.replay.kit import MEASUREMENT, T0, PureLog, Vendor

DATA = Path(__file__).resolve().parent.parent / "data"
SIGNER = Ed25519Signer.from_seed(hashlib.sha256(b"hsmfleet golden log orchestrator").digest())
DOMAINS = ("dc-1", "dc-2", "dc-3")


@dataclass(frozen=True)
class NodeAnnouncedV1(LogEntry):
    """``node.announced`` as version 1 wrote it: the failure domain was called ``zone``."""

    TYPE = "node.announced"
    VERSION = 1
    node_id: str
    zone: str
    hsm: str
    measurement: str

    def subject(self) -> str:
        return f"fleet.evt.node.{self.node_id}"


def _as_v1(events: list[LogEntry]) -> list[LogEntry]:
    return [
        NodeAnnouncedV1(e.node_id, e.domain, e.hsm, e.measurement)
        if isinstance(e, NodeAnnounced)
        else e
        for e in events
    ]


def enrollment_mixed(version: int = 2) -> PureLog:
    """Two orchestrators in turn enroll five nodes; two are rejected, one never answers."""
    log = PureLog(SIGNER, holder="orch-a")
    vendor, stranger = Vendor(), Vendor("Unknown Vendor")
    now = T0
    log.take_lease(1, now)
    log.decide(
        SetPolicy(
            vendor_roots=(vendor.root_der,),
            allowed_measurements=(MEASUREMENT,),
            nonce_ttl_ms=30_000,
            auto_enroll=False,
        ),
        now,
    )
    for i in range(5):
        now += 10
        command = NodeAnnounce(
            node_id=f"n{i}", domain=DOMAINS[i % 3], hsm="soft", measurement=MEASUREMENT
        )
        ctx = log.context(now)
        events = decide(log.state, command, ctx)
        log.record(command, events, ctx, _as_v1(events) if version == 1 else None)
    answers = {
        "n0": vendor.device("n0"),
        "n1": vendor.device("n1"),
        "n2": stranger.device("n2"),
        "n3": vendor.device("n3"),
    }
    for node_id, device in answers.items():
        now += 100
        (issued,) = log.decide(EnrollNode(node_id=node_id, requested_by="operator"), now)
        measurement = MEASUREMENT if node_id != "n3" else "sha256:" + "0" * 64
        log.decide(
            AttestationAnswer(
                enrollment_id=issued.enrollment_id,
                node_id=node_id,
                reply=device.answer(issued.nonce, measurement),
            ),
            now + 50,
        )
        if node_id == "n1":
            log.holder = "orch-b"
            log.take_lease(7, now + 60)
    now += 100
    log.decide(EnrollNode(node_id="n4", requested_by="operator"), now)
    log.decide(Tick(), now + 40_000)
    return log


def divergent_measurement() -> PureLog:
    """A buggy build enrolled a node whose software is not on the allow-list."""
    log = enrollment_mixed()
    vendor = Vendor()
    log.decide(
        SetPolicy(
            vendor_roots=(vendor.root_der,),
            allowed_measurements=(MEASUREMENT,),
            nonce_ttl_ms=30_000,
            auto_enroll=False,
        ),
        T0 + 50_000,
    )
    log.decide(NodeAnnounce(node_id="n9", domain="dc-1", hsm="soft", measurement="rogue"), T0)
    (issued,) = log.decide(EnrollNode(node_id="n9", requested_by="operator"), T0 + 50_010)
    device = vendor.device("n9")
    att = device.attestation(issued.nonce, "sha256:" + "ee" * 32)
    command = AttestationAnswer(
        enrollment_id=issued.enrollment_id, node_id="n9", reply=device.reply(att)
    )
    enrolled = NodeEnrolled(
        enrollment_id=issued.enrollment_id,
        node_id="n9",
        domain="dc-1",
        identity_alg=att.identity_alg,
        identity_key=att.identity_key,
        transport_alg=att.transport_alg,
        transport_key=att.transport_key,
        measurement=att.measurement,
        device_fingerprint=hashlib.sha256(att.chain[-1]).hexdigest(),
        attestation_digest="0" * 64,
    )
    log.record(command, [enrolled], log.context(T0 + 50_020))
    return log


def divergent_extra_event() -> PureLog:
    """A buggy build recorded a node announcement twice in one decision."""
    log = enrollment_mixed()
    command = NodeAnnounce(node_id="n8", domain="dc-2", hsm="soft", measurement=MEASUREMENT)
    event = NodeAnnounced(node_id="n8", domain="dc-2", hsm="soft", measurement=MEASUREMENT)
    log.record(command, [event, event], log.context(T0 + 60_000))
    return log


def divergent_fenced() -> PureLog:
    """The deposed orchestrator kept deciding after the lease moved on."""
    log = enrollment_mixed()
    log.holder = "orch-a"
    command = NodeAnnounce(node_id="n7", domain="dc-3", hsm="soft", measurement=MEASUREMENT)
    event = NodeAnnounced(node_id="n7", domain="dc-3", hsm="soft", measurement=MEASUREMENT)
    log.record(command, [event], log.context(T0 + 60_000))
    return log


SCENARIOS = {
    "enrollment-mixed.v2": enrollment_mixed,
    "enrollment-mixed.v1": lambda: enrollment_mixed(version=1),
    "divergent-measurement.v2": divergent_measurement,
    "divergent-extra-event.v2": divergent_extra_event,
    "divergent-fenced.v2": divergent_fenced,
}


def write(name: str, log: PureLog) -> Path:
    path = DATA / f"{name}.jsonl"
    header = Header("FLEET_EVENTS", 1, GENESIS).encode()
    path.write_bytes(header + b"\n" + log.jsonl())
    return path


def main() -> None:
    DATA.mkdir(exist_ok=True)
    (DATA / "orchestrator.pub").write_text(SIGNER.public_key.hex() + "\n")
    for name, scenario in SCENARIOS.items():
        print(write(name, scenario()))


if __name__ == "__main__":
    main()
