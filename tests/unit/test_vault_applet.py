"""The vault applet decides every change of a record: what an honest member's HSM computes,
accepts, answers and refuses, with the real crypto (HPKE, OPAQUE through opaque-ke, AES-GCM in
software HSMs) and real signed acceptances, but no network."""

from __future__ import annotations

import base64
from dataclasses import replace

import pytest

from messages.signing import Ed25519Signer
from messages.vault import (
    BudgetExhausted,
    LoginRefused,
    NoRecord,
    RegistrationExists,
    ReplacementTooSoon,
    ReplayedRequest,
    UnknownVaultKey,
    open_release,
)
from messages.vault_authorization import (
    AccountAuthority,
    AuthorizationExpired,
    AuthorizationRefused,
)
from node.vault import record as records
from node.vault.applet import ATTEMPTED, DESTROYED, REGISTERED, SUCCEEDED, TransitionRefused
from node.vault.record import SealedBlob
from tests.unit.vault_applets import (
    FLEET,
    Applets,
    Refused,
    finish_request,
    justify,
    login_request,
    opaque_finish,
    register_requests,
)

KEY = records.record_key("alice")
PIN = b"1234"


@pytest.fixture
def bed(tmp_path):
    return Applets(tmp_path)


def registered(bed, user="alice", pin=PIN, secret=b"secret"):
    _, request, _ = register_requests(bed, user, pin, secret)
    return bed.change("m1", REGISTERED, records.record_key(user), None, request)


def attempt(bed, pred, pin, member="m2", user="alice"):
    """A login started and committed on ``pred``, answered by ``member``: (commit, login,
    the answer)."""
    login = login_request(bed, user, pin)
    committed = bed.change(member, ATTEMPTED, records.record_key(user), pred, login.request, member)
    sealed = bed.vaults[member].evaluate(
        login.request, committed.value, committed.ballot, committed.votes
    )
    return committed, login, bed.opened(sealed, login.plain)


def test_a_registered_secret_comes_back_only_after_a_committed_login(bed):
    first = registered(bed)
    committed, login, answer = attempt(bed, first, PIN)
    assert (answer.attempt, answer.remaining) == (1, 2)
    finished = opaque_finish(PIN, login, answer.response)
    request, plain = finish_request(bed, "alice", answer.login, finished.get_message())
    success = bed.change("m3", SUCCEEDED, KEY, committed, request)
    sealed = bed.vaults["m3"].release(request, success.value, success.ballot, success.votes)
    released = bed.opened(sealed, plain)
    secret = open_release(finished.get_session_key(), FLEET, "alice", plain.id, released.secret)
    assert secret == b"secret"
    record = records.decode(success.value)
    assert (record.generation, record.attempts, record.cleared) == (1, 1, 1)


def test_a_wrong_pin_is_found_by_the_client_and_the_attempt_stays_spent(bed):
    first = registered(bed)
    committed, login, answer = attempt(bed, first, b"0000")
    with pytest.raises(ValueError):
        opaque_finish(b"0000", login, answer.response)
    assert records.decode(committed.value).failures == 1


def test_hosts_hold_only_ciphertext_of_records(bed):
    first = registered(bed, secret=b"the backup key")
    record = records.decode(first.value)
    assert record.sealed is not None
    sealed = SealedBlob.decode(record.sealed).sealed
    for data in (first.value, record.sealed, sealed):  # bytes travel base64-encoded in JSON
        for needle in (b"the backup key", PIN):
            assert needle not in data and base64.b64encode(needle) not in data


def test_a_member_refuses_a_reset_of_the_attempt_count(bed):
    first = registered(bed)
    second, *_ = attempt(bed, first, b"0000")
    third, *_ = attempt(bed, second, b"1111", member="m3")
    record = records.decode(third.value)
    assert record.failures == 2
    # A rogue proposer sends the count cleared: as "unchanged", or with a real change's witness.
    forged = records.encode(records.replace_record(record, cleared=record.attempts))
    for justification in (justify(third, None), third.justification):
        with pytest.raises(Refused) as refused:
            bed.commit(KEY, forged, justification, voters=["m2", "m3"])
        assert refused.value.kind == TransitionRefused.kind


