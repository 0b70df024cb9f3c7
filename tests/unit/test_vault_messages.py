"""The vault's messages: requests HPKE-sealed to the fleet for one operation, answers sealed to
the client and padded to one length, released secrets bound to their login, typed errors, user
authorizations with every way one is refused, and the policy's bounds."""

import json
import os
from dataclasses import replace

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from messages.canonical import canonical
from messages.ids import format_time
from messages.signing import ED25519, Ed25519Signer
from messages.vault import (
    ANSWER_BYTES,
    ERRORS,
    OPERATIONS,
    PLAINTEXTS,
    RECOVER_FINISH,
    RECOVER_START,
    REGISTER,
    REGISTER_START,
    SUITE,
    BudgetExhausted,
    Outcome,
    PinProof,
    RecoverFinish,
    RecoverStart,
    Register,
    RegisterStart,
    UnreadableAnswer,
    UnreadableRequest,
    WrongGuess,
    kem_public_key,
    open_answer,
    open_release,
    outcome_error,
    parse_request,
    request_info,
    seal_answer,
    seal_release,
    seal_request,
)
from messages.vault_authorization import (
    MAX_LIFETIME_MS,
    RECOVER,
    REPLACE,
    SKEW_MS,
    AccountAuthority,
    Authorization,
    AuthorizationExpired,
    AuthorizationRefused,
)
from messages.vault_authorization import REGISTER as REGISTER_KIND
from messages.vault_policy import VaultError, VaultPolicy, VaultPolicyError
from transport.outbox import IdSource

NOW = 1_800_000_000_000
AUTHORITY = Ed25519Signer.from_seed(bytes(range(32)))


def authorization(op=RECOVER, request="01REQ", now_ms=NOW, user="alice", fleet="f1"):
    return AccountAuthority(AUTHORITY).authorize(fleet, user, op, request, now_ms)


def plaintexts() -> dict[str, object]:
    """One valid plaintext of each operation."""
    ids = IdSource(lambda: NOW)
    key = os.urandom(32)
    auth = authorization(REGISTER_KIND)
    return {
        REGISTER_START: RegisterStart(
            id=ids.new(),
            user="alice",
            answer_key=key,
            authorization=auth,
            registration_request=bytes(32),
        ),
        REGISTER: Register(
            id=ids.new(),
            user="alice",
            answer_key=key,
            authorization=auth,
            registration="01REG",
            upload=bytes(192),
            secret=b"ciphertext",
            proof=PinProof(login=b"state", finalization=bytes(64)),
        ),
        RECOVER_START: RecoverStart(
            id=ids.new(),
            user="alice",
            answer_key=key,
            authorization=authorization(),
            credential_request=bytes(96),
        ),
        RECOVER_FINISH: RecoverFinish(
            id=ids.new(), user="alice", answer_key=key, login=b"state", finalization=bytes(64)
        ),
    }


# -- requests ------------------------------------------------------------------------------


def test_every_operation_has_a_plaintext_type():
    assert set(PLAINTEXTS) == set(OPERATIONS)


@pytest.mark.parametrize("op", OPERATIONS)
def test_a_request_opens_only_for_its_fleet_and_operation_and_parses_to_its_type(op):
    private = ec.generate_private_key(ec.SECP256R1())
    encoded = private.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    plain = plaintexts()[op]
    sealed = seal_request(kem_public_key(encoded), "f1", op, plain)
    opened = parse_request(op, SUITE.decrypt(sealed, private, info=request_info("f1", op)))
    assert opened == plain and type(opened) is PLAINTEXTS[op]
    others = [("f2", op), *(("f1", other) for other in OPERATIONS if other != op)]
    for fleet, other in others:
        with pytest.raises(InvalidTag):  # the info differs
            SUITE.decrypt(sealed, private, info=request_info(fleet, other))
    stranger = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(InvalidTag):
        SUITE.decrypt(sealed, stranger, info=request_info("f1", op))


