"""The subjects the fuzzer aims at: who receives them, what their seeds are, what counts rejects.

One :class:`BusTarget` per subscriber of DESIGN 6 in the :class:`~ops.fuzz.world.World`: the
node daemon's command subjects, the orchestrator's status consumer, the quorum phases (acceptor
and replica), the vault operations and the cosigner's signing subject. A target's seeds are valid
envelopes made afresh (new ids, current ``at``) whenever the campaign asks; its ``counted``
function sums the reject counters its receivers keep (the counters their metrics export).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from messages import subjects
from messages.attestation import AttestRequest, NodeAnnounce, NodeHeartbeat
from messages.cosigning import REQUESTER_ROLE, CheckpointRequest, SignRequest
from messages.gate import REJECTED
from messages.outbox import Outbox
from messages.quorum import MEMBER_ROLE, OPERATOR_ROLE, Accept, Prepare, SnapshotRequest
from messages.signing import Signer, TrustStore
from messages.vault import (
    OPERATIONS,
    RegisterRequest,
    VaultRequest,
    seal_request,
    session_public_key,
)
from node.pins import ORCHESTRATOR_ROLE, read_pins
from node.quorum.acceptor import REPLAY_MS
from ops.fuzz.mutate import Seed
from ops.fuzz.oracle import GateModel
from ops.fuzz.world import FLEET, NODE_ID, OUTSIDER, World

ORCHESTRATOR_SOURCE = "orchestrator"
OPERATOR_SOURCE = "operator"
FOREIGN_STATUS = "orchestrator.status.foreign"


@dataclass
class BusTarget:
    """One subject and the receivers behind it.

    ``receivers`` is how many of them count each message (every acceptor of the fleet hears a
    prepare; one vault member in the queue group hears a request). ``reply`` sends every message
    with a reply subject, for receivers that refuse messages without one before looking at them.
    ``answers`` says that a request gets a :class:`~messages.bus.Rejected` answer when refused.
    """

    name: str
    subject: str
    gate: GateModel
    seeds: Callable[[], list[Seed]]
    counted: Callable[[], int]
    receivers: int = 1
    reply: bool = False
    answers: bool = True


def global_rejects() -> int:
    """Every reject counted by any gate of this process (``hsmfleet_messages_rejected``)."""
    return int(
        sum(s.value for m in REJECTED.collect() for s in m.samples if s.name.endswith("_total"))
    )


def _counter(registry: Any, name: str, labels: dict[str, str]) -> int:
    return int(registry.get_sample_value(name, labels) or 0)


def node_targets(world: World) -> list[BusTarget]:
    """The node daemon's command subjects: attest answers anyone signed by the orchestrator;
    every other verb (ceremony, join, rotate, retire) refuses an attest request, its handler
    checking the type."""
    pins = read_pins(world.root / "pins.json")
    outbox = Outbox(ORCHESTRATOR_SOURCE, world.orchestrator_key)
    gate = world.daemon.gate

    def attest(deep: bool) -> Callable[[], list[Seed]]:
        def seeds() -> list[Seed]:
            body = AttestRequest(nonce=os.urandom(32), expires_ms=outbox.ids.now_ms() + 60_000)
            return [Seed(outbox.envelope(body), world.orchestrator_key, deep=deep)]

        return seeds

    return [
        BusTarget(
            f"node.cmd.{verb}",
            subjects.node_command(NODE_ID, verb),
            GateModel(pins, ORCHESTRATOR_ROLE),
            attest(deep=verb != "attest"),
            lambda: sum(gate.rejects.values()),
        )
        for verb in subjects.NODE_VERBS
    ]


def status_targets(world: World) -> list[BusTarget]:
    """The orchestrator's status consumer: a heartbeat of the node is accepted; an
    announcement of another node on this node's subject is spoofed. A message of a type that is
    no status at all ("foreign": an unsigned checkpoint request) must be refused too."""
    orch = world.orchestrator
    node = orch.state.nodes[NODE_ID]
    heartbeats = Outbox(NODE_ID)
    ghosts = Outbox("ghost-node")
    anyone = Outbox("fuzz-anyone")

    def seeds() -> list[Seed]:
        beat = NodeHeartbeat(node_id=NODE_ID, domain="dc-fuzz", seq=1, uptime_ms=1, hsm_ok=True)
        ghost = NodeAnnounce(
            node_id="ghost-node", domain="dc-x", hsm="soft", measurement=node.measurement
        )
        return [Seed(heartbeats.envelope(beat)), Seed(ghosts.envelope(ghost), deep=True)]

    def foreign() -> list[Seed]:
        return [Seed(anyone.envelope(CheckpointRequest()), deep=True)]

    def counted() -> int:
        spoofed = _counter(
            orch.metrics.registry, "hsmfleet_errors_total", {"kind": "status_spoofed"}
        )
        return sum(orch.status_gate.rejects.values()) + spoofed

    subject = subjects.node_status(NODE_ID)
    gate = GateModel(TrustStore(), None)
    return [
        BusTarget("orchestrator.status", subject, gate, seeds, counted, answers=False),
        BusTarget(FOREIGN_STATUS, subject, gate, foreign, counted, answers=False),
    ]


def quorum_targets(world: World) -> list[BusTarget]:
    """Acceptors (prepare, accept: a request of another fleet is refused after the gate),
    replicas (snapshot: answered; config: a snapshot request is not a configuration)."""
    membership = next(iter(world.members.values())).replica.current()
    trust = membership.trust()
    member = Outbox(OUTSIDER, world.outsider_key)
    operator = Outbox(OPERATOR_SOURCE, world.fleet.operator)
    operator_trust = TrustStore()
    operator_trust.trust(OPERATOR_SOURCE, world.fleet.operator, OPERATOR_ROLE)
    acceptors = [m.replica.acceptor for m in world.members.values()]
    epoch = membership.epoch
    asked = next(iter(world.members))  # the member a snapshot is asked of (others ignore it)

    def requests() -> list[Seed]:
        prepare = Prepare(fleet="otherfleet", epoch=epoch, keys=("user-1",), ballots=(7,))
        accept = Accept(
            fleet="otherfleet",
            epoch=epoch,
            keys=("user-1",),
            ballots=(7,),
            next_ballots=(8,),
            values=(b"value",),
            justifications=(None,),
        )
        return [
            Seed(member.envelope(prepare), world.outsider_key, deep=True),
            Seed(member.envelope(accept), world.outsider_key, deep=True),
        ]

    def snapshot(outbox: Outbox, signer: Signer, deep: bool) -> Callable[[], list[Seed]]:
        def seeds() -> list[Seed]:
            body = SnapshotRequest(fleet=FLEET, epoch=epoch, member=asked, after="", limit=5)
            return [Seed(outbox.envelope(body), signer, deep=deep)]

        return seeds

    receivers = len(world.members)
    return [
        *(
            BusTarget(
                f"quorum.{phase}",
                subjects.quorum(FLEET, phase),
                GateModel(trust, MEMBER_ROLE, REPLAY_MS),
                requests,
                lambda: sum(sum(a.rejects.values()) for a in acceptors),
                receivers=receivers,
                reply=True,
                answers=False,
            )
            for phase in ("prepare", "accept")
        ),
        BusTarget(
            "quorum.snapshot",
            subjects.quorum(FLEET, "snapshot"),
            GateModel(trust, MEMBER_ROLE),
            snapshot(member, world.outsider_key, deep=False),
            global_rejects,
            receivers=receivers,
        ),
        BusTarget(
            "quorum.config",
            subjects.quorum(FLEET, "config"),
            GateModel(operator_trust, OPERATOR_ROLE),
            snapshot(operator, world.fleet.operator, deep=True),
            global_rejects,
            receivers=receivers,
        ),
    ]


def vault_targets(world: World) -> list[BusTarget]:
    """Vault operations: a well-sealed request whose sealed id is not the envelope's."""
    session = session_public_key(world.fleet.session_public)
    client = Outbox("vault-client")
    vaults = [m.vault for m in world.members.values()]

    def seeds_for(op: str) -> Callable[[], list[Seed]]:
        def seeds() -> list[Seed]:
            plain = RegisterRequest(
                id=client.ids.new(),
                user="fuzz-user",
                pin=b"1234",
                secret=b"secret",
                answer_key=os.urandom(32),
            )
            env = client.envelope(VaultRequest(sealed=seal_request(session, FLEET, op, plain)))
            return [Seed(env, deep=True)]

        return seeds

    return [
        BusTarget(
            f"vault.{op}",
            subjects.vault(FLEET, op),
            GateModel(TrustStore(), None),
            seeds_for(op),
            lambda: sum(sum(v.rejects.values()) for v in vaults),
            reply=True,
        )
        for op in OPERATIONS
    ]


def cosigner_target(world: World) -> BusTarget:
    """The cosigner's signing subject: a checkpoint request is answered; a document that is no
    stage bundle or artifact is refused by the cosigner."""
    cosigner = world.cosigner.cosigner
    outbox = Outbox(ORCHESTRATOR_SOURCE, world.orchestrator_key)

    def seeds() -> list[Seed]:
        return [
            Seed(outbox.envelope(CheckpointRequest()), world.orchestrator_key),
            Seed(
                outbox.envelope(SignRequest(document={"format": "fuzz", "n": 1})),
                world.orchestrator_key,
                deep=True,
            ),
        ]

    return BusTarget(
        "cosign.sign",
        subjects.cosign(cosigner.id),
        GateModel(cosigner.config.trust(), REQUESTER_ROLE),
        seeds,
        world.cosigner_rejects,
    )


def all_targets(world: World) -> list[BusTarget]:
    return [
        *node_targets(world),
        *status_targets(world),
        *quorum_targets(world),
        *vault_targets(world),
        cosigner_target(world),
    ]