def test_a_member_refuses_a_value_built_on_an_older_predecessor(bed):
    first = registered(bed)
    second, *_ = attempt(bed, first, b"0000")
    login = login_request(bed, "alice", b"1111")
    stale, witness = bed.vaults["m1"].propose(ATTEMPTED, KEY, first.value, login.request, "m1")
    holding = {m: (second.ballot, second.value) for m in ("m2", "m3")}
    with pytest.raises(Refused) as refused:
        bed.commit(KEY, stale, justify(first, witness), voters=["m2", "m3"], holding=holding)
    assert "later value" in str(refused.value)


def test_a_commit_proof_signed_by_too_few_members_proves_nothing(bed):
    first = registered(bed)
    thin = replace(first, votes=first.votes[:1])
    login = login_request(bed, "alice", b"0000")
    value, witness = bed.vaults["m1"].propose(ATTEMPTED, KEY, first.value, login.request, "m1")
    with pytest.raises(Refused) as refused:
        bed.commit(KEY, value, justify(thin, witness))
    assert refused.value.kind == "bad_proof"


def test_requests_without_the_users_authorization_are_refused(bed):
    first = registered(bed)
    forger = AccountAuthority(Ed25519Signer.generate())
    cases = {
        "forged": lambda start: forger.authorize(FLEET, "alice", "recover", start, bed.clock()),
        "other user": lambda start: bed.authorize("bob", "recover", start),
        "other op": lambda start: bed.authorize("alice", "register", start),
        "other request": lambda start: bed.authorize("alice", "recover", bed.ids.new()),
    }
    for name, make in cases.items():
        start = bed.ids.new()
        login = login_request(bed, "alice", PIN, authorization=make(start))
        login = replace(login, plain=replace(login.plain, id=start))
        request = bed.request("recover-start", login.plain)
        with pytest.raises(AuthorizationRefused):
            bed.vaults["m1"].propose(ATTEMPTED, KEY, first.value, request, "m1")
        assert records.decode(first.value).attempts == 0, name


def test_an_expired_authorization_is_refused(bed):
    first = registered(bed)
    start = bed.ids.new()
    authorization = bed.authorize("alice", "recover", start, lifetime_ms=1000)
    bed.clock.now_ms += 2000
    login = login_request(bed, "alice", PIN, authorization=authorization)
    login = replace(login, plain=replace(login.plain, id=start))
    with pytest.raises(AuthorizationExpired):
        bed.vaults["m1"].propose(
            ATTEMPTED, KEY, first.value, bed.request("recover-start", login.plain), "m1"
        )


def test_a_replayed_start_spends_nothing(bed):
    first = registered(bed)
    committed, login, _ = attempt(bed, first, PIN)
    with pytest.raises(ReplayedRequest):
        bed.vaults["m1"].propose(ATTEMPTED, KEY, committed.value, login.request, "m1")


def test_an_attempt_is_answered_once(bed):
    first = registered(bed)
    committed, login, _ = attempt(bed, first, PIN)
    with pytest.raises(ReplayedRequest):
        bed.vaults["m2"].evaluate(login.request, committed.value, committed.ballot, committed.votes)
    with pytest.raises(TransitionRefused):  # nor by a member it does not name
        bed.vaults["m3"].evaluate(login.request, committed.value, committed.ballot, committed.votes)


def test_registering_over_a_live_record_needs_its_pin_or_a_replacement(bed):
    first = registered(bed)
    _, request, _ = register_requests(bed, "alice", b"9999", b"mine now")
    with pytest.raises(RegistrationExists):
        bed.vaults["m1"].propose(REGISTERED, KEY, first.value, request, "")
    committed, login, answer = attempt(bed, first, PIN)
    proof = _proof(bed, login, answer, PIN)
    _, request, _ = register_requests(bed, "alice", b"5555", b"new secret", proof=proof)
    again = bed.change("m1", REGISTERED, KEY, committed, request)
    record = records.decode(again.value)
    assert (record.generation, record.attempts, record.cleared, record.replaced) == (2, 1, 1, 0)