def test_a_vault_key_that_is_not_a_p256_point_is_refused():
    with pytest.raises(VaultError, match="P-256"):
        kem_public_key(b"\x04" + bytes(64))
    with pytest.raises(VaultError):
        kem_public_key(os.urandom(32))


def test_parse_request_refuses_every_defect_as_unreadable_request():
    valid = plaintexts()
    recover = canonical(valid[RECOVER_START].to_json())
    assert parse_request(RECOVER_START, recover) == valid[RECOVER_START]
    raw = valid[RECOVER_START].to_json()
    defects = {
        "an unknown operation": ("delete", recover),
        "another operation's plaintext": (REGISTER, recover),
        "not JSON": (RECOVER_START, b"\xff not json"),
        "duplicate keys": (RECOVER_START, b'{"id": "a", "id": "b"}'),
        "a missing field": (RECOVER_START, _without(raw, "credential_request")),
        "a field of the wrong type": (RECOVER_START, _with(raw, user=7)),
        "bytes that are not base64": (RECOVER_START, _with(raw, credential_request="%%%")),
        "an unsigned authorization's missing field": (
            RECOVER_START,
            _with(raw, authorization={"fleet": "f1"}),
        ),
        "a short answer key": (RECOVER_START, _with(raw, answer_key="c2hvcnQ=")),
    }
    for name, (op, data) in defects.items():
        with pytest.raises(UnreadableRequest):
            parse_request(op, data)
            pytest.fail(f"{name} was parsed")


def _without(raw: dict, field: str) -> bytes:
    return json.dumps({k: v for k, v in raw.items() if k != field}).encode()


def _with(raw: dict, **fields: object) -> bytes:
    return json.dumps({**raw, **fields}).encode()


# -- answers -------------------------------------------------------------------------------


def test_answers_are_padded_to_one_length_whatever_they_say():
    key = os.urandom(32)
    outcomes = [
        Outcome(status="ok"),
        Outcome(status="budget_exhausted", reason="the user's guesses are used up"),
        Outcome(status="ok", response=bytes(320), login=os.urandom(700), attempt=3, remaining=7),
        Outcome(status="ok", secret=os.urandom(1200), generation=4),
    ]
    sealed = [seal_answer(key, "01REQ", o) for o in outcomes]
    assert {len(s) for s in sealed} == {12 + ANSWER_BYTES + 16}
    assert [open_answer(key, "01REQ", s) for s in sealed] == outcomes
    with pytest.raises(VaultError, match="longer than the padded length"):
        seal_answer(key, "01REQ", Outcome(status="ok", secret=bytes(ANSWER_BYTES)))


def test_an_answer_opens_only_with_its_key_and_request_id_and_untampered():
    key = os.urandom(32)
    sealed = seal_answer(key, "01REQ", Outcome(status="ok", secret=b"s"))
    assert open_answer(key, "01REQ", sealed).secret == b"s"
    tampered = [
        (key, "01OTHER", sealed),
        (os.urandom(32), "01REQ", sealed),
        (key, "01REQ", sealed[:-1] + bytes([sealed[-1] ^ 1])),
        (key, "01REQ", sealed[:5] + bytes([sealed[5] ^ 1]) + sealed[6:]),  # the nonce
        (key, "01REQ", sealed[:40]),
        (key, "01REQ", b""),
    ]
    for answer_key, request_id, data in tampered:
        with pytest.raises(UnreadableAnswer):
            open_answer(answer_key, request_id, data)


def test_an_answer_whose_plaintext_is_not_an_outcome_is_unreadable():
    key, nonce = os.urandom(32), os.urandom(12)
    aad = b"hsmfleet/v1/vault/answer\n01REQ"
    for plain in (b"not json", b'{"status": 1}', b'{"reason": "no status"}'):
        sealed = nonce + AESGCM(key).encrypt(nonce, plain, aad)
        with pytest.raises(UnreadableAnswer):
            open_answer(key, "01REQ", sealed)


