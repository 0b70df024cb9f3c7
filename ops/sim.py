"""An in-process fleet for pure tests, golden logs and benchmarks of rollouts.

:class:`SimNode` is a node without NATS: a real software HSM provisioned by a real vendor CA, the
node's real attestation and ceremony code (:mod:`node.attest`, :mod:`node.ceremony`), answers
signed by its identity key as the daemon signs them. Only the replication group is stood in
for: a probe is answered with acceptances signed by the first ``threshold`` members' identity
keys, the votes a quorum of real replicas would send (the integration tests run real ones).

:class:`Drill` carries out a rollout's effects the way the orchestrator's shell does (challenges,
member commands, bundles to log, the artifact to publish) but one after another, deciding with
a :class:`~orchestrator.shell.recorder.Recorder` at a clock the caller moves. It counts the time
spent in the orchestrator's own work (deciding, sealing, folding, reading effects off the state)
apart from the members' and the cosigners'.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from messages.attestation import AttestRequest, NodeAnnounce
from messages.ceremony import (
    DestroyFleetKeys,
    Drained,
    DrainFleet,
    GenerateFleetKeys,
    ImportFleetKeys,
    Joined,
    JoinFleet,
    ProbeProof,
    Retired,
    RetireFleet,
    probe_key,
    probe_value,
)
from messages.errors import HsmfleetError
from messages.events import LogEntry
from messages.inputs import AttestationAnswer, MemberAnswer, SetPolicy, Tick
from messages.quorum import Accepted, value_digest
from messages.rejected import Rejected
from messages.schema import Body
from node import ceremony
from node.attest import attest
from node.hsm.soft import SoftHsm
from node.identity import IDENTITY, establish
from node.vendor import VendorCA, provision
from orchestrator.core.decisions import open_enrollments, overdue
from orchestrator.core.rollout.decisions import PROBE
from orchestrator.core.rollout.effects import (
    MemberCommand,
    artifacts_to_publish,
    bundles_to_log,
    retirements_to_log,
)
from orchestrator.core.rollout.effects import member_commands as commands_of
from orchestrator.core.state import State
from orchestrator.shell.cosigning import Cosigning
from orchestrator.shell.recorder import Recorder
from orchestrator.shell.retirement_document import log_retirement
from transport.outbox import Outbox

MEASUREMENT = "sha256:" + "5e" * 32
SEALING_KEY = bytes(range(32))
T = TypeVar("T")


HsmFactory = Callable[[Path, str], SoftHsm]
"""Makes the software HSM of a node (its state directory, its id)."""


def soft_hsm(state_dir: Path, node_id: str) -> SoftHsm:
    return SoftHsm(state_dir, SEALING_KEY)


class SimNode:
    """One node's HSM, identity and answers."""

    def __init__(
        self, root: Path, node_id: str, domain: str, vendor: VendorCA, hsm: HsmFactory = soft_hsm
    ) -> None:
        self.node_id = node_id
        self.domain = domain
        self.hsm = hsm(root / node_id / "hsm", node_id)
        provision(self.hsm, vendor, datetime.now(UTC))
        self.identity = establish(self.hsm, root / node_id, node_id)
        self.outbox = Outbox(node_id, self.hsm.signer(IDENTITY))
        self.draining: set[str] = set()

    def announce(self) -> NodeAnnounce:
        return NodeAnnounce(
            node_id=self.node_id, domain=self.domain, hsm=self.hsm.kind, measurement=MEASUREMENT
        )

    def reply(self, body: Body) -> bytes:
        """``body`` as the daemon sends it: an envelope signed by the identity key."""
        return self.outbox.envelope(body).encode()

    def attest(self, nonce: bytes, expires_ms: int) -> bytes:
        request = AttestRequest(nonce=nonce, expires_ms=expires_ms)
        return self.reply(attest(self.identity, self.hsm, MEASUREMENT, request))

    def handle(self, body: Body) -> Body:
        """The answer to a rollout command (a probe is the fleet's to answer)."""
        if isinstance(body, GenerateFleetKeys):
            return ceremony.generate(self.hsm, self.node_id, body)
        if isinstance(body, ImportFleetKeys):
            return ceremony.import_keys(self.hsm, self.node_id, body)
        if isinstance(body, JoinFleet):
            return Joined(fleet=body.fleet, epoch=body.epoch, node=self.node_id, proof=None)
        if isinstance(body, DrainFleet):
            self.draining.add(body.fleet)
            return Drained(fleet=body.fleet, epoch=body.epoch, node=self.node_id)
        assert isinstance(body, RetireFleet | DestroyFleetKeys)
        roles = ceremony.destroy(self.hsm, body.fleet, body.rollout)
        return Retired(fleet=body.fleet, epoch=body.epoch, node=self.node_id, destroyed=roles)


