"""One whole fuzzing run: the world, every bus target, the HTTP apps, then the oracles.

:func:`fuzz` splits ``messages`` over the targets (:data:`HTTP_SHARE` of them to the HTTP apps),
records the state of every receiver before and after, checks afterwards that each still answers a
valid request, and collects every error-level log record. The :class:`Report` says what was sent,
what was counted, and what went wrong; ``ok`` is the verdict.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client import REGISTRY as METRICS

from messages import subjects
from messages.attestation import AttestRequest
from messages.cosigning import CheckpointRequest
from messages.envelope import Envelope
from messages.quorum import SnapshotRequest
from messages.rejected import Rejected
from messages.signing import Ed25519Signer
from messages.subjects import EVENT_STREAM
from node.quorum.member import JOURNAL_FILE
from ops.fuzz.campaign import Campaign, TargetFigures
from ops.fuzz.http import (
    CaseMaker,
    HttpFigures,
    HttpTarget,
    fuzz_http,
    metrics_counter,
    stats_counter,
)
from ops.fuzz.mutate import Mutator
from ops.fuzz.oracle import CrashWatch
from ops.fuzz.targets import OPERATOR_SOURCE, ORCHESTRATOR_SOURCE, all_targets
from ops.fuzz.world import (
    FLEET,
    NODE_ID,
    OPERATOR_TOKEN,
    OUTSIDER,
    READ_TOKEN,
    World,
    open_world,
    tree_digest,
)
from transport.outbox import Outbox
from transport.vault_client import VaultClient

HTTP_SHARE = 0.08
STRANGERS = 3


@dataclass
class Report:
    """Figures of one run and everything that went wrong in it."""

    seed: int
    messages: int
    bus: list[TargetFigures] = field(default_factory=list)
    http: list[HttpFigures] = field(default_factory=list)
    crashes: list[str] = field(default_factory=list)
    state_changes: list[str] = field(default_factory=list)
    dead: list[str] = field(default_factory=list)
    unserved: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def sent(self) -> int:
        return sum(f.sent for f in self.bus) + sum(f.sent for f in self.http)

    @property
    def failures(self) -> list[str]:
        out = [f"{f.name}: {x}" for f in [*self.bus, *self.http] for x in f.failures]
        return out + self.crashes + self.state_changes + self.dead

    @property
    def ok(self) -> bool:
        return not self.failures and self.sent >= self.messages

    def summary(self) -> str:
        """A table of the figures, the failures (at most 20), and how to reproduce the run."""
        lines = [f"{'target':<30}{'sent':>9}{'counted':>10}{'dropped':>9}{'sampled':>9}{'s':>7}"]
        for f in self.bus:
            lines.append(
                f"{f.name:<30}{f.sent:>9}{f.counted_rejects:>10}{f.dropped_valid:>9}"
                f"{f.sampled:>9}{f.seconds:>7.1f}"
            )
        for h in self.http:
            statuses = " ".join(f"{k}:{v}" for k, v in sorted(h.by_status.items()))
            lines.append(f"{h.name:<30}{h.sent:>9}{h.counted_rejects:>10}{'':>18}{h.seconds:>7.1f}")
            lines.append(f"{'':<30}statuses {statuses}")
        lines += [f"not served, not fuzzed: {subject}" for subject in self.unserved]
        lines.append(f"total {self.sent} messages in {self.seconds:.1f} s, seed {self.seed}")
        failures = self.failures
        lines += [f"FAILURE {x}" for x in failures[:20]]
        if failures:
            lines.append(f"{len(failures)} failures; reproduce: {self.command}")
        return "\n".join(lines)

    @property
    def command(self) -> str:
        return f"python -m ops.fuzz --messages {self.messages} --seed {self.seed}"


async def fuzz(root: Path, messages: int, seed: int) -> Report:
    """Fuzz every receiver with ``messages`` messages in all, drawn from ``seed``."""
    report = Report(seed, messages)
    started = time.perf_counter()
    rng = random.Random(seed)
    watch = CrashWatch()
    with watch.watching():
        async with open_world(root) as world:
            strangers = [Ed25519Signer.from_seed(rng.randbytes(32)) for _ in range(STRANGERS)]
            mutator = Mutator(rng, strangers)
            before = await state(world)
            campaign = Campaign(world.nc, rng, mutator, world.daemon.outbox.ids.now_ms)
            targets = []
            for target in all_targets(world):
                if await campaign.served(target):
                    targets.append(target)
                else:
                    report.unserved.append(target.subject)
            apps = http_targets(world)
            http_count = int(messages * HTTP_SHARE) // len(apps)
            bus_count = -(-(messages - len(apps) * http_count) // len(targets))
            for target in targets:
                report.bus.append(await campaign.run(target, bus_count))
            for target in apps:
                maker = CaseMaker(rng, mutator, target)
                report.http.append(await fuzz_http(target, maker, http_count))
            after = await state(world)
            report.state_changes += [
                f"state of {k} changed" for k in before if before[k] != after[k]
            ]
            report.dead += await probe(world)
    report.crashes = watch.records
    report.seconds = time.perf_counter() - started
    return report


def http_targets(world: World) -> list[HttpTarget]:
    plan = {
        "fleet": "fuzz-plan",
        "members": {"ids": ["ghost-1", "ghost-2", "ghost-3"], "min_per_domain": 1},
        "keys": {"vault": "ed25519", "signing": "ecdsa-p256-sha256"},
        "cosigners": {"threshold": 1, "pins": []},
        "rollout": {"wave_size": 2, "approve_publish": False, "member_deadline_s": 30},
    }
    checkpoint = world.cosigner.cosigner.notary.checkpoint()
    assert world.api_app is not None and world.node_app is not None
    return [
        HttpTarget(
            "http.orchestrator",
            world.api_url,
            world.api_app,
            (NODE_ID, FLEET, "fuzz-plan"),
            (OPERATOR_TOKEN, READ_TOKEN),
            (_json(plan), _json({"reason": "fuzz"})),
            lambda http: metrics_counter(http, "hsmfleet_http_rejects"),
        ),
        HttpTarget(
            "http.cosigner",
            world.cosigner_url,
            world.cosigner.app,
            (world.cosigner.cosigner.id,),
            (),
            (f"old 0\n\n{checkpoint}".encode(), f"old 1\nAAAA\n\n{checkpoint}".encode()),
            stats_counter,
        ),
        HttpTarget(
            "http.node",
            world.node_url,
            world.node_app,
            (NODE_ID, FLEET),
            (),
            (),
            lambda http: metrics_counter(http, "hsmfleet_node_http_rejects"),
        ),
    ]


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


async def state(world: World) -> dict[str, Any]:
    """What the receivers hold: the orchestrator's state and log, the node's files, the
    cosigner's log size, each member's records and configuration, the logins its HSM answered
    (its evaluation journal) and the vault operations it ran (its metrics: every vault message
    of a campaign is refused before it runs)."""
    js = world.nc.jetstream()
    info = await js.stream_info(EVENT_STREAM)
    out: dict[str, Any] = {
        "orchestrator": (world.orchestrator.last_seq, world.orchestrator.state),
        "event stream": info.state.messages,
        "node": tree_digest(world.root / "node"),
        "cosigner log": world.cosigner.cosigner.notary.size,
    }
    for name, member in world.members.items():
        replica = member.replica
        out[f"member {name}"] = (replica.current().epoch, replica.store.page("", 1_000_000))
        out[f"member {name} evaluations"] = evaluations(world, name)
        out[f"member {name} vault operations"] = _metric(
            "hsmfleet_vault_operations_total", fleet=FLEET, member=name
        )
    return out


def evaluations(world: World, member: str) -> list[tuple[str, int]]:
    """Every login ``member``'s HSM answered, from its evaluation journal: (user, attempt)."""
    path = world.fleet.state_dir(member) / JOURNAL_FILE
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return db.execute("SELECT user, number FROM evaluations ORDER BY user, number").fetchall()
    finally:
        db.close()


