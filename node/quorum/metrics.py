"""Prometheus counters of quorum replication, labelled by member and by kind."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

VOTES_REJECTED = Counter(
    "hsmfleet_quorum_votes_rejected",
    "Votes a proposer ignored, by the kind of defect",
    ["member", "kind"],
)
REQUESTS_REJECTED = Counter(
    "hsmfleet_quorum_requests_rejected",
    "Prepare and accept requests an acceptor refused to consider, by kind",
    ["member", "kind"],
)
VALUES_REFUSED = Counter(
    "hsmfleet_quorum_values_refused",
    "Values of vetted records an acceptor's HSM refused to accept, by proposing member and why",
    ["member", "proposer", "kind"],
)
COMMITS = Counter(
    "hsmfleet_quorum_commits",
    "Record changes committed by a quorum, by proposing member",
    ["member"],
)
WRITE_BACKS = Counter(
    "hsmfleet_quorum_write_backs",
    "Vetted values a proposer wrote back to prove them committed before changing them (no"
    " proof at hand: a commit notice was lost, or the value never committed)",
    ["member"],
)
FAILURES = Counter(
    "hsmfleet_quorum_failures",
    "Record changes that failed, by proposing member and error kind",
    ["member", "kind"],
)
BATCH_SIZE = Histogram(
    "hsmfleet_quorum_batch_records",
    "Records per acceptor transaction (one fsync and one signature each)",
    ["member"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
