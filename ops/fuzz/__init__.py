"""Fuzzing every receiver of hsmfleet: each bus subscriber and both HTTP APIs.

A run (:func:`ops.fuzz.run.fuzz`) starts the real receivers in one process on a real
nats-server (:mod:`ops.fuzz.world`), then sends each of them random and mutated messages
(:mod:`ops.fuzz.mutate`): mostly mutations of valid, correctly signed envelopes, re-signed with
the trusted key half of the time so that they reach the schema and the handlers, plus random bytes
and random JSON. Oracles: every message sent must be refused and counted by the receiver's own
reject counters (the ones its metrics export), no error may be logged (an exception escaping a
handler), no receiver's state may change, and each must answer a valid request afterwards.

CI mode is the test ``tests/fuzz/test_campaign.py`` (100,000 messages, a fixed seed; about 45 s on
two cores). Nightly::

    python -m ops.fuzz --messages 1000000 --seed N

or the test with ``HSMFLEET_FUZZ_MESSAGES=1000000 HSMFLEET_FUZZ_SEED=N``. A failing run prints its
figures, its failures and the command that reproduces it (the same seed draws the same mutations).
"""
