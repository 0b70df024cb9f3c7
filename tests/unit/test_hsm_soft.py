"""The software HSM: keys stay inside, state is sealed at rest, tampering stops it from starting.

Behaviours of the operations a device offers run twice: on the software HSM in the test's own
process, and on one behind a device socket (:mod:`node.hsm.device`).
"""

import contextlib
import hmac
import json
import os
from dataclasses import replace

import opaque_ke_py
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from messages import TrustStore
from messages.attestation import ECDH_P256
from messages.canonical import b64
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
    hpke,
    keys,
)
from node.hsm.base import (
    AES256_GCM,
    KEY_ALGORITHMS,
    OPAQUE_SETUP,
    BadPublicKey,
    HsmError,
    UnsealFailed,
)
from node.hsm.sealed_state import COUNTER_FILE, SealedState
from node.hsm.sealing import KEY_ENV, MAGIC, load_operator_key, new_operator_key
from node.hsm.soft import STATE_FILE
from tests.unit.hsm_devices import served
from tests.unit.sample_messages import Ping, registry
from transport.gate import Gate
from transport.outbox import Outbox

KEY = bytes(range(32))
CONTEXT = b"fleet-1 epoch 1, role vault, for node-a"


@pytest.fixture(params=["in-process", "device"])
def reach(request):
    """How a test reaches a software HSM: in its own process, or over a device socket."""
    with contextlib.ExitStack() as stack:
        if request.param == "in-process":
            yield lambda soft: soft
        else:
            yield lambda soft: stack.enter_context(served(soft))[1]


@pytest.fixture
def hsm(tmp_path, reach):
    return reach(SoftHsm(tmp_path / "hsm", KEY))


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


def test_every_kind_of_key_survives_restart_and_nothing_is_in_clear_on_disk(tmp_path):
    first = SoftHsm(tmp_path, KEY)
    made = [first.generate(alg, alg, wrappable=alg == AES256_GCM) for alg in KEY_ALGORITHMS]
    sealed = first.seal(AES256_GCM, b"kept", b"")
    secrets = [first._keys[AES256_GCM].private.raw, first.secret(OPAQUE_SETUP)]
    again = SoftHsm(tmp_path, KEY)
    assert [again.public_key(k.label) for k in made] == made
    assert again.unseal(AES256_GCM, sealed, b"") == b"kept"
    assert again.secret(OPAQUE_SETUP) == secrets[1]
    assert again._keys[AES256_GCM].wrappable and not again._keys[OPAQUE_SETUP].wrappable
    on_disk = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    for secret in secrets:
        for form in (secret, secret.hex().encode(), b64(secret).encode()):
            assert form not in on_disk
    assert b"aes256-gcm" not in on_disk and b"opaque" not in on_disk


def test_a_state_written_before_the_new_key_kinds_still_loads(tmp_path):
    """The state's layout (PKCS#8 DER in base64 per key) is the one earlier releases wrote."""
    private = ec.generate_private_key(ec.SECP256R1())
    old = {
        "keys": {
            "device": {"alg": ECDSA_P256, "private": b64(keys.pkcs8(private)), "wrappable": False}
        },
        "certificates": {"device": b64(b"certificate")},
    }
    SealedState(tmp_path, KEY).store(json.dumps(old).encode())
    hsm = SoftHsm(tmp_path, KEY)
    assert hsm.public_key("device").public_key == keys.p256_point(private.public_key())
    assert hsm.certificate("device") == b"certificate"


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


def test_keys_leave_only_wrapped_to_a_transport_key(tmp_path, reach):
    sender = SoftHsm(tmp_path / "a", KEY)
    receiver = reach(SoftHsm(tmp_path / "b", KEY))
    fleet = sender.generate("fleet", ECDSA_P256, wrappable=True)
    sender.generate("identity", ED25519)
    transport = receiver.generate("transport", ECDH_P256)
    with pytest.raises(NotWrappable):
        sender.wrap("identity", transport.public_key, CONTEXT)
    wrapped = sender.wrap("fleet", transport.public_key, CONTEXT)
    assert receiver.unwrap("transport", wrapped, "fleet", CONTEXT) == fleet
    assert verify_bytes(ECDSA_P256, fleet.public_key, receiver.sign("fleet", b"m"), b"m")
    assert SoftHsm(tmp_path / "b", KEY).public_key("fleet") == fleet


