"""Property tests of the gate with hypothesis: whatever an envelope-shaped JSON object holds
(any registered type, any version, any header values, any body), the gate admits it or refuses
it with a :class:`MessageError` that it counts; it never raises anything else."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from messages.errors import MessageError
from messages.schema import REGISTRY
from messages.signing import Ed25519Signer, TrustStore
from transport.gate import Gate

SIGNER = Ed25519Signer.from_seed(bytes(range(32)))
TRUST = TrustStore()
TRUST.trust("orchestrator", SIGNER, "orchestrator")

leaf = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=12)
    | st.sampled_from(["AAAA", "2026-11-27T12:00:00.000Z", "01ARZ3NDEKTSV4RRFFQ69G5FAV"])
)
value = st.recursive(
    leaf,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=16,
)
header = st.fixed_dictionaries(
    {
        "type": st.sampled_from(REGISTRY.types()) | st.text(max_size=8),
        "v": st.integers(-2, 5) | value,
        "id": st.text(max_size=30) | value,
        "at": st.sampled_from(["2026-11-27T12:00:00.000Z", "0001-01-01T00:00:00Z"]) | value,
        "source": st.sampled_from(["orchestrator", "node-1"]) | value,
        "body": st.dictionaries(st.text(max_size=10), value, max_size=6) | value,
    },
    optional={
        "corr": value,
        "causation": value,
        "sig": st.fixed_dictionaries(
            {"alg": st.sampled_from(["ed25519", "x"]), "kid": st.just(SIGNER.kid), "value": value}
        )
        | value,
        "extra_field": value,
    },
)


def admit_or_refuse(gate: Gate, data: bytes, role: str | None) -> None:
    before = sum(gate.rejects.values())
    try:
        gate.admit(data, role)
    except MessageError:
        assert sum(gate.rejects.values()) == before + 1
    else:
        assert gate.accepted >= 1


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=header, role=st.sampled_from([None, "orchestrator"]))
def test_the_gate_only_ever_admits_or_refuses(raw, role):
    admit_or_refuse(Gate(TRUST), json.dumps(raw).encode(), role)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200))
def test_random_bytes_are_refused_as_malformed(data):
    gate = Gate(TRUST)
    admit_or_refuse(gate, data, None)
    assert gate.accepted == 0 or data.strip().startswith(b"{")
