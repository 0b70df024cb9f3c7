"""The PKCS#11 backend on a real SoftHSM2 token: keys of every kind, certificates, AES-GCM
sealing, ECDH, wrapping to and from a software HSM, lost sessions.

In CI (``CI`` set) these tests must run: a missing SoftHSM2 fails them instead of skipping.
"""

import os
import threading
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from functools import partial

import pkcs11
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from pkcs11 import Attribute, KeyType, ObjectClass
from pkcs11 import exceptions as p11_errors

from messages.attestation import ECDH_P256
from messages.signing import ECDSA_P256, ED25519, verify_bytes
from node.hsm import (
    BadCertificate,
    HsmError,
    HsmLoginFailed,
    HsmUnavailable,
    KeyExists,
    KeyNotFound,
    NotWrappable,
    SoftHsm,
    UnsupportedAlgorithm,
    UnwrapFailed,
    hpke,
    keys,
    softhsm,
)
from node.hsm.base import AES256_GCM, OPAQUE_SETUP, UnsealFailed
from node.hsm.cryptoki import Pkcs11Hsm
from node.vendor import DEVICE, VendorCA, device_chain, provision

PIN = "1234"
CONTEXT = b"fleet-1 epoch 1, role vault, for node-a"
# A lost session leaves python-pkcs11's unfinished object searches to fail in their finalizers.
session_loss = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@pytest.fixture(scope="session")
def softhsm_dir(tmp_path_factory):
    """A SoftHSM2 token directory for this test session (required in CI)."""
    if not softhsm.available():
        if os.environ.get("CI"):
            pytest.fail("SoftHSM2 is not installed, and CI must run the PKCS#11 tests")
        pytest.skip("SoftHSM2 is not installed")
    return softhsm.configure(tmp_path_factory.mktemp("softhsm"))


@pytest.fixture
def token_label(softhsm_dir):
    """A fresh, initialized token of its own for one test."""
    label = f"t-{uuid.uuid4().hex[:12]}"
    softhsm.init_token(label, PIN, "so-" + PIN)
    return label


@pytest.fixture
def p11(token_label):
    hsm = Pkcs11Hsm(softhsm.MODULE, token_label, PIN)
    yield hsm
    hsm.close()


@pytest.mark.parametrize("alg", [ED25519, ECDSA_P256])
def test_signs_with_keys_made_on_the_token(p11, alg):
    assert p11.supports(alg)
    key = p11.generate("k", alg)
    assert verify_bytes(alg, key.public_key, p11.sign("k", b"data"), b"data")
    assert p11.public_key("k") == key
    assert p11.signer("k").kid == key.kid


def test_keys_and_certificates_persist_on_the_token(p11, token_label, tmp_path):
    ident = p11.generate("identity", ED25519)
    transport = p11.generate("transport", ECDH_P256)
    vendor = VendorCA.init(tmp_path, datetime.now(UTC))
    chain = provision(p11, vendor, datetime.now(UTC))
    p11.close()
    again = Pkcs11Hsm(softhsm.MODULE, token_label, PIN)
    try:
        assert again.labels() == [DEVICE, "identity", "transport"]
        assert again.public_key("identity") == ident
        assert again.public_key("transport") == transport
        assert device_chain(again) == chain
        assert provision(again, vendor, datetime.now(UTC)) == chain
    finally:
        again.close()


