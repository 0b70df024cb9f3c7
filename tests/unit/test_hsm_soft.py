"""The software HSM: keys stay inside, state is sealed at rest, tampering stops it from starting."""

import os
from dataclasses import replace

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from messages import Outbox, TrustStore
from messages.attestation import ECDH_P256
from messages.canonical import b64
from messages.gate import Gate
from messages.signing import ECDSA_P256, ED25519, verify_bytes, verify_envelope
from node.hsm import (
    HsmStateConflict,
    HsmStateRolledBack,
    HsmStateTampered,
    KeyExists,
    KeyNotFound,
    NotWrappable,
    OperatorKeyError,
    SoftHsm,
    UnsupportedAlgorithm,
    UnwrapFailed,
    keys,
)
from node.hsm.base import HsmError
from node.hsm.sealed_state import COUNTER_FILE
from node.hsm.sealing import KEY_ENV, MAGIC, load_operator_key, new_operator_key
from node.hsm.soft import STATE_FILE
from tests.unit.sample_messages import Ping, registry

KEY = bytes(range(32))


@pytest.fixture
def hsm(tmp_path):
    return SoftHsm(tmp_path / "hsm", KEY)


@pytest.mark.parametrize("alg", [ED25519, ECDSA_P256])
def test_signs_with_keys_made_inside(hsm, alg):
    key = hsm.generate("k", alg)
    assert verify_bytes(alg, key.public_key, hsm.sign("k", b"data"), b"data")
    assert not verify_bytes(alg, key.public_key, hsm.sign("k", b"data"), b"other")


def test_transport_key_cannot_sign(hsm):
    hsm.generate("t", ECDH_P256)
    with pytest.raises(UnsupportedAlgorithm):
        hsm.sign("t", b"x")


def test_signer_signs_envelopes_through_the_hsm(hsm):
    hsm.generate("identity", ED25519)
    signer = hsm.signer("identity")
    trust = TrustStore()
    trust.trust("n1", signer, "node")
    env = Outbox("n1", signer).envelope(Ping(count=1, label="x"))
    assert verify_envelope(env, trust, "node").kid == signer.kid
    assert Gate(trust, registry=registry).admit(env.encode(), "node").body == Ping(1, "x")


def test_state_survives_restart_and_is_sealed(tmp_path):
    first = SoftHsm(tmp_path, KEY)
    ed = first.generate("id", ED25519)
    p256 = first.generate("dev", ECDSA_P256)
    first.store_certificate("dev", b"certificate bytes")
    again = SoftHsm(tmp_path, KEY)
    assert again.labels() == ["dev", "id"]
    assert again.public_key("id") == ed and again.public_key("dev") == p256
    assert again.certificate("dev") == b"certificate bytes"
    assert verify_bytes(ED25519, ed.public_key, again.sign("id", b"m"), b"m")
    sealed = (tmp_path / STATE_FILE).read_bytes()
    for plain in (ed.public_key, b64(ed.public_key).encode(), b"certificate", b"ed25519"):
        assert plain not in sealed


def test_labels_are_never_reused_and_missing_keys_are_typed(hsm):
    hsm.generate("k", ED25519)
    with pytest.raises(KeyExists):
        hsm.generate("k", ECDSA_P256)
    with pytest.raises(KeyNotFound):
        hsm.sign("nope", b"x")
    with pytest.raises(KeyNotFound):
        hsm.public_key("nope")
    with pytest.raises(UnsupportedAlgorithm):
        hsm.generate("rsa", "rsa-2048")


def test_destroy_is_persisted(tmp_path):
    hsm = SoftHsm(tmp_path, KEY)
    hsm.generate("k", ED25519)
    hsm.store_certificate("k", b"c")
    hsm.destroy("k")
    with pytest.raises(KeyNotFound):
        hsm.destroy("k")
    again = SoftHsm(tmp_path, KEY)
    assert again.labels() == [] and again.certificate("k") is None


