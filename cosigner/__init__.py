"""The cosigner (witness): an independent party that checks stage bundles, logs them in its own
append-only Merkle audit log and signs checkpoints of it.

It imports only :mod:`messages` and shares no state with the orchestrator (DESIGN 2).

- :mod:`cosigner.log`: the durable audit log (RFC 9162 Merkle tree in SQLite).
"""