@session_loss
def test_typed_errors_for_bad_requests(p11, token_label):
    p11.generate("k", ED25519)
    p11.generate("t", ECDH_P256)
    with pytest.raises(KeyExists):
        p11.generate("k", ECDSA_P256)
    with pytest.raises(KeyNotFound):
        p11.sign("missing", b"x")
    with pytest.raises(UnsupportedAlgorithm):
        p11.sign("t", b"x")
    with pytest.raises(HsmError, match="PIN") as info:
        Pkcs11Hsm(softhsm.MODULE, token_label, "wrong-pin")
    assert isinstance(info.value, HsmLoginFailed) and info.value.kind == "hsm_login"
    with pytest.raises(HsmUnavailable):
        Pkcs11Hsm(softhsm.MODULE, "no-such-token", PIN)
    with pytest.raises(HsmUnavailable, match="cannot load"):
        Pkcs11Hsm("/nonexistent/libpkcs11.so", token_label, PIN)
    with pytest.raises(BadCertificate):
        p11.store_certificate("k", b"\x30\x03junk")
    assert p11.certificate("k") is None
    p11.destroy("k")
    with pytest.raises(KeyNotFound):
        p11.destroy("k")
    assert p11.labels() == ["t"]


@session_loss
def test_logs_in_again_after_the_session_is_closed(p11):
    key = p11.generate("k", ED25519)
    p11._session.close()
    assert verify_bytes(ED25519, key.public_key, p11.sign("k", b"m"), b"m")
    assert p11.relogins == 1


@session_loss
def test_logs_in_again_after_the_library_is_reloaded(p11):
    key = p11.generate("k", ECDSA_P256)
    pkcs11.lib(softhsm.MODULE).reinitialize()
    assert verify_bytes(ECDSA_P256, key.public_key, p11.sign("k", b"m"), b"m")
    pkcs11.lib(softhsm.MODULE).finalize()
    assert p11.healthy()
    assert verify_bytes(ECDSA_P256, key.public_key, p11.sign("k", b"m"), b"m")
    assert p11.relogins == 2


def test_parallel_signers_are_serialized_per_token(p11):
    key = p11.generate("k", ECDSA_P256)
    results, errors = [], []

    def work(n):
        try:
            for i in range(25):
                msg = f"{n}-{i}".encode()
                results.append(verify_bytes(ECDSA_P256, key.public_key, p11.sign("k", msg), msg))
        except Exception as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert errors == [] and results == [True] * 100


def test_token_without_ed25519_signs_with_p256(token_label):
    hsm = Pkcs11Hsm(softhsm.MODULE, token_label, PIN, algorithms=(ECDSA_P256, ECDH_P256))
    try:
        assert not hsm.supports(ED25519)
        assert hsm.signing_alg() == ECDSA_P256
        with pytest.raises(UnsupportedAlgorithm):
            hsm.generate("k", ED25519)
    finally:
        hsm.close()


def test_keys_move_between_backends_only_wrapped(p11, tmp_path):
    soft = SoftHsm(tmp_path, bytes(32))
    p11_transport = p11.generate("transport", ECDH_P256)
    soft_transport = soft.generate("transport", ECDH_P256)
    fleet = soft.generate("fleet", ECDSA_P256, wrappable=True)
    sent = soft.wrap("fleet", p11_transport.public_key, CONTEXT)
    assert p11.unwrap("transport", sent, "fleet", CONTEXT) == fleet
    assert verify_bytes(ECDSA_P256, fleet.public_key, p11.sign("fleet", b"m"), b"m")
    back = p11.wrap("fleet", soft_transport.public_key, CONTEXT)
    assert soft.unwrap("transport", back, "fleet-again", CONTEXT) == replace(
        fleet, label="fleet-again"
    )
    p11.generate("identity", ED25519)
    with pytest.raises(NotWrappable):
        p11.wrap("identity", soft_transport.public_key, CONTEXT)


def _works_like(p11, soft, label: str, alg: str) -> None:
    """The token's copy of ``soft``'s key ``label`` does what the original does."""
    if alg in (ED25519, ECDSA_P256):
        public = soft.public_key(label).public_key
        assert verify_bytes(alg, public, p11.sign(label, b"m"), b"m")
    elif alg == ECDH_P256:
        point = keys.p256_point(ec.generate_private_key(ec.SECP256R1()).public_key())
        assert p11.ecdh(label, point) == soft.ecdh(label, point)
    elif alg == AES256_GCM:
        assert p11.unseal(label, soft.seal(label, b"m", b"a"), b"a") == b"m"
        assert soft.unseal(label, p11.seal(label, b"m", b"a"), b"a") == b"m"
    else:
        assert p11.secret(label) == soft.secret(label)


