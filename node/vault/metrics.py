"""Prometheus counters of a member's vault front, labelled by fleet and member."""

from __future__ import annotations

from prometheus_client import Counter

REQUESTS_REJECTED = Counter(
    "hsmfleet_vault_requests_rejected",
    "Vault requests refused before they ran (unreadable, replayed, busy), by kind",
    ["fleet", "member", "kind"],
)
OUTCOMES = Counter(
    "hsmfleet_vault_operations",
    "Vault operations that ran, by operation and outcome (ok or the refusal's kind)",
    ["fleet", "member", "op", "outcome"],
)