def test_unwrap_refuses_tampered_or_misdescribed_keys(tmp_path, reach):
    sender = SoftHsm(tmp_path / "a", KEY)
    receiver = reach(SoftHsm(tmp_path / "b", KEY))
    sender.generate("fleet", ED25519, wrappable=True)
    other = sender.generate("other", ED25519, wrappable=True)
    transport = receiver.generate("transport", ECDH_P256)
    wrapped = sender.wrap("fleet", transport.public_key, CONTEXT)
    garbled = bytes([wrapped.ciphertext[0] ^ 1]) + wrapped.ciphertext[1:]
    with pytest.raises(UnwrapFailed, match="does not open"):
        receiver.unwrap("transport", replace(wrapped, ciphertext=garbled), "x", CONTEXT)
    lying = replace(wrapped, public_key=other.public_key)
    with pytest.raises(UnwrapFailed, match="not the key it claims"):
        receiver.unwrap("transport", lying, "x", CONTEXT)
    p256 = sender.generate("p256", ECDSA_P256, wrappable=True)
    mislabelled = replace(sender.wrap("p256", transport.public_key, CONTEXT), alg=ED25519)
    with pytest.raises(UnwrapFailed, match="not of the algorithm it claims"):
        receiver.unwrap("transport", mislabelled, "x", CONTEXT)
    assert receiver.labels() == ["transport"]
    assert receiver.unwrap(
        "transport", replace(mislabelled, alg=ECDSA_P256), "p", CONTEXT
    ) == replace(p256, label="p")


def _opens(soft: SoftHsm, key, inner: SoftHsm) -> None:
    """Check that the copy of ``soft``'s ``key`` in ``inner`` works as the original does."""
    label = key.label
    if key.alg in (ED25519, ECDSA_P256):
        assert verify_bytes(key.alg, key.public_key, inner.sign(label, b"m"), b"m")
    elif key.alg == ECDH_P256:
        peer = ec.generate_private_key(ec.SECP256R1())
        point = keys.p256_point(peer.public_key())
        assert inner.ecdh(label, point) == soft.ecdh(label, point)
    elif key.alg == AES256_GCM:
        assert inner.unseal(label, soft.seal(label, b"m", b"aad"), b"aad") == b"m"
    else:
        assert inner.secret(label) == soft.secret(label)


@pytest.mark.parametrize("alg", KEY_ALGORITHMS)
def test_every_kind_of_key_moves_wrapped_and_opens_only_for_its_context(tmp_path, reach, alg):
    sender = SoftHsm(tmp_path / "a", KEY)
    inner = SoftHsm(tmp_path / "b", KEY)
    receiver = reach(inner)
    key = sender.generate(alg, alg, wrappable=True)
    transport = receiver.generate("transport", ECDH_P256)
    receiver.generate("stranger", ECDH_P256)
    wrapped = sender.wrap(alg, transport.public_key, CONTEXT)
    assert len(wrapped.ephemeral) == hpke.ENC_BYTES
    for other_context in (b"", CONTEXT + b"!", b"fleet-2" + CONTEXT[7:]):
        with pytest.raises(UnwrapFailed, match="does not open"):
            receiver.unwrap("transport", wrapped, alg, other_context)
    with pytest.raises(UnwrapFailed, match="does not open"):
        receiver.unwrap("stranger", wrapped, alg, CONTEXT)  # another recipient's transport key
    enc = bytearray(wrapped.ephemeral)
    enc[-1] ^= 1
    for tampered in (
        replace(wrapped, ephemeral=bytes(enc)),
        replace(wrapped, ciphertext=wrapped.ciphertext[:-1]),
        replace(wrapped, ciphertext=b""),
    ):
        with pytest.raises(UnwrapFailed):
            receiver.unwrap("transport", tampered, alg, CONTEXT)
    assert receiver.labels() == ["stranger", "transport"]
    assert receiver.unwrap("transport", wrapped, alg, CONTEXT) == key
    _opens(sender, key, inner)
    # Imported keys stay wrappable: the member can pass the key on to a later one.
    onward = inner.wrap(alg, sender.generate("transport", ECDH_P256).public_key, b"onward")
    assert sender.unwrap("transport", onward, "back", b"onward").public_key == key.public_key