@pytest.mark.parametrize("alg", [ECDH_P256, AES256_GCM, OPAQUE_SETUP, ECDSA_P256, ED25519])
def test_every_kind_of_key_moves_to_the_token_and_back(p11, tmp_path, alg):
    soft = SoftHsm(tmp_path, bytes(32))
    transport = p11.generate("transport", ECDH_P256)
    soft_transport = soft.generate("transport", ECDH_P256)
    key = soft.generate(alg, alg, wrappable=True)
    wrapped = soft.wrap(alg, transport.public_key, CONTEXT)
    with pytest.raises(UnwrapFailed, match="does not open"):
        p11.unwrap("transport", wrapped, alg, CONTEXT + b"!")
    assert p11.unwrap("transport", wrapped, alg, CONTEXT) == key
    assert p11.public_key(alg) == key and alg in p11.labels()
    _works_like(p11, soft, alg, alg)
    if alg == ED25519:  # SoftHSM2 exports no Ed25519 private key, even a wrappable one
        with pytest.raises(UnsupportedAlgorithm, match="cannot wrap"):
            p11.wrap(alg, soft_transport.public_key, b"back")
        return
    back = p11.wrap(alg, soft_transport.public_key, b"back")
    assert soft.unwrap("transport", back, "back", b"back") == replace(key, label="back")


@pytest.mark.parametrize("alg", [AES256_GCM, OPAQUE_SETUP])
def test_secret_kinds_made_on_the_token_persist_and_leave_only_if_wrappable(
    p11, token_label, tmp_path, alg
):
    soft = SoftHsm(tmp_path, bytes(32))
    peer = soft.generate("transport", ECDH_P256)
    fixed = p11.generate("fixed", alg)
    moving = p11.generate("moving", alg, wrappable=True)
    assert len(fixed.public_key) == 32 and fixed.public_key != moving.public_key
    with pytest.raises(NotWrappable):
        p11.wrap("fixed", peer.public_key, CONTEXT)
    assert soft.unwrap(
        "transport", p11.wrap("moving", peer.public_key, CONTEXT), "moving", CONTEXT
    ) == replace(moving, label="moving")
    _works_like(p11, soft, "moving", alg)
    p11.close()
    again = Pkcs11Hsm(softhsm.MODULE, token_label, PIN)
    try:
        assert again.labels() == ["fixed", "moving"]
        assert again.public_key("fixed") == fixed and again.public_key("moving") == moving
        _works_like(again, soft, "moving", alg)
        again.destroy("fixed")
        assert again.labels() == ["moving"]
    finally:
        again.close()


def test_aes_keys_seal_on_the_token_and_refuse_what_does_not_open(p11):
    key = p11.generate("vault", AES256_GCM)
    p11.generate("other", AES256_GCM)
    sealed = p11.seal("vault", b"record", b"user-1")
    assert len(sealed) == 12 + len(b"record") + 16
    assert p11.unseal("vault", sealed, b"user-1") == b"record"
    flipped = bytearray(sealed)
    flipped[-1] ^= 1
    for bad, aad, label in (
        (sealed, b"user-2", "vault"),
        (bytes(flipped), b"user-1", "vault"),
        (sealed[:20], b"user-1", "vault"),
        (sealed, b"user-1", "other"),
    ):
        with pytest.raises(UnsealFailed):
            p11.unseal(label, bad, aad)
    assert p11.unseal("vault", sealed, b"user-1") == b"record"  # the session is still fine
    assert p11.relogins == 0
    p11.generate("identity", ECDSA_P256)
    with pytest.raises(UnsupportedAlgorithm):
        p11.seal("identity", b"x", b"")
    with pytest.raises(UnsupportedAlgorithm):
        p11.sign("vault", b"x")
    assert _secret_attributes(p11, "vault")[:2] == (True, False)
    assert key.public_key == p11.public_key("vault").public_key


