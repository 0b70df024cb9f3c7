"""The mutator is reproducible from its seed and reaches every kind of defect, and the gate
model the campaign relies on predicts a real gate's verdict on every candidate."""

from __future__ import annotations

import os
import random
import time
from collections import Counter

from messages.attestation import AttestRequest
from messages.errors import MessageError
from messages.signing import Ed25519Signer, TrustStore
from ops.fuzz.mutate import MUTATIONS, Mutator, Seed
from ops.fuzz.oracle import GateModel
from transport.gate import Gate
from transport.outbox import Outbox

ROLE = "orchestrator"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def setting(seed: int):
    signer = Ed25519Signer.from_seed(bytes(32))
    trust = TrustStore()
    trust.trust("orchestrator", signer, ROLE)
    outbox = Outbox("orchestrator", signer)
    env = outbox.envelope(AttestRequest(nonce=os.urandom(32), expires_ms=now_ms() + 60_000))
    strangers = [Ed25519Signer.from_seed(bytes([i]) * 32) for i in range(1, 3)]
    return trust, Seed(env, signer), Mutator(random.Random(seed), strangers)


def test_same_seed_same_candidates():
    _, seed, first = setting(7)
    _, _, second = setting(7)
    a = [first.candidate(seed) for _ in range(500)]
    b = [second.candidate(seed) for _ in range(500)]
    assert a == b
    _, _, other = setting(8)
    assert [other.candidate(seed) for _ in range(500)] != a


def test_the_model_predicts_the_gate_on_every_candidate():
    trust, seed, mutator = setting(11)
    gate = Gate(trust)
    gate.admit(seed.data, ROLE)
    model = GateModel(trust, ROLE)
    seen = {seed.env.id}
    made: Counter[str] = Counter()
    verdicts: Counter[str] = Counter()
    for _ in range(3000):
        how, data = mutator.candidate(seed)
        made[how] += 1
        expected = model.expected_refusal(data, frozenset(seen), now_ms())
        try:
            received = gate.admit(data, ROLE)
        except MessageError as exc:
            got = exc.kind
        else:
            got = None
            seen.add(received.envelope.id)
        assert got == expected, (how, data[:300])
        verdicts[got or "admitted"] += 1
    assert set(made) == {name for name, _ in MUTATIONS}
    assert {"malformed", "bad_signature", "unknown_signer", "schema", "replayed"} <= set(verdicts)
    assert verdicts["stale"] + verdicts["future"] > 0
    assert sum(gate.rejects.values()) == 3000 - verdicts["admitted"]
