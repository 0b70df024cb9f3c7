"""The cosigner (witness): an independent party that checks stage bundles, logs them in its own
append-only Merkle audit log and signs checkpoints of it.

It imports only :mod:`messages` and shares no state with the orchestrator.

- :mod:`cosigner.log`: the durable audit log (RFC 9162 Merkle tree in SQLite);
- :mod:`cosigner.store`: statements, signed checkpoints and witnessed checkpoints;
- :mod:`cosigner.notary`: checks documents, logs them, signs statements and checkpoints;
- :mod:`cosigner.witness`: cosigns other logs' checkpoints (C2SP tlog-cosignature);
- :mod:`cosigner.engine`: one cosigner at work, batching writes;
- :mod:`cosigner.config`: its key and configuration on disk;
- :mod:`cosigner.local`: reaching cosigners in the same process;
- :mod:`cosigner.testbed`: a reproducible two-cosigner setup for tests, examples, benchmarks.
"""
