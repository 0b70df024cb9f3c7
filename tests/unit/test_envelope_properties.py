"""Property tests: encoding round-trips, and no single-byte change survives verification."""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from messages import Ed25519Signer, Envelope, TrustStore
from messages.errors import MessageError
from messages.signing import sign_envelope, verify_envelope
from tests.unit.sample_messages import registry
from transport.gate import Gate

SIGNER = Ed25519Signer.from_seed(bytes(range(32)))
TRUST = TrustStore()
TRUST.trust("alice", SIGNER, "tester")

json_leaf = st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | st.text(max_size=20)
json_value = st.recursive(
    json_leaf,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
token = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)


@st.composite
def envelopes(draw) -> Envelope:
    extra_body = draw(
        st.dictionaries(
            token.filter(lambda k: k not in {"count", "label", "note"}), json_value, max_size=3
        )
    )
    body = {"count": draw(st.integers(0, 2**40)), "label": draw(st.text(max_size=30)), **extra_body}
    return Envelope(
        type="test.ping",
        v=3,
        id=draw(token),
        at="2026-11-27T12:00:00.000Z",
        source="alice",
        body=body,
        corr=draw(st.none() | token),
        causation=draw(st.none() | token),
        extra=draw(st.dictionaries(token.map(lambda k: "x-" + k), json_value, max_size=2)),
    )


@given(envelopes())
def test_encode_decode_round_trip(env):
    signed = sign_envelope(env, SIGNER)
    decoded = Envelope.decode(signed.encode())
    assert decoded == signed
    assert decoded.encode() == signed.encode()
    verify_envelope(decoded, TRUST, "tester")
    assert registry.parse(decoded).to_json() == {"note": None, **env.body}


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(envelopes(), st.data())
def test_any_single_byte_change_fails(env, data):
    wire = sign_envelope(env, SIGNER).encode()
    index = data.draw(st.integers(0, len(wire) - 1))
    new_byte = data.draw(st.integers(0, 255).filter(lambda b: b != wire[index]))
    tampered = wire[:index] + bytes([new_byte]) + wire[index + 1 :]
    gate = Gate(TRUST, registry=registry, clock_ms=lambda: 1_795_752_000_000)
    try:
        gate.admit(tampered, "tester")
    except MessageError:
        return
    raise AssertionError(f"tampered message was admitted: {tampered!r}")