def test_ecdh_and_hpke_open_on_the_token(p11):
    transport = p11.generate("transport", ECDH_P256)
    peer = ec.generate_private_key(ec.SECP256R1())
    shared = peer.exchange(ec.ECDH(), keys.p256_public(transport.public_key))
    assert p11.ecdh("transport", keys.p256_point(peer.public_key())) == shared
    sealed = hpke.SUITE.encrypt(b"request", keys.p256_public(transport.public_key), info=b"i")
    assert p11.open_hpke("transport", sealed, b"i") == b"request"
    with pytest.raises(UnsealFailed):
        p11.open_hpke("transport", sealed, b"j")
    p11.generate("signing", ECDSA_P256)
    with pytest.raises(UnsupportedAlgorithm):
        p11.ecdh("signing", keys.p256_point(peer.public_key()))


def test_opaque_setups_are_kept_sealed_under_the_tokens_own_key(p11):
    p11.generate("login", OPAQUE_SETUP)
    setup = p11.secret("login")

    def stored(session):
        data = session.get_objects({Attribute.CLASS: ObjectClass.DATA, Attribute.LABEL: "login"})
        [obj] = list(data)
        seal = session.get_key(object_class=ObjectClass.SECRET_KEY, label="hsmfleet:secret-seal")
        return bytes(obj[Attribute.VALUE]), obj[Attribute.PRIVATE], seal

    value, private, seal = p11._run(stored)
    assert setup not in value and len(value) == 12 + len(setup) + 16 and private
    assert (seal[Attribute.SENSITIVE], seal[Attribute.EXTRACTABLE]) == (True, False)
    assert seal[Attribute.NEVER_EXTRACTABLE]
    assert p11.labels() == ["login"]  # the sealing key is no one's key
    with pytest.raises(KeyNotFound):
        p11.destroy("hsmfleet:secret-seal")
    with pytest.raises(KeyExists):
        p11.generate("hsmfleet:secret-seal", AES256_GCM)


def test_tampered_wrapped_key_is_refused(p11, tmp_path):
    soft = SoftHsm(tmp_path, bytes(32))
    transport = p11.generate("transport", ECDH_P256)
    soft.generate("fleet", ECDSA_P256, wrappable=True)
    other = soft.generate("other", ECDSA_P256, wrappable=True)
    wrapped = soft.wrap("fleet", transport.public_key, CONTEXT)
    garbled = replace(wrapped, ciphertext=wrapped.ciphertext[:-1] + b"\x00")
    with pytest.raises(UnwrapFailed):
        p11.unwrap("transport", garbled, "x", CONTEXT)
    with pytest.raises(UnwrapFailed, match="not the key it claims"):
        p11.unwrap("transport", replace(wrapped, public_key=other.public_key), "y", CONTEXT)
    assert p11.labels() == ["transport"]


def _private_attributes(hsm, label, object_class=ObjectClass.PRIVATE_KEY):
    names = (
        Attribute.SENSITIVE,
        Attribute.EXTRACTABLE,
        Attribute.ALWAYS_SENSITIVE,
        Attribute.NEVER_EXTRACTABLE,
    )

    def op(session):
        key = session.get_key(object_class=object_class, label=label)
        return tuple(key[name] for name in names)

    return hsm._run(op)


def _secret_attributes(hsm, label):
    return _private_attributes(hsm, label, ObjectClass.SECRET_KEY)