class SimFleet:
    """Nodes sharing one vendor CA; ``down`` ones do not answer."""

    def __init__(
        self, root: Path, members: list[tuple[str, str]], hsm: HsmFactory = soft_hsm
    ) -> None:
        self.vendor = VendorCA.init(root / "vendor", datetime.now(UTC))
        self.nodes = {n: SimNode(root, n, domain, self.vendor, hsm) for n, domain in members}
        self.down: set[str] = set()

    def policy(self, nonce_ttl_ms: int = 30_000) -> SetPolicy:
        return SetPolicy(
            vendor_roots=(self.vendor.root_der,),
            allowed_measurements=(MEASUREMENT,),
            nonce_ttl_ms=nonce_ttl_ms,
            auto_enroll=False,
        )

    def answer(self, command: MemberCommand) -> bytes:
        node = self.nodes[command.node_id]
        try:
            if command.step == PROBE:
                assert isinstance(command.body, JoinFleet)
                return node.reply(self._probe(node, command.body))
            return node.reply(node.handle(command.body))
        except HsmfleetError as exc:
            return node.reply(Rejected(kind=exc.kind, reason=str(exc)))

    def _probe(self, proposer: SimNode, command: JoinFleet) -> Joined:
        """The acceptances of the first ``accept_quorum`` members of the configuration."""
        config = command.config
        key, n = probe_key(command.epoch), 1
        digest = value_digest(probe_value(command.fleet, command.epoch))
        voters = sorted(config.accept_set)[: config.accept_quorum]
        votes = tuple(
            self.nodes[voter]
            .outbox.envelope(
                Accepted(
                    fleet=command.fleet,
                    proposer=proposer.node_id,
                    keys=(key,),
                    ballots=(n,),
                    digests=(digest,),
                    epoch=config.epoch,
                )
            )
            .encode()
            for voter in voters
        )
        proof = ProbeProof(key=key, ballot=n, by=proposer.node_id, digest=digest, votes=votes)
        return Joined(fleet=command.fleet, epoch=command.epoch, node=proposer.node_id, proof=proof)


class Drill:
    """Carries out rollout effects against a :class:`SimFleet` and real cosigners."""

    def __init__(
        self,
        fleet: SimFleet,
        cosigning: Cosigning,
        recorder: Recorder,
        clock: Callable[[], int],
    ) -> None:
        self.fleet = fleet
        self.cosigning = cosigning
        self.recorder = recorder
        self.clock = clock
        self.core_s = 0.0
        self.decisions = 0

    def decide(self, command: Body) -> list[LogEntry]:
        """Decide at the clock's time, counting the time as orchestrator work."""
        started = time.perf_counter()
        try:
            return self.recorder.decide(command, self.clock())
        finally:
            self.core_s += time.perf_counter() - started
            self.decisions += 1

    def _timed(self, read: Callable[..., T], *args: object) -> T:
        started = time.perf_counter()
        try:
            return read(*args)
        finally:
            self.core_s += time.perf_counter() - started

    async def settle(
        self, until: Callable[[State], bool] | None = None, max_rounds: int = 100_000
    ) -> None:
        """Carry out effects one at a time until none is left that a node that is up can
        answer, or until ``until`` holds for the state."""
        for _ in range(max_rounds):
            if until is not None and until(self.recorder.state):
                return
            if not await self.carry_out_one():
                return
        raise RuntimeError("the rollout did not settle")

    async def carry_out(self, effects: int) -> int:
        """Carry out at most ``effects`` effects; how many there were."""
        for done in range(effects):
            if not await self.carry_out_one():
                return done
        return effects

    async def carry_out_one(self) -> bool:
        """Carry out the first effect due (a tick first, if one is), as the shell would; False
        when nothing is due that a node that is up can answer."""
        state = self.recorder.state
        if self._timed(overdue, state, self.clock()):
            self.decide(Tick())
            return True
        enrollments = self._timed(open_enrollments, state)
        answerable = [e for e in enrollments if e.node_id not in self.fleet.down]
        if answerable:
            e = answerable[0]
            reply = self.fleet.nodes[e.node_id].attest(e.nonce, e.expires_ms)
            self.decide(AttestationAnswer(e.enrollment_id, e.node_id, reply))
            return True
        commands = self._timed(commands_of, state)
        up = [c for c in commands if c.node_id not in self.fleet.down]
        if up:
            command = up[0]
            reply = self.fleet.answer(command)
            self.decide(MemberAnswer(command.rollout_id, command.node_id, command.step, reply))
            return True
        bundles = self._timed(bundles_to_log, state)
        if bundles:
            self.decide(await self.cosigning.log_document(bundles[0]))
            return True
        artifacts = self._timed(artifacts_to_publish, state)
        if artifacts:
            self.decide(await self.cosigning.publish_artifact(artifacts[0]))
            return True
        retirements = self._timed(retirements_to_log, state)
        if retirements:
            self.decide(await log_retirement(self.cosigning, retirements[0]))
            return True
        return False