def test_a_released_secret_opens_only_for_its_login_fleet_user_and_request():
    session = os.urandom(64)
    sealed = seal_release(session, "f1", "alice", "01FIN", b"the secret")
    assert open_release(session, "f1", "alice", "01FIN", sealed) == b"the secret"
    for args in (
        (os.urandom(64), "f1", "alice", "01FIN"),
        (session, "f2", "alice", "01FIN"),
        (session, "f1", "bob", "01FIN"),
        (session, "f1", "alice", "01OTHER"),
    ):
        with pytest.raises(UnreadableAnswer):
            open_release(*args, sealed)
    with pytest.raises(UnreadableAnswer):
        open_release(session, "f1", "alice", "01FIN", sealed[:-1] + bytes([sealed[-1] ^ 1]))


def test_outcomes_become_typed_errors():
    wrong = outcome_error(Outcome(status="wrong_guess", reason="wrong guess", remaining=3))
    assert isinstance(wrong, WrongGuess) and wrong.remaining == 3
    assert isinstance(outcome_error(Outcome(status="budget_exhausted")), BudgetExhausted)
    for kind, cls in ERRORS.items():
        error = outcome_error(Outcome(status=kind, reason="why"))
        assert type(error) is cls and error.kind == kind and str(error).startswith("why")
    unknown = outcome_error(Outcome(status="unauthorized", reason="not signed by the authority"))
    assert type(unknown) is VaultError and unknown.kind == "unauthorized"
    assert VaultError.kind == "vault"  # the member's kind is the instance's, not the class's


def test_error_kinds_are_distinct():
    assert len({cls.kind for cls in ERRORS.values()}) == len(ERRORS)
    assert all(cls.kind == kind for kind, cls in ERRORS.items())


# -- authorizations ------------------------------------------------------------------------


def check(auth: Authorization, *, key=AUTHORITY.public_key, alg=ED25519, **expect: object):
    wanted = {
        "fleet": "f1",
        "user": "alice",
        "ops": (RECOVER,),
        "request": "01REQ",
        "now_ms": NOW,
        **expect,
    }
    auth.check(alg, key, **wanted)  # type: ignore[arg-type]


def signed(**fields: object) -> Authorization:
    """An authorization with ``fields`` set, signed by the authority all the same."""
    unsigned = replace(authorization(), **fields, sig=b"")
    return replace(unsigned, sig=AUTHORITY.sign(unsigned.signing_bytes()))


def test_an_authorization_lets_its_user_make_its_request_until_it_expires():
    auth = authorization()
    check(auth)
    check(auth, ops=(REGISTER_KIND, RECOVER))
    check(auth, now_ms=NOW + AccountAuthority(AUTHORITY).lifetime_ms - 1)
    check(auth, now_ms=NOW - SKEW_MS)  # the authority's clock may run a little ahead
    assert Authorization.from_json(auth.to_json()) == auth


def test_every_defect_of_an_authorization_is_refused():
    auth = authorization()
    other = Ed25519Signer.from_seed(bytes(32))
    refused = {
        "no signature": (replace(auth, sig=b""), {}),
        "another authority's signature": (
            AccountAuthority(other).authorize("f1", "alice", RECOVER, "01REQ", NOW),
            {},
        ),
        "a changed field": (replace(auth, expires=format_time(NOW + MAX_LIFETIME_MS)), {}),
        "another signature algorithm": (auth, {"alg": "ecdsa-p256-sha256"}),
        "an unknown algorithm": (auth, {"alg": "rsa"}),
        "another key": (auth, {"key": other.public_key}),
        "another user": (auth, {"user": "bob"}),
        "another fleet": (auth, {"fleet": "f2"}),
        "another operation": (auth, {"ops": (REGISTER_KIND, REPLACE)}),
        "another request": (auth, {"request": "01OTHER"}),
        "times that are not RFC 3339": (signed(issued="yesterday"), {}),
    }
    for name, (bad, expect) in refused.items():
        with pytest.raises(AuthorizationRefused) as error:
            check(bad, **expect)
        assert type(error.value) is AuthorizationRefused, name
        assert error.value.kind == "unauthorized", name


