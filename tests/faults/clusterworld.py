"""The world of the cluster fault tests: a fleet rolled out over a 3-server JetStream cluster on
loopback with NATS permissions on, a witness that reads the event log while it grows, and the
checks every scenario ends with, counted in a :class:`Tally` the lead can quote.

The fleet is the one :mod:`tests.replay.rolloutbed` lays out (node daemons with software HSMs,
two cosigners, the orchestrator's configuration with an operator HSM), each party connected as
itself (its own nkey user from the cluster's bundle, see :data:`LAYOUT`): node daemons and
cosigners in this process, orchestrators as ``hsmfleet orchestrator`` processes.
:func:`connect`, :func:`seed_settings` and :func:`credentials` are the one place that says
how a party reaches the cluster.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError

from cosigner.engine import Cosigner
from cosigner.service import NatsService
from cosigner.testbed import COSIGNERS, init_cosigners
from messages.bundle import FORMAT as STAGE_BUNDLE_FORMAT
from messages.bundle import check_chain
from messages.canonical import b64
from messages.errors import HsmfleetError
from messages.events import LeaseTaken, NodeAnnounced, RolloutActivated, StageEntered
from messages.pins import OperatorPin
from messages.subjects import EVENT_STREAM
from messages.verifier_state import VerifierState
from messages.verify import verify_bundle
from node.daemon import NodeDaemon
from node.pins import read_pins
from ops.natsauth.connect import SecuredCluster
from ops.natsserver import NatsServer
from orchestrator.shell.config import Settings
from orchestrator.shell.keys import load_signer, make_operator_key, trust_for
from orchestrator.shell.log import GENESIS, PREV, entry_digest
from orchestrator.shell.logfile import ReplayResult, replay_files
from orchestrator.shell.store import EventStore
from tests.replay.fleet import HSMFLEET, OPERATOR_TOKEN, OrchestratorProcess
from tests.replay.rolloutbed import MEMBERS, SEALING_KEY, SOFTWARE, RolloutBed, SeededHsm
from transport.parties import AUDITOR, COSIGNER, NODE, ORCHESTRATOR, parse_layout

FLEET = "fleet-1"
HOLDERS = ("orch-a", "orch-b")
WITNESS = "witness"
LAYOUT = parse_layout(
    {
        "orchestrators": list(HOLDERS),
        "nodes": [{"id": node_id, "fleet": FLEET} for node_id, _ in MEMBERS],
        "cosigners": [cid for cid, _, _ in COSIGNERS],
        "auditors": [WITNESS],
    }
)
"""The parties of a rollout on the cluster, each with its own NATS user."""
ORCHESTRATOR_SERVER = 0
"""The server orchestrators are configured with (they find the others by the cluster's gossip);
every other party is given all three."""
SETTLE_S = 60.0
"""The longest any one wait of a scenario may take."""


async def connect(cluster: SecuredCluster, role: str, party_id: str) -> NATS:
    """A connection as ``role``/``party_id`` to every server of the cluster, reconnecting for
    ever, quickly."""
    return await cluster.connect(role, party_id, max_reconnect_attempts=-1, reconnect_time_wait=0.2)


def seed_settings(cluster: SecuredCluster, role: str, party_id: str) -> dict[str, str]:
    """The NATS credentials of a party's settings file: its seed file (and the CA's, with TLS)."""
    party = cluster.bundle.layout.party(role, party_id)
    settings = {"nats_seed": str(cluster.bundle.seed_file(party))}
    if cluster.bundle.tls:
        settings["nats_ca"] = str(cluster.bundle.ca_file)
    return settings


def credentials(cluster: SecuredCluster, role: str, party_id: str) -> dict[str, str]:
    """The NATS settings of a process's configuration file: one server's URL, its seed."""
    return {
        "nats": cluster.servers[ORCHESTRATOR_SERVER].url,
        **seed_settings(cluster, role, party_id),
    }


@dataclass
class Tally:
    """What one scenario did and found: faults injected, log entries, bundles and writes
    checked, and what was lost or duplicated (both must stay 0)."""

    scenario: str
    faults: list[str] = field(default_factory=list)
    events_checked: int = 0
    decisions_replayed: int = 0
    bundles_checked: int = 0
    writes_checked: int = 0
    writes_during_faults: int = 0
    lost: int = 0
    duplicates: int = 0

    def fault(self, what: str) -> None:
        self.faults.append(what)

    def add(self, other: Tally) -> None:
        """Count ``other``'s figures in too."""
        self.faults += other.faults
        self.events_checked += other.events_checked
        self.decisions_replayed += other.decisions_replayed
        self.bundles_checked += other.bundles_checked
        self.writes_checked += other.writes_checked
        self.writes_during_faults += other.writes_during_faults
        self.lost += other.lost
        self.duplicates += other.duplicates

    def line(self, *, detail: bool = True) -> str:
        """One line for the terminal summary (counts a scenario does not check are left out;
        ``detail`` lists the faults)."""
        checked = {
            "events checked": self.events_checked,
            "decisions replayed": self.decisions_replayed,
            "stage bundles checked": self.bundles_checked,
            "acknowledged vault operations checked": self.writes_checked,
            "of them while a server was down": self.writes_during_faults,
        }
        counts = ", ".join(f"{name} {n}" for name, n in checked.items() if n)
        faults = f" ({'; '.join(self.faults)})" if detail else ""
        return (
            f"cluster-faults {self.scenario}: faults injected {len(self.faults)}{faults}, "
            f"{counts}, lost {self.lost}, duplicates {self.duplicates}"
        )


