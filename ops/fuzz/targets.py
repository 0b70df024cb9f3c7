"""The subjects the fuzzer aims at: who receives them, what their seeds are, what counts rejects.

One :class:`BusTarget` per bus subscriber in the :class:`~ops.fuzz.world.World`: the
node daemon's command subjects, the orchestrator's status consumer, the quorum phases (acceptor
and replica), the vault operations and the cosigner's signing subject. A target's seeds are valid
envelopes made afresh (new ids, current ``at``) whenever the campaign asks; its ``counted``
function sums the reject counters its receivers keep (the counters their metrics export).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import opaque_ke_py as opaque

from messages import subjects
from messages.attestation import AttestRequest, NodeAnnounce, NodeHeartbeat
from messages.cosigning import REQUESTER_ROLE, CheckpointRequest, SignRequest
from messages.ids import format_time, id_time_ms
from messages.quorum import MEMBER_ROLE, OPERATOR_ROLE, Accept, Prepare, SnapshotRequest
from messages.signing import Signer, TrustStore, key_id
from messages.vault import (
    ANSWER_KEY_BYTES,
    KE3_BYTES,
    OPERATIONS,
    RECOVER_FINISH,
    RECOVER_START,
    REGISTER_START,
    REGISTRATION_UPLOAD_BYTES,
    Plaintext,
    RecoverFinish,
    RecoverStart,
    Register,
    RegisterStart,
    VaultRequest,
    kem_public_key,
    seal_request,
)
from messages.vault_authorization import RECOVER
from messages.vault_authorization import REGISTER as REGISTER_KIND
from node.pins import ORCHESTRATOR_ROLE, read_pins
from node.quorum.acceptor import REPLAY_MS
from ops.fuzz.mutate import Seed
from ops.fuzz.oracle import GateModel
from ops.fuzz.world import FLEET, NODE_ID, OUTSIDER, World
from transport.gate import REJECTED
from transport.outbox import Outbox

ORCHESTRATOR_SOURCE = "orchestrator"
OPERATOR_SOURCE = "operator"
FOREIGN_STATUS = "orchestrator.status.foreign"


@dataclass
class BusTarget:
    """One subject and the receivers behind it.

    ``receivers`` is how many of them count each message (every acceptor of the fleet hears a
    prepare; one vault member in the queue group hears a request). ``reply`` sends every message
    with a reply subject, for receivers that refuse messages without one before looking at them.
    ``answers`` says that a request gets a :class:`~transport.bus.Rejected` answer when refused.
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
    """Vault operations, one target each, with requests sealed to the fleet's vault key that
    its members refuse before anything runs: a valid, authorized request of the operation under
    an envelope id other than the one sealed inside it (the gate admits it, the member's applet
    opens it, the service refuses it), and requests whose plaintext the applet refuses (an
    answer key of the wrong length, another operation's plaintext, sealed for another fleet's
    operation) or that name a vault key the fleet does not hold."""
    keys = world.fleet.vault_keys
    kem = kem_public_key(keys.kem.public_key)
    kid = key_id(keys.kem.alg, keys.kem.public_key)
    client = Outbox("vault-client")
    vaults = [m.vault for m in world.members.values()]

    def plaintext(op: str, request_id: str, answer_key: bytes) -> Plaintext:
        user = "fuzz-user"
        if op == RECOVER_FINISH:
            return RecoverFinish(
                id=request_id,
                user=user,
                answer_key=answer_key,
                login=os.urandom(400),
                finalization=os.urandom(KE3_BYTES),
            )
        if op == RECOVER_START:
            return RecoverStart(
                id=request_id,
                user=user,
                answer_key=answer_key,
                authorization=world.authorize(user, RECOVER, request_id),
                credential_request=opaque.client_login_start(b"1234").get_message(),
            )
        start = RegisterStart(
            id=request_id,
            user=user,
            answer_key=answer_key,
            authorization=world.authorize(user, REGISTER_KIND, request_id),
            registration_request=opaque.client_registration_start(b"1234").get_message(),
        )
        if op == REGISTER_START:
            return start
        return Register(
            id=client.ids.new(),
            user=user,
            answer_key=answer_key,
            authorization=start.authorization,
            registration=request_id,
            upload=os.urandom(REGISTRATION_UPLOAD_BYTES),
            secret=os.urandom(48),
        )

    def request(request_id: str, key: str, sealed: bytes) -> Seed:
        """An unsigned request under envelope id ``request_id`` (as clients send them)."""
        env = client.envelope(VaultRequest(key=key, sealed=sealed))
        return Seed(replace(env, id=request_id, at=format_time(id_time_ms(request_id))), deep=True)

    def seeds_for(op: str) -> Callable[[], list[Seed]]:
        other = OPERATIONS[(OPERATIONS.index(op) + 1) % len(OPERATIONS)]

        def seeds() -> list[Seed]:
            valid = plaintext(op, client.ids.new(), os.urandom(ANSWER_KEY_BYTES))
            short = plaintext(op, client.ids.new(), os.urandom(16))
            elsewhere = plaintext(other, client.ids.new(), os.urandom(ANSWER_KEY_BYTES))
            sealed = seal_request(kem, FLEET, op, valid)
            return [
                request(client.ids.new(), kid, sealed),  # not the id sealed inside
                request(short.id, kid, seal_request(kem, FLEET, op, short)),
                request(elsewhere.id, kid, seal_request(kem, FLEET, op, elsewhere)),
                request(valid.id, kid, seal_request(kem, "otherfleet", op, valid)),
                request(valid.id, "not-the-fleets-key", sealed),
            ]

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
