"""Prometheus metrics of one orchestrator, in a registry of its own (several may share a
process in tests)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from transport.gate import REJECTED


class Metrics:
    """Events appended, decisions, errors and refused HTTP requests by kind, and how long each
    stage takes."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        # Messages refused by the process's gates (node status, answers) count in the process,
        # whichever orchestrator's registry shows them.
        self.registry.register(REJECTED)
        self.events = Counter(
            "hsmfleet_events_appended",
            "Entries appended to the log, by type",
            ["type"],
            registry=self.registry,
        )
        self.decisions = Counter(
            "hsmfleet_decisions", "Decisions made, by input type", ["input"], registry=self.registry
        )
        self.errors = Counter(
            "hsmfleet_errors", "Errors, by kind", ["kind"], registry=self.registry
        )
        self.http_rejects = Counter(
            "hsmfleet_http_rejects",
            "HTTP requests refused or failed, by kind",
            ["kind"],
            registry=self.registry,
        )
        self.stage = Histogram(
            "hsmfleet_stage_duration_seconds",
            "Duration of each stage: decide, append, catch_up, attest, the rollout's member"
            " commands (generate, import, join, probe, retire) and cosign",
            ["stage"],
            registry=self.registry,
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30),
        )
        self.active = Gauge(
            "hsmfleet_orchestrator_active",
            "1 while this orchestrator holds the lease",
            registry=self.registry,
        )
        self.unreachable = Gauge(
            "hsmfleet_nodes_unreachable",
            "Nodes on record not heard from within unreachable_after_s",
            registry=self.registry,
        )
        self.last_seq = Gauge(
            "hsmfleet_log_last_seq",
            "Last log sequence this orchestrator has read",
            registry=self.registry,
        )