TOTAL = Tally("all scenarios run so far")


def report(request: pytest.FixtureRequest, tally: Tally) -> None:
    """Put a scenario's figures, and the totals of the run so far, on the terminal, past
    pytest's output capture."""
    TOTAL.add(tally)
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print(f"\n{tally.line()}\n{TOTAL.line(detail=False)}")


async def wait_until(predicate: Callable[[], bool], what: str, timeout: float = SETTLE_S) -> None:
    """Poll ``predicate`` every 20 ms; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def connected_to(nc: NATS, server: NatsServer) -> bool:
    url = nc.connected_url
    return url is not None and url.port == server.port


class Witness:
    """Reads the event log entry by entry while it grows, as an auditor beside the fleet would:
    whatever it read once, no fault may take back or change."""

    def __init__(self, nc: NATS) -> None:
        self.store = EventStore(nc, timeout=1.0)
        self.seen: dict[int, bytes] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._follow())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _follow(self) -> None:
        while True:
            try:
                last = await self.store.last_seq()
                for seq in range(len(self.seen) + 1, last + 1):
                    self.seen[seq] = await self.store.entry(seq)
            except (HsmfleetError, NatsError):
                pass  # a server is down or a leader is being elected: read again soon
            await asyncio.sleep(0.05)

    def envelopes(self, type_: str) -> list[dict[str, Any]]:
        """The entries of ``type_`` read so far, as JSON."""
        found = (json.loads(data) for data in self.seen.values())
        return [env for env in found if env["type"] == type_]

    def stages(self) -> list[str]:
        """The stages the fleet's rollout entered, in order."""
        return [e["body"]["stage"] for e in self.envelopes(StageEntered.TYPE)]

    def holders(self) -> list[str]:
        """Who took the lease, in order."""
        return [env["body"]["holder"] for env in self.envelopes(LeaseTaken.TYPE)]

    def announced(self) -> int:
        return len(self.envelopes(NodeAnnounced.TYPE))

    def activated(self) -> bool:
        return any(env["body"]["fleet"] == FLEET for env in self.envelopes(RolloutActivated.TYPE))