def test_the_token_holds_keys_sensitive_and_unextractable_unless_wrappable(p11, tmp_path):
    """Read back from the token itself: (sensitive, extractable, always sensitive, never
    extractable)."""
    for label, alg in (("identity", ED25519), ("device", ECDSA_P256), ("transport", ECDH_P256)):
        p11.generate(label, alg)
        assert _private_attributes(p11, label) == (True, False, True, True)
    p11.generate("fleet", ECDSA_P256, wrappable=True)
    assert _private_attributes(p11, "fleet") == (True, True, True, False)
    # An AES key is read out once, for its check value, before it is made unextractable.
    p11.generate("vault", AES256_GCM)
    assert _secret_attributes(p11, "vault") == (True, False, True, False)
    p11.generate("vault-wrappable", AES256_GCM, wrappable=True)
    assert _secret_attributes(p11, "vault-wrappable") == (True, True, True, False)
    soft = SoftHsm(tmp_path, bytes(32))
    soft.generate("sent", ECDSA_P256, wrappable=True)
    soft.generate("sent-aes", AES256_GCM, wrappable=True)
    transport = p11.public_key("transport").public_key
    p11.unwrap("transport", soft.wrap("sent", transport, CONTEXT), "sent", CONTEXT)
    p11.unwrap("transport", soft.wrap("sent-aes", transport, CONTEXT), "sent-aes", CONTEXT)
    assert _private_attributes(p11, "sent")[:2] == (True, True)
    assert _secret_attributes(p11, "sent-aes")[:2] == (True, True)


def test_a_token_that_cannot_wrap_ed25519_says_so(p11, tmp_path):
    """SoftHSM2 makes and signs with Ed25519 keys but wraps none: a typed refusal, no HsmError."""
    peer = SoftHsm(tmp_path, bytes(32)).generate("transport", ECDH_P256)
    p11.generate("fleet", ED25519, wrappable=True)
    with pytest.raises(UnsupportedAlgorithm, match="cannot wrap"):
        p11.wrap("fleet", peer.public_key, CONTEXT)
    assert p11.labels() == ["fleet"]


def test_the_token_itself_refuses_to_wrap_a_key_made_unwrappable(p11):
    """Not only the backend's own check: the token will not let the key out under any key."""
    p11.generate("identity", ED25519)
    p11.generate("vault", AES256_GCM)

    def op(session, object_class, label):
        kek = session.generate_key(KeyType.AES, 256, store=False)
        try:
            kek.wrap_key(session.get_key(object_class=object_class, label=label))
        finally:
            kek.destroy()

    for object_class, label in (
        (ObjectClass.PRIVATE_KEY, "identity"),
        (ObjectClass.SECRET_KEY, "vault"),
    ):
        with pytest.raises(HsmError) as info:
            p11._run(partial(op, object_class=object_class, label=label))
        assert isinstance(info.value.__cause__, p11_errors.KeyUnextractable)


def test_transient_keys_and_ecdh_outputs_do_not_outlive_their_operation(p11, tmp_path):
    transport = p11.generate("transport", ECDH_P256)
    soft = SoftHsm(tmp_path, bytes(32))
    peer = soft.generate("transport", ECDH_P256)
    soft.generate("fleet", ECDSA_P256, wrappable=True)
    p11.unwrap("transport", soft.wrap("fleet", transport.public_key, CONTEXT), "fleet", CONTEXT)
    p11.wrap("fleet", peer.public_key, CONTEXT)
    p11.ecdh("transport", peer.public_key)
    lying = replace(soft.wrap("fleet", transport.public_key, CONTEXT), public_key=peer.public_key)
    with pytest.raises(UnwrapFailed):
        p11.unwrap("transport", lying, "copy", CONTEXT)

    def leftovers(session):
        secrets = list(session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY}))
        privates = session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY})
        publics = session.get_objects({Attribute.CLASS: ObjectClass.PUBLIC_KEY})
        return len(secrets), sorted(o.label for o in privates), sorted(o.label for o in publics)

    assert p11._run(leftovers) == (0, ["fleet", "transport"], ["fleet", "transport"])