def _metric(name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    return sum(
        sample.value
        for metric in METRICS.collect()
        for sample in metric.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


async def probe(world: World) -> list[str]:
    """Each receiver still answers a valid request; returns what did not."""
    dead = []
    nc = world.nc
    orchestrator = Outbox(ORCHESTRATOR_SOURCE, world.orchestrator_key)
    member = Outbox(OUTSIDER, world.outsider_key)
    operator = Outbox(OPERATOR_SOURCE, world.fleet.operator)
    current = next(iter(world.members.values())).replica.current()
    asks = {
        "node attest": (
            subjects.node_command(NODE_ID, "attest"),
            orchestrator.envelope(
                AttestRequest(nonce=os.urandom(32), expires_ms=orchestrator.ids.now_ms() + 60_000)
            ),
        ),
        "cosigner": (
            subjects.cosign(world.cosigner.cosigner.id),
            orchestrator.envelope(CheckpointRequest()),
        ),
        "replica snapshot": (
            subjects.quorum(FLEET, "snapshot"),
            member.envelope(
                SnapshotRequest(
                    fleet=FLEET,
                    epoch=current.epoch,
                    member=next(iter(world.members)),
                    after="",
                    limit=5,
                )
            ),
        ),
        "replica config": (
            subjects.quorum(FLEET, "config"),
            operator.envelope(current.to_config()),
        ),
    }
    for name, (subject, env) in asks.items():
        try:
            answer = await nc.request(subject, env.encode(), timeout=5.0)
            if Envelope.decode(answer.data).type == Rejected.TYPE:
                dead.append(f"{name} refused a valid request: {answer.data[:200]!r}")
        except Exception as exc:  # any failure to answer is what this probe reports
            dead.append(f"{name} did not answer: {exc!r}")
    client = VaultClient(nc, world.fleet.vault_keys, world.authorize)
    try:
        await client.register("probe-user", b"0000", b"probe")
        if (await client.recover("probe-user", b"0000")).secret != b"probe":
            dead.append("vault recovered another secret")
    except Exception as exc:
        dead.append(f"vault did not answer: {exc!r}")
    async with aiohttp.ClientSession() as http:
        for name, url in (
            ("orchestrator API", world.api_url + "/health"),
            ("cosigner HTTP", world.cosigner_url + "/checkpoint"),
        ):
            try:
                async with http.get(url) as resp:
                    if resp.status != 200:
                        dead.append(f"{name} answered {resp.status}")
            except aiohttp.ClientError as exc:
                dead.append(f"{name} did not answer: {exc!r}")
    return dead
