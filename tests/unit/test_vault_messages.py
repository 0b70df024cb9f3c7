"""Vault requests are HPKE-sealed to the fleet, answers sealed to the client; defects are typed."""

import os

import pytest

from messages.vault import (
    RECOVER,
    REGISTER,
    BudgetExhausted,
    Outcome,
    RecoverRequest,
    UnreadableAnswer,
    UnreadableRequest,
    VaultError,
    WrongGuess,
    open_answer,
    open_request,
    outcome_error,
    seal_answer,
    seal_request,
    session_public_key,
)
from node.vault.keys import VaultKeyError, VaultKeys


@pytest.fixture
def keys():
    return VaultKeys.generate()


def request(answer_key=None):
    return RecoverRequest(
        id="01REQ", user="alice", guess=b"1234", answer_key=answer_key or os.urandom(32)
    )


def test_a_request_opens_only_for_its_fleet_and_operation(keys):
    public = session_public_key(keys.session_public)
    sealed = seal_request(public, "f1", RECOVER, request())
    assert open_request(keys.session, "f1", RECOVER, sealed).guess == b"1234"
    for fleet, op in (("f2", RECOVER), ("f1", REGISTER), ("f1", "delete")):
        with pytest.raises(UnreadableRequest):
            open_request(keys.session, fleet, op, sealed)
    with pytest.raises(UnreadableRequest):
        open_request(VaultKeys.generate().session, "f1", RECOVER, sealed)
    with pytest.raises(UnreadableRequest):
        open_request(keys.session, "f1", RECOVER, sealed[:-1] + bytes([sealed[-1] ^ 1]))


def test_a_request_with_a_short_answer_key_is_unreadable(keys):
    public = session_public_key(keys.session_public)
    sealed = seal_request(public, "f1", RECOVER, request(answer_key=b"short"))
    with pytest.raises(UnreadableRequest, match="32 bytes"):
        open_request(keys.session, "f1", RECOVER, sealed)


def test_an_answer_opens_only_with_its_key_and_request_id():
    key = os.urandom(32)
    sealed = seal_answer(key, "01REQ", Outcome(status="ok", secret=b"s"))
    assert open_answer(key, "01REQ", sealed).secret == b"s"
    with pytest.raises(UnreadableAnswer):
        open_answer(key, "01OTHER", sealed)
    with pytest.raises(UnreadableAnswer):
        open_answer(os.urandom(32), "01REQ", sealed)


def test_outcomes_become_typed_errors():
    wrong = outcome_error(Outcome(status="wrong_guess", reason="wrong guess", remaining=3))
    assert isinstance(wrong, WrongGuess) and wrong.remaining == 3
    assert isinstance(outcome_error(Outcome(status="budget_exhausted")), BudgetExhausted)
    unknown = outcome_error(Outcome(status="bad_proof", reason="too few acceptances"))
    assert type(unknown) is VaultError and unknown.kind == "bad_proof"
    assert VaultError.kind == "vault"  # the member's kind is the instance's, not the class's


def test_vault_keys_round_trip_and_refuse_bad_files(tmp_path, keys):
    keys.save(tmp_path / "vault.keys")
    loaded = VaultKeys.load(tmp_path / "vault.keys")
    assert loaded.session_public == keys.session_public and loaded.storage == keys.storage
    assert (tmp_path / "vault.keys").stat().st_mode & 0o777 == 0o600
    (tmp_path / "bad.keys").write_text("{}")
    with pytest.raises(VaultKeyError):
        VaultKeys.load(tmp_path / "bad.keys")
    with pytest.raises(VaultKeyError):
        VaultKeys.load(tmp_path / "missing.keys")