@pytest.mark.parametrize(
    ("sent", "claimed"),
    [(AES256_GCM, OPAQUE_SETUP), (OPAQUE_SETUP, AES256_GCM), (ED25519, AES256_GCM)],
)
def test_unwrap_refuses_key_material_of_another_kind(tmp_path, sent, claimed):
    sender, receiver = SoftHsm(tmp_path / "a", KEY), SoftHsm(tmp_path / "b", KEY)
    sender.generate("k", sent, wrappable=True)
    transport = receiver.generate("transport", ECDH_P256)
    wrapped = replace(sender.wrap("k", transport.public_key, CONTEXT), alg=claimed)
    with pytest.raises(UnwrapFailed, match="not of the algorithm it claims"):
        receiver.unwrap("transport", wrapped, "k", CONTEXT)
    assert receiver.labels() == ["transport"]


@pytest.mark.parametrize("alg", [AES256_GCM, OPAQUE_SETUP])
def test_unwrap_refuses_a_secret_key_described_by_another_public_half(tmp_path, alg):
    sender, receiver = SoftHsm(tmp_path / "a", KEY), SoftHsm(tmp_path / "b", KEY)
    sender.generate("k", alg, wrappable=True)
    other = sender.generate("other", alg)
    transport = receiver.generate("transport", ECDH_P256)
    lying = replace(sender.wrap("k", transport.public_key, CONTEXT), public_key=other.public_key)
    with pytest.raises(UnwrapFailed, match="not the key it claims"):
        receiver.unwrap("transport", lying, "k", CONTEXT)
    assert receiver.labels() == ["transport"]


def test_aes_keys_seal_and_unseal_inside(tmp_path):
    hsm = SoftHsm(tmp_path, KEY)
    key = hsm.generate("vault", AES256_GCM)
    other = hsm.generate("other", AES256_GCM)
    sealed = hsm.seal("vault", b"record", b"user-1")
    assert len(sealed) == 12 + len(b"record") + 16
    assert hsm.seal("vault", b"record", b"user-1") != sealed  # a fresh nonce each time
    assert hsm.unseal("vault", sealed, b"user-1") == b"record"
    # The format is AES-256-GCM: nonce || ciphertext || tag (the test looks inside).
    raw = hsm._keys["vault"].private.raw
    assert AESGCM(raw).decrypt(sealed[:12], sealed[12:], b"user-1") == b"record"
    flipped = bytearray(sealed)
    flipped[20] ^= 1
    for bad, aad in ((sealed, b"user-2"), (bytes(flipped), b"user-1"), (sealed[:27], b"user-1")):
        with pytest.raises(UnsealFailed) as info:
            hsm.unseal("vault", bad, aad)
        assert info.value.kind == "hsm_unseal_failed"
    with pytest.raises(UnsealFailed):
        hsm.unseal("other", sealed, b"user-1")
    hsm.generate("signing", ED25519)
    with pytest.raises(UnsupportedAlgorithm):
        hsm.seal("signing", b"x", b"")
    with pytest.raises(UnsupportedAlgorithm):
        hsm.sign("vault", b"x")
    assert key.public_key != other.public_key


def test_an_aes_keys_public_half_is_its_key_check_value(tmp_path):
    hsm = SoftHsm(tmp_path, KEY)
    key = hsm.generate("vault", AES256_GCM)
    raw = hsm._keys["vault"].private.raw  # the test looks inside
    assert key.public_key == hmac.digest(raw, b"hsmfleet/v1/key-check", "sha256")
    assert len(key.public_key) == 32 and raw not in key.public_key