def _flip(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


# -1 and -20: tag and ciphertext; len(MAGIC) + 1: the HSM id; 40: the generation.
@pytest.mark.parametrize("offset", [-1, -20, len(MAGIC) + 1, 40])
def test_tampered_state_refuses_to_start(tmp_path, offset):
    SoftHsm(tmp_path, KEY).generate("k", ED25519)
    _flip(tmp_path / STATE_FILE, offset)
    before = (tmp_path / STATE_FILE).read_bytes()
    with pytest.raises(HsmStateTampered, match="altered"):
        SoftHsm(tmp_path, KEY)
    assert (tmp_path / STATE_FILE).read_bytes() == before


def test_truncated_state_refuses_to_start(tmp_path):
    SoftHsm(tmp_path, KEY).generate("k", ED25519)
    path = tmp_path / STATE_FILE
    path.write_bytes(path.read_bytes()[:30])
    with pytest.raises(HsmStateTampered, match="truncated"):
        SoftHsm(tmp_path, KEY)


def test_wrong_operator_key_is_told_apart_from_tampering(tmp_path):
    SoftHsm(tmp_path, KEY).generate("k", ED25519)
    with pytest.raises(OperatorKeyError, match="does not match"):
        SoftHsm(tmp_path, bytes(32))


def test_operator_key_from_file_or_environment(tmp_path):
    key = new_operator_key()
    path = tmp_path / "key"
    path.write_text(key + "\n")
    assert load_operator_key(path, env={}) == bytes.fromhex(key)
    assert load_operator_key(None, env={KEY_ENV: key}) == bytes.fromhex(key)
    with pytest.raises(OperatorKeyError, match="no operator key"):
        load_operator_key(None, env={})
    with pytest.raises(OperatorKeyError, match="32 bytes"):
        load_operator_key(None, env={KEY_ENV: "abcd"})
    with pytest.raises(OperatorKeyError, match="cannot read"):
        load_operator_key(tmp_path / "missing", env={})


def test_keys_leave_only_wrapped_to_a_transport_key(tmp_path):
    sender = SoftHsm(tmp_path / "a", KEY)
    receiver = SoftHsm(tmp_path / "b", KEY)
    fleet = sender.generate("fleet", ECDSA_P256, wrappable=True)
    sender.generate("identity", ED25519)
    transport = receiver.generate("transport", ECDH_P256)
    with pytest.raises(NotWrappable):
        sender.wrap("identity", transport.public_key)
    wrapped = sender.wrap("fleet", transport.public_key)
    assert receiver.unwrap("transport", wrapped, "fleet") == fleet
    assert verify_bytes(ECDSA_P256, fleet.public_key, receiver.sign("fleet", b"m"), b"m")
    assert SoftHsm(tmp_path / "b", KEY).public_key("fleet") == fleet


def test_unwrap_refuses_tampered_or_misdescribed_keys(tmp_path):
    sender = SoftHsm(tmp_path / "a", KEY)
    receiver = SoftHsm(tmp_path / "b", KEY)
    sender.generate("fleet", ED25519, wrappable=True)
    other = sender.generate("other", ED25519, wrappable=True)
    transport = receiver.generate("transport", ECDH_P256)
    wrapped = sender.wrap("fleet", transport.public_key)
    garbled = bytes([wrapped.ciphertext[0] ^ 1]) + wrapped.ciphertext[1:]
    with pytest.raises(UnwrapFailed, match="does not open"):
        receiver.unwrap("transport", replace(wrapped, ciphertext=garbled), "x")
    lying = replace(wrapped, public_key=other.public_key)
    with pytest.raises(UnwrapFailed, match="not the key it claims"):
        receiver.unwrap("transport", lying, "x")
    p256 = sender.generate("p256", ECDSA_P256, wrappable=True)
    mislabelled = replace(sender.wrap("p256", transport.public_key), alg=ED25519)
    with pytest.raises(UnwrapFailed, match="not of the algorithm it claims"):
        receiver.unwrap("transport", mislabelled, "x")
    assert receiver.labels() == ["transport"]
    assert receiver.unwrap("transport", replace(mislabelled, alg=ECDSA_P256), "p") == replace(
        p256, label="p"
    )


def test_state_dir_is_created_with_no_state_until_a_key_exists(tmp_path):
    hsm = SoftHsm(tmp_path / "new", KEY)
    assert hsm.labels() == []
    assert not (tmp_path / "new" / STATE_FILE).exists()
    assert os.path.isdir(tmp_path / "new")


def test_operator_key_of_the_wrong_size_is_refused(tmp_path):
    with pytest.raises(OperatorKeyError, match="32 bytes"):
        SoftHsm(tmp_path, bytes(16))
    assert not (tmp_path / STATE_FILE).exists()


def test_an_older_sealed_copy_of_the_state_is_refused(tmp_path):
    """Putting back an older state file must not bring a destroyed key back to life."""
    hsm = SoftHsm(tmp_path, KEY)
    hsm.generate("fleet", ED25519, wrappable=True)
    older = (tmp_path / STATE_FILE).read_bytes()
    hsm.destroy("fleet")
    (tmp_path / STATE_FILE).write_bytes(older)
    counter = (tmp_path / COUNTER_FILE).read_bytes()
    with pytest.raises(HsmStateRolledBack, match="older than the last one") as info:
        SoftHsm(tmp_path, KEY)
    assert info.value.kind == "hsm_state_rolled_back"
    assert isinstance(info.value, HsmStateTampered)
    assert (tmp_path / STATE_FILE).read_bytes() == older
    assert (tmp_path / COUNTER_FILE).read_bytes() == counter


def test_the_state_of_another_hsm_sealed_under_the_same_key_is_refused(tmp_path):
    SoftHsm(tmp_path / "a", KEY).generate("k", ED25519)
    SoftHsm(tmp_path / "b", KEY).generate("k", ED25519)
    a_state = (tmp_path / "a" / STATE_FILE).read_bytes()
    b_state = (tmp_path / "b" / STATE_FILE).read_bytes()
    assert a_state[: len(MAGIC) + 16] != b_state[: len(MAGIC) + 16]
    (tmp_path / "b" / STATE_FILE).write_bytes(a_state)
    with pytest.raises(HsmStateTampered, match="belongs to another HSM"):
        SoftHsm(tmp_path / "b", KEY)


def test_a_missing_or_garbled_counter_or_a_deleted_state_is_refused(tmp_path):
    SoftHsm(tmp_path, KEY).generate("k", ED25519)
    counter = (tmp_path / COUNTER_FILE).read_bytes()
    (tmp_path / COUNTER_FILE).unlink()
    with pytest.raises(HsmStateTampered, match="counter is missing"):
        SoftHsm(tmp_path, KEY)
    for garbled in (b"", b"{}", b'{"hsm": "00", "generation": 1}', b"\xff"):
        (tmp_path / COUNTER_FILE).write_bytes(garbled)
        with pytest.raises(HsmStateTampered, match="counter does not parse"):
            SoftHsm(tmp_path, KEY)
    (tmp_path / COUNTER_FILE).write_bytes(counter)
    (tmp_path / STATE_FILE).unlink()
    with pytest.raises(HsmStateTampered, match="state is missing"):
        SoftHsm(tmp_path, KEY)
    assert (tmp_path / COUNTER_FILE).read_bytes() == counter


def test_a_crash_between_state_and_counter_writes_is_recovered(tmp_path):
    hsm = SoftHsm(tmp_path, KEY)
    hsm.generate("old", ED25519)
    older, counter = (tmp_path / STATE_FILE).read_bytes(), (tmp_path / COUNTER_FILE).read_bytes()
    hsm.generate("new", ED25519)
    (tmp_path / COUNTER_FILE).write_bytes(counter)  # the new state landed, its counter did not
    assert SoftHsm(tmp_path, KEY).labels() == ["new", "old"]
    assert (tmp_path / COUNTER_FILE).read_bytes() != counter  # brought forward on load
    (tmp_path / STATE_FILE).write_bytes(older)
    with pytest.raises(HsmStateRolledBack):
        SoftHsm(tmp_path, KEY)


def test_rolling_back_state_and_counter_together_is_not_detected(tmp_path):
    """The documented limit: the counter lives beside the state, so both can be replaced."""
    hsm = SoftHsm(tmp_path, KEY)
    hsm.generate("fleet", ED25519)
    older, counter = (tmp_path / STATE_FILE).read_bytes(), (tmp_path / COUNTER_FILE).read_bytes()
    hsm.destroy("fleet")
    (tmp_path / STATE_FILE).write_bytes(older)
    (tmp_path / COUNTER_FILE).write_bytes(counter)
    assert SoftHsm(tmp_path, KEY).labels() == ["fleet"]


def test_two_handles_on_one_state_never_undo_each_others_keys(tmp_path):
    first, second = SoftHsm(tmp_path, KEY), SoftHsm(tmp_path, KEY)
    kept = first.generate("kept", ED25519)
    with pytest.raises(HsmStateConflict, match="another handle"):
        second.generate("lost", ED25519)
    with pytest.raises(HsmStateConflict):
        second.store_certificate("c", b"x")
    assert second.labels() == [] and second.certificate("c") is None
    again = SoftHsm(tmp_path, KEY)
    assert again.labels() == ["kept"] and again.public_key("kept") == kept
    again.generate("more", ECDSA_P256)
    assert SoftHsm(tmp_path, KEY).labels() == ["kept", "more"]


def _secret_forms(private) -> list[bytes]:
    """The encodings a leaked private key would show up in."""
    if isinstance(private, ed25519.Ed25519PrivateKey):
        raw = private.private_bytes_raw()
    else:
        raw = private.private_numbers().private_value.to_bytes(32, "big")
    forms = [raw, keys.pkcs8(private)]
    return forms + [f.hex().encode() for f in forms] + [b64(f).encode() for f in forms]


def test_no_method_error_or_file_carries_a_private_key(tmp_path):
    hsm = SoftHsm(tmp_path / "hsm", KEY)
    made = [
        hsm.generate("ed", ED25519),
        hsm.generate("p256", ECDSA_P256),
        hsm.generate("transport", ECDH_P256),
        hsm.generate("fleet", ECDSA_P256, wrappable=True),
    ]
    # The test looks inside the HSM to know what must never come out of it.
    secrets = [form for key in hsm._keys.values() for form in _secret_forms(key.private)]
    recipient = SoftHsm(tmp_path / "other", KEY).generate("transport", ECDH_P256)
    out: list[object] = [made, hsm.labels(), repr(hsm), hsm.signer("ed").__dict__]
    out += [hsm.public_key(k.label) for k in made]
    wrapped = hsm.wrap("fleet", recipient.public_key)
    out += [hsm.sign("ed", b"m"), hsm.sign("p256", b"m"), wrapped]
    for call in (
        lambda: hsm.wrap("ed", recipient.public_key),
        lambda: hsm.sign("transport", b"m"),
        lambda: hsm.generate("ed", ED25519),
        lambda: hsm.unwrap("ed", wrapped, "x"),
    ):
        with pytest.raises(HsmError) as info:
            call()
        out += [str(info.value), repr(info.value.detail)]
    files = [p.read_bytes() for p in (tmp_path / "hsm").iterdir()]
    haystack = b"\n".join(repr(o).encode() for o in out) + b"".join(files)
    assert all(secret not in haystack for secret in secrets)
    assert len(secrets) == 4 * 6