def test_expired_future_and_overlong_authorizations_are_refused_as_expired():
    lifetime = AccountAuthority(AUTHORITY).lifetime_ms
    cases = {
        "expired": (authorization(), NOW + lifetime),
        "issued in the future past the skew": (authorization(), NOW - SKEW_MS - 1),
        "longer-lived than allowed": (
            signed(expires=format_time(NOW + MAX_LIFETIME_MS + 1)),
            NOW,
        ),
    }
    for name, (auth, now) in cases.items():
        with pytest.raises(AuthorizationExpired) as error:
            check(auth, now_ms=now)
        assert error.value.kind == "authorization_expired", name
    assert issubclass(AuthorizationExpired, AuthorizationRefused)


def test_the_authority_makes_only_short_lived_authorizations_of_known_operations():
    with pytest.raises(ValueError):
        AccountAuthority(AUTHORITY, lifetime_ms=MAX_LIFETIME_MS + 1)
    with pytest.raises(ValueError):
        AccountAuthority(AUTHORITY, lifetime_ms=0)
    with pytest.raises(ValueError):
        AccountAuthority(AUTHORITY).authorize("f1", "alice", "delete", "01REQ", NOW)
    longest = AccountAuthority(AUTHORITY, lifetime_ms=MAX_LIFETIME_MS)
    check(
        longest.authorize("f1", "alice", RECOVER, "01REQ", NOW),
        now_ms=NOW + MAX_LIFETIME_MS - 1,
    )


def test_the_signed_bytes_are_domain_separated_and_leave_out_the_signature():
    auth = authorization()
    data = auth.signing_bytes()
    assert data.startswith(b"hsmfleet/v1/vault-authorization\n")
    assert b'"sig"' not in data and replace(auth, sig=b"x").signing_bytes() == data


# -- policy --------------------------------------------------------------------------------


def policy(**fields: object) -> VaultPolicy:
    values = {
        "limit": 10,
        "authority_alg": ED25519,
        "authority_key": AUTHORITY.public_key,
        "replace_interval_s": 86400,
        **fields,
    }
    return VaultPolicy(**values)  # type: ignore[arg-type]


def test_a_policy_holds_its_bounds():
    for fields in (
        {"limit": 1},
        {"limit": 100},
        {"replace_interval_s": 0},
        {"replace_interval_s": 10 * 365 * 86400},
        {"login_ttl_s": 10},
        {"login_ttl_s": 3600},
        {"authority_key": bytes(256)},
    ):
        policy(**fields)
    for fields in (
        {"limit": 0},
        {"limit": 101},
        {"replace_interval_s": -1},
        {"replace_interval_s": 10 * 365 * 86400 + 1},
        {"login_ttl_s": 9},
        {"login_ttl_s": 3601},
        {"authority_key": b""},
        {"authority_key": bytes(257)},
    ):
        with pytest.raises(VaultPolicyError):
            policy(**fields)
            pytest.fail(f"{fields} was allowed")


def test_a_policy_round_trips_and_its_digest_covers_every_field():
    base = policy()
    assert VaultPolicy.from_json(base.to_json()) == base
    assert base.login_ttl_s == 120
    variants = [
        policy(limit=11),
        policy(authority_alg="ecdsa-p256-sha256"),
        policy(authority_key=bytes(32)),
        policy(replace_interval_s=1),
        policy(login_ttl_s=60),
    ]
    digests = {base.digest, *(v.digest for v in variants)}
    assert len(digests) == 1 + len(variants)