def _proof(bed, login, answer, pin):
    from messages.vault import PinProof

    finished = opaque_finish(pin, login, answer.response)
    return PinProof(login=answer.login, finalization=finished.get_message())


def test_replacements_are_rate_limited_counted_and_start_a_fresh_budget(bed):
    first = registered(bed)
    spent, *_ = attempt(bed, first, b"0000")
    _, request, _ = register_requests(bed, "alice", b"2222", b"s2", op="replace")
    replaced = bed.change("m1", REGISTERED, KEY, spent, request)
    record = records.decode(replaced.value)
    assert (record.replaced, record.failures, record.generation) == (1, 0, 2)
    _, request, _ = register_requests(bed, "alice", b"3333", b"s3", op="replace")
    with pytest.raises(ReplacementTooSoon):
        bed.vaults["m1"].propose(REGISTERED, KEY, replaced.value, request, "")
    bed.clock.now_ms += bed.replace_interval_s * 1000
    _, request, _ = register_requests(bed, "alice", b"3333", b"s3", op="replace")
    again = bed.change("m1", REGISTERED, KEY, replaced, request)
    assert records.decode(again.value).replaced == 2


def test_a_finished_login_counts_once(bed):
    first = registered(bed)
    committed, login, answer = attempt(bed, first, PIN)
    finished = opaque_finish(PIN, login, answer.response)
    request, _ = finish_request(bed, "alice", answer.login, finished.get_message())
    success = bed.change("m3", SUCCEEDED, KEY, committed, request)
    again, _ = finish_request(bed, "alice", answer.login, finished.get_message())
    with pytest.raises(ReplayedRequest):
        bed.vaults["m1"].propose(SUCCEEDED, KEY, success.value, again, "")


def test_a_login_of_another_user_proves_nothing(bed):
    first = registered(bed)
    bob = registered(bed, user="bob", pin=b"7777")
    committed, login, answer = attempt(bed, bob, b"7777", user="bob")
    finished = opaque_finish(b"7777", login, answer.response)
    request, _ = finish_request(bed, "alice", answer.login, finished.get_message())
    with pytest.raises(LoginRefused):
        bed.vaults["m1"].propose(SUCCEEDED, KEY, first.value, request, "")
    del committed


def test_past_the_limit_no_login_starts_and_the_record_is_destroyed_later(bed):
    pred = registered(bed)
    for guess in (b"0000", b"1111", b"2222"):
        pred, *_ = attempt(bed, pred, guess)
    login = login_request(bed, "alice", PIN)
    with pytest.raises(BudgetExhausted):
        bed.vaults["m1"].propose(ATTEMPTED, KEY, pred.value, login.request, "m1")
    with pytest.raises(BudgetExhausted):  # the last login may still be finished
        bed.vaults["m1"].propose(DESTROYED, KEY, pred.value, login.request, "m1")
    bed.clock.now_ms += bed.policy.login_ttl_s * 1000
    login = login_request(bed, "alice", PIN)
    destroyed = bed.change("m1", DESTROYED, KEY, pred, login.request)
    assert records.decode(destroyed.value).destroyed
    with pytest.raises(BudgetExhausted):
        bed.vaults["m1"].propose(
            ATTEMPTED, KEY, destroyed.value, login_request(bed, "alice", PIN).request, "m1"
        )


def test_a_login_for_an_unknown_user_is_refused(bed):
    login = login_request(bed, "nobody", PIN)
    with pytest.raises(NoRecord):
        bed.vaults["m1"].propose(ATTEMPTED, records.record_key("nobody"), None, login.request, "m1")


def test_a_request_sealed_to_an_unknown_key_is_refused(bed):
    login = login_request(bed, "alice", PIN)
    with pytest.raises(UnknownVaultKey):
        bed.vaults["m1"].peek("recover-start", replace(login.request, key="0" * 16))