@dataclass(frozen=True)
class Findings:
    """What :func:`examine` found in a log."""

    entries: int
    breaks: int
    """Entries whose ``prev`` is not the digest of the entry before."""
    duplicates: int
    """Entries whose id an earlier entry has."""
    lost: int
    """Entries the witness read that are not in the log at their place, byte for byte."""


def examine(lines: list[bytes], seen: Mapping[int, bytes]) -> Findings:
    """Check a log's entries (wire bytes, from seq 1) for breaks in the chain, repeated ids and
    entries lost since ``seen`` (seq -> bytes) was read."""
    head, breaks, ids = GENESIS, 0, Counter[str]()
    for line in lines:
        env = json.loads(line)
        breaks += env[PREV] != b64(head)
        ids[env["id"]] += 1
        head = entry_digest(line)
    lost = sum(1 for seq, data in seen.items() if seq > len(lines) or lines[seq - 1] != data)
    return Findings(len(lines), breaks, sum(n - 1 for n in ids.values()), lost)


@dataclass
class ClusterWorld:
    """A rollout bed on the cluster: its nodes and cosigners served here, each on its own
    connection; the auditor's connection and the witness of the log."""

    cluster: SecuredCluster
    bed: RolloutBed
    tally: Tally
    witness: Witness
    auditor: NATS
    cosigners: list[tuple[Cosigner, NatsService]] = field(default_factory=list)
    connections: dict[str, NATS] = field(default_factory=dict)
    fault_seqs: list[int] = field(default_factory=list)
    """The log's last sequence as each fault was injected: the activation must come later."""

    @classmethod
    async def open(
        cls, template: Path, root: Path, cluster: SecuredCluster, scenario: str
    ) -> ClusterWorld:
        """A copy of ``template`` (see :func:`tests.replay.rolloutbed.prepare`) under
        ``root``, its cosigners and nodes serving on the cluster."""
        shutil.copytree(template, root)
        config = root / "orch" / f"{HOLDERS[0]}.json"
        raw = json.loads(config.read_text())
        raw.update(
            **credentials(cluster, ORCHESTRATOR, HOLDERS[0]),
            replicas=len(cluster.servers),
            operator_hsm=str(root / "operator-hsm"),
            operator_hsm_key=str(root / "operator.key"),
            vendor_roots=[str(root / "vendor" / "root.pem")],
        )
        config.write_text(json.dumps(raw, indent=2))
        settings = Settings.load(config)
        operator = make_operator_key(settings)
        pin = OperatorPin(operator.alg, operator.public_key)
        orchestrator = load_signer(settings.key_file)
        peers = init_cosigners(root / "cosigners", orchestrator, COSIGNERS, pin)
        bed = RolloutBed(root, raw["nats"], config, peers, pin)
        auditor = await connect(cluster, AUDITOR, WITNESS)
        world = cls(cluster, bed, Tally(scenario), Witness(auditor), auditor)
        world.witness.start()
        for peer in peers:
            nc = world.connections[peer.id] = await connect(cluster, COSIGNER, peer.id)
            cosigner = await asyncio.to_thread(Cosigner.open, root / "cosigners" / peer.id)
            service = NatsService(nc, cosigner)
            await service.start()
            world.cosigners.append((cosigner, service))
        pins = read_pins(root / "pins.json")
        for node_id, domain in MEMBERS:
            hsm = SeededHsm(root / "nodes" / node_id / "hsm", SEALING_KEY, node_id.encode())
            daemon = NodeDaemon(
                hsm,
                root / "nodes" / node_id,
                domain,
                pins,
                node_id=node_id,
                measurement=SOFTWARE,
                heartbeat_s=0.5,
            )
            await daemon.start(await world._connect(NODE, node_id))
            bed.daemons.append(daemon)
        return world

    async def _connect(self, role: str, party_id: str) -> NATS:
        nc = self.connections[party_id] = await connect(self.cluster, role, party_id)
        return nc

    def orchestrator(self, holder: str) -> OrchestratorProcess:
        """An ``hsmfleet orchestrator`` process for ``holder``, connected as itself."""
        raw = json.loads(self.bed.config.read_text())
        raw.update(holder=holder, **credentials(self.cluster, ORCHESTRATOR, holder))
        path = self.bed.config.with_name(f"{holder}.json")
        path.write_text(json.dumps(raw, indent=2))
        return OrchestratorProcess(path)

    async def start_rollout(self, orchestrator: OrchestratorProcess, holder: str) -> None:
        """Once ``orchestrator`` (``holder``) is active and every node announced, post the plan
        to it."""
        await wait_until(
            lambda: (
                self.witness.holders()[-1:] == [holder] and self.witness.announced() >= len(MEMBERS)
            ),
            f"{holder} active with every node announced",
        )
        headers = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
        async with (
            aiohttp.ClientSession(headers=headers) as http,
            http.post(orchestrator.api + "/v1/rollouts", json=self.bed.plan(FLEET)) as resp,
        ):
            assert resp.status == 202, await resp.text()

    async def close(self) -> None:
        await self.witness.stop()
        await self.bed.close()
        for cosigner, service in self.cosigners:
            await service.stop()
            await cosigner.close()
        for nc in [*self.connections.values(), self.auditor]:
            await nc.close()

    # --- faults --------------------------------------------------------------------------

    async def mid_rollout(self) -> str:
        """The stage the rollout is in as a fault is about to land, and where the log ends
        then; fails if the rollout is not under way."""
        stages = self.witness.stages()
        assert stages and not self.witness.activated(), "the rollout is not under way"
        self.fault_seqs.append(await EventStore(self.auditor).last_seq())
        return stages[-1]

    async def stream_leader(self) -> NatsServer:
        """The server leading the event stream's replicas."""
        deadline = time.monotonic() + SETTLE_S
        while True:
            try:
                info = await self.auditor.jetstream(timeout=1.0).stream_info(EVENT_STREAM)
                if info.cluster is not None and info.cluster.leader:
                    return next(s for s in self.cluster.servers if s.name == info.cluster.leader)
            except NatsError:
                pass
            assert time.monotonic() < deadline, "the event stream has no leader"
            await asyncio.sleep(0.1)

    async def stop_server(self, server: NatsServer, why: str) -> None:
        """Stop ``server`` (SIGTERM) mid-rollout; the tally names the stage and the parties
        it cut off (an orchestrator process counts as on the server it is configured with)."""
        stage = await self.mid_rollout()
        cut = [name for name, nc in self.connections.items() if connected_to(nc, server)]
        if server is self.cluster.servers[ORCHESTRATOR_SERVER]:
            cut.append("orchestrator")
        await server.stop()
        self.tally.fault(f"stopped {server.name} ({why}) in {stage}, cutting off {sorted(cut)}")

    async def start_server(self, server: NatsServer) -> None:
        await server.start()
        await self.cluster.wait_ready(SETTLE_S)

    async def restart_cluster(self) -> None:
        """Stop every server mid-rollout, then start them again on the same stores."""
        stage = await self.mid_rollout()
        await self.cluster.stop()
        self.tally.fault(f"stopped all {len(self.cluster.servers)} servers in {stage}")
        await self.cluster.start(SETTLE_S)

    async def kill(self, orchestrator: OrchestratorProcess, holder: str) -> None:
        """SIGKILL ``orchestrator`` (``holder``) mid-rollout."""
        stage = await self.mid_rollout()
        orchestrator.signal(signal.SIGKILL)
        assert orchestrator.proc is not None
        await orchestrator.proc.wait()
        self.tally.fault(f"SIGKILLed the active orchestrator {holder} in {stage}")

    # --- checks --------------------------------------------------------------------------

    async def export(self, path: Path) -> list[bytes]:
        """``hsmfleet log export`` of the whole log into ``path``, run as the auditor; returns
        the log's entries."""
        with path.open("wb") as out:
            proc = await asyncio.create_subprocess_exec(
                *HSMFLEET, "log", "export", "--nats", self.cluster.servers[0].url,
                "--auditor", WITNESS, *self.cluster.bundle.arguments(AUDITOR, WITNESS),
                stdout=out, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            _, err = await asyncio.wait_for(proc.communicate(), SETTLE_S)
        assert proc.returncode == 0, err.decode()
        return (await asyncio.to_thread(path.read_bytes)).splitlines()[1:]

    async def check(self, export_to: Path) -> ReplayResult:
        """Every check a rollout scenario ends with; returns the replay of the exported log.

        - the event stream is replicated on every server;
        - the exported log's chain is unbroken (each ``prev`` is the digest of the entry
          before) and no entry id appears twice;
        - every entry the witness read during the faults is in the log, at its place, unchanged;
        - the log replays, every decision re-run without divergence, to an active fleet;
        - the fleet's stage bundles are one chain with contiguous serials, each logged once in
          the log and once by each cosigner, which logged nothing else but the artifact;
        - the validation bundle verifies as a client verifies it.
        """
        info = await self.auditor.jetstream(timeout=5.0).stream_info(EVENT_STREAM)
        assert info.config.num_replicas == len(self.cluster.servers)
        assert info.cluster is not None and len(info.cluster.replicas or []) == 2
        await self.witness.stop()
        lines = await self.export(export_to)
        tally = self.tally
        entries = [json.loads(line) for line in lines]
        assert self.witness.seen, "the witness read nothing"
        findings = examine(lines, self.witness.seen)
        tally.events_checked = findings.entries
        tally.duplicates += findings.duplicates
        tally.lost += findings.lost
        assert findings.breaks == 0, f"{findings.breaks} entries break the chain"

        trust = trust_for(load_signer(self.bed.settings.key_file))
        replay = replay_files([export_to], trust, check=True, verify_every=1)
        tally.decisions_replayed = replay.decisions
        assert replay.entries == len(lines) and replay.decisions > 0

        rollout = replay.state.book.of_fleet(FLEET)
        assert rollout is not None and rollout.status == "active", rollout
        activated = next(
            seq
            for seq, env in enumerate(entries, start=1)
            if env["type"] == RolloutActivated.TYPE and env["body"]["fleet"] == FLEET
        )
        assert all(seq < activated for seq in self.fault_seqs), "a fault came after the end"
        chain = replay.state.book.fleets[FLEET]
        documents = [b.to_bytes() for b in chain.bundles]
        tally.bundles_checked = len(documents)
        assert [b.serial for b in chain.bundles] == list(range(1, len(documents) + 1))
        assert check_chain(chain.bundles).serial == len(documents)
        assert chain.logged == len(documents)
        logged = Counter(
            env["body"]["serial"] for env in entries if env["type"] == "rollout.stage_bundle_logged"
        )
        tally.duplicates += sum(n - 1 for n in logged.values())
        assert set(logged) == set(range(1, len(documents) + 1))
        for cosigner, _ in self.cosigners:
            logged_by = cosigner.notary.entries(0, cosigner.notary.size)
            tally.duplicates += len(logged_by) - len(set(logged_by))
            stage_bundles = [e for e in logged_by if STAGE_BUNDLE_FORMAT.encode() in e]
            assert stage_bundles == documents, f"{cosigner.id} logged another chain"
            assert len(logged_by) == len(documents) + 1  # the stage bundles and the artifact

        accepted = verify_bundle(
            rollout.validation, self.bed.pins(), VerifierState(), time.time_ns() // 1_000_000
        )
        assert accepted.digest == rollout.artifact.digest
        assert tally.lost == 0 and tally.duplicates == 0, tally.line()
        return replay