def test_an_opaque_setups_public_half_is_its_server_public_key(tmp_path):
    hsm = SoftHsm(tmp_path, KEY)
    key = hsm.generate("login", OPAQUE_SETUP)
    setup = hsm.secret("login")
    assert len(setup) == 128 and len(key.public_key) == 32
    # What a client registering with this setup is told the server's public key is.
    loaded = opaque_ke_py.ServerSetupData.from_bytes(setup)
    start = opaque_ke_py.client_registration_start(b"a password")
    answer = opaque_ke_py.server_registration_start(loaded, start.get_message(), b"alice")
    assert answer.get_message()[32:64] == key.public_key
    assert hsm.generate("another", OPAQUE_SETUP).public_key != key.public_key
    with pytest.raises(UnsupportedAlgorithm):
        hsm.secret(hsm.generate("aes", AES256_GCM).label)


def test_ecdh_and_hpke_open_with_a_transport_key(tmp_path):
    hsm = SoftHsm(tmp_path, KEY)
    transport = hsm.generate("transport", ECDH_P256)
    peer = ec.generate_private_key(ec.SECP256R1())
    shared = peer.exchange(ec.ECDH(), keys.p256_public(transport.public_key))
    assert hsm.ecdh("transport", keys.p256_point(peer.public_key())) == shared
    sealed = hpke.SUITE.encrypt(b"request", keys.p256_public(transport.public_key), info=b"i")
    assert hsm.open_hpke("transport", sealed, b"i") == b"request"
    with pytest.raises(UnsealFailed):
        hsm.open_hpke("transport", sealed, b"j")
    with pytest.raises(BadPublicKey):
        hsm.ecdh("transport", b"\x04" + bytes(64))
    hsm.generate("signing", ECDSA_P256)
    for call in (
        lambda: hsm.ecdh("signing", transport.public_key),
        lambda: hsm.open_hpke("signing", sealed, b"i"),
    ):
        with pytest.raises(UnsupportedAlgorithm):
            call()


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
    if isinstance(private, keys.AesKey | keys.OpaqueSetup):
        forms = [private.raw]
    elif isinstance(private, ed25519.Ed25519PrivateKey):
        forms = [private.private_bytes_raw(), keys.pkcs8(private)]
    else:
        forms = [private.private_numbers().private_value.to_bytes(32, "big"), keys.pkcs8(private)]
    return forms + [f.hex().encode() for f in forms] + [b64(f).encode() for f in forms]


def test_no_method_error_or_file_carries_a_private_key(tmp_path):
    hsm = SoftHsm(tmp_path / "hsm", KEY)
    made = [
        hsm.generate("ed", ED25519),
        hsm.generate("p256", ECDSA_P256),
        hsm.generate("transport", ECDH_P256),
        hsm.generate("fleet", ECDSA_P256, wrappable=True),
        hsm.generate("aes", AES256_GCM),
        hsm.generate("opaque", OPAQUE_SETUP),
    ]
    # The test looks inside the HSM to know what must never come out of it.
    secrets = [form for key in hsm._keys.values() for form in _secret_forms(key.private)]
    recipient = SoftHsm(tmp_path / "other", KEY).generate("transport", ECDH_P256)
    out: list[object] = [made, hsm.labels(), repr(hsm), hsm.signer("ed").__dict__]
    out += [hsm.public_key(k.label) for k in made]
    wrapped = hsm.wrap("fleet", recipient.public_key, CONTEXT)
    out += [hsm.sign("ed", b"m"), hsm.sign("p256", b"m"), wrapped, hsm.seal("aes", b"m", b"")]
    for call in (
        lambda: hsm.wrap("ed", recipient.public_key, CONTEXT),
        lambda: hsm.wrap("aes", recipient.public_key, CONTEXT),
        lambda: hsm.sign("transport", b"m"),
        lambda: hsm.sign("aes", b"m"),
        lambda: hsm.generate("ed", ED25519),
        lambda: hsm.unwrap("ed", wrapped, "x", CONTEXT),
        lambda: hsm.unseal("aes", b"x" * 40, b""),
    ):
        with pytest.raises(HsmError) as info:
            call()
        out += [str(info.value), repr(info.value.detail)]
    files = [p.read_bytes() for p in (tmp_path / "hsm").iterdir()]
    haystack = b"\n".join(repr(o).encode() for o in out) + b"".join(files)
    assert all(secret not in haystack for secret in secrets)
    assert len(secrets) == 4 * 6 + 2 * 3
