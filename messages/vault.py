"""Vault operations (DESIGN 5.5, subjects ``fleet.vault.<fleet_id>.<op>``): register, recover.

A client seals each request to the fleet's session key with HPKE (RFC 9180, base mode,
DHKEM(P-256, HKDF-SHA256), HKDF-SHA256, AES-128-GCM), with ``info`` naming the fleet and the
operation, so hosts and relays between the client and a member's keys learn nothing. The sealed
request carries a fresh 32-byte answer key; the member seals its answer to the client under it
with AES-256-GCM, bound to the request id (a secret inside the HPKE-sealed request gives the
same guarantee as RFC 9180's exported secrets, which the ``cryptography`` one-shot API lacks).

The envelope of a request is not signed (clients are anonymous); everything that matters is in
the sealed plaintext, including the envelope's id, which members check against the envelope (so
their replay guard sees the id the request was sealed with). A recovery's id is also kept in the
user's replicated record for the freshness window, so a copy of the request replayed to another
member, or after a restart, is refused instead of spending one of the user's guesses.
"""

import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from messages.canonical import canonical, loads_strict
from messages.errors import HsmfleetError, SchemaViolation
from messages.schema import Body, message

REGISTER = "register"
RECOVER = "recover"
OPERATIONS = (REGISTER, RECOVER)
DEFAULT_LIMIT = 10

SUITE = hpke.Suite(hpke.KEM.P256, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_128_GCM)
ANSWER_KEY_BYTES = 32
_NONCE_BYTES = 12


@message
@dataclass(frozen=True)
class VaultRequest(Body):
    """A client's request, HPKE-sealed to the fleet's session key."""

    TYPE = "vault.request"
    sealed: bytes


@message
@dataclass(frozen=True)
class VaultAnswer(Body):
    """A member's answer, sealed under the answer key the request carried."""

    TYPE = "vault.answer"
    sealed: bytes


@dataclass(frozen=True)
class Registration:
    """What a user registers: the PIN that guards the secret, and the secret (a backup key)."""

    pin: bytes
    secret: bytes


@dataclass(frozen=True)
class RegisterRequest(Body):
    """Plaintext of a register request: replaces the user's record, keeps the user's budget."""

    id: str
    user: str
    pin: bytes
    secret: bytes
    answer_key: bytes


@dataclass(frozen=True)
class RecoverRequest(Body):
    """Plaintext of a recover request: one guess at the user's PIN."""

    id: str
    user: str
    guess: bytes
    answer_key: bytes


OK = "ok"


@dataclass(frozen=True)
class Outcome(Body):
    """Plaintext of an answer: ``status`` is ``ok`` or an error kind; ``remaining`` guesses."""

    status: str
    reason: str = ""
    secret: bytes | None = None
    remaining: int | None = None


class VaultError(HsmfleetError):
    """Root of the errors a vault operation reports to its client."""

    kind = "vault"


class WrongGuess(VaultError):
    """The guess was evaluated and is wrong; ``remaining`` guesses are left for the user."""

    kind = "wrong_guess"

    @property
    def remaining(self) -> int | None:
        return self.detail.get("remaining")  # type: ignore[return-value]


class NoRecord(VaultError):
    """The user has no registration."""

    kind = "no_record"


class BudgetExhausted(VaultError):
    """The user's guesses are used up: the record is destroyed and cannot be registered again."""

    kind = "budget_exhausted"


class StaleRegistration(VaultError):
    """A registration older than the record's current one (a replay) was refused."""

    kind = "stale_registration"


class ReplayedRequest(VaultError):
    """The request was already carried out once: a copy of it is never run again."""

    kind = "replayed_request"


class VaultUnavailable(VaultError):
    """The fleet could not commit the operation; ``detail`` says whether an attempt was spent."""

    kind = "vault_unavailable"


class UnreadableRequest(VaultError):
    """The request does not open with the fleet's session key, or its plaintext is malformed."""

    kind = "unreadable_request"


class RegistrationsClosed(VaultError):
    """The fleet is retiring: it takes no new registrations (register on its successor);
    recoveries go on until its keys are destroyed."""

    kind = "registrations_closed"


class UnreadableAnswer(VaultError):
    """The answer does not open with the request's answer key, or is malformed."""

    kind = "unreadable_answer"


ERRORS: dict[str, type[VaultError]] = {
    cls.kind: cls
    for cls in (
        WrongGuess,
        NoRecord,
        BudgetExhausted,
        StaleRegistration,
        ReplayedRequest,
        VaultUnavailable,
        UnreadableRequest,
        RegistrationsClosed,
    )
}


def _info(fleet: str, op: str) -> bytes:
    return f"hsmfleet/v1/vault/{fleet}/{op}".encode()


def _answer_aad(request_id: str) -> bytes:
    return f"hsmfleet/v1/vault/answer\n{request_id}".encode()


def session_public_key(encoded: bytes) -> ec.EllipticCurvePublicKey:
    """The fleet session key from its X9.62 uncompressed encoding (as bundles publish it)."""
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), encoded)
    except ValueError as exc:
        raise VaultError("not a P-256 session key") from exc


def seal_request(session_key: ec.EllipticCurvePublicKey, fleet: str, op: str, plain: Body) -> bytes:
    """HPKE-seal a request's plaintext to the fleet session key for ``op``."""
    return SUITE.encrypt(canonical(plain.to_json()), session_key, info=_info(fleet, op))


def open_request(
    session_key: ec.EllipticCurvePrivateKey, fleet: str, op: str, sealed: bytes
) -> RegisterRequest | RecoverRequest:
    """Open a sealed request for ``op``; any defect is :class:`UnreadableRequest`."""
    kind = {REGISTER: RegisterRequest, RECOVER: RecoverRequest}.get(op)
    if kind is None:
        raise UnreadableRequest("unknown vault operation", op=op)
    try:
        plain = SUITE.decrypt(sealed, session_key, info=_info(fleet, op))
        request = kind.from_json(loads_strict(plain))
    except (InvalidTag, ValueError, SchemaViolation) as exc:
        raise UnreadableRequest(f"request does not open: {type(exc).__name__}") from None
    if len(request.answer_key) != ANSWER_KEY_BYTES:
        raise UnreadableRequest("answer key must be 32 bytes")
    return request


def seal_answer(answer_key: bytes, request_id: str, outcome: Outcome) -> bytes:
    """Seal ``outcome`` for the client that sent request ``request_id``."""
    nonce = os.urandom(_NONCE_BYTES)
    data = canonical(outcome.to_json())
    return nonce + AESGCM(answer_key).encrypt(nonce, data, _answer_aad(request_id))


def open_answer(answer_key: bytes, request_id: str, sealed: bytes) -> Outcome:
    """Open the answer to request ``request_id``; any defect is :class:`UnreadableAnswer`."""
    try:
        nonce, body = sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:]
        plain = AESGCM(answer_key).decrypt(nonce, body, _answer_aad(request_id))
        return Outcome.from_json(loads_strict(plain))
    except (InvalidTag, ValueError, SchemaViolation) as exc:
        raise UnreadableAnswer(f"answer does not open: {type(exc).__name__}") from None


def outcome_error(outcome: Outcome) -> VaultError:
    """The typed error an unsuccessful outcome stands for. A refusal this client has no class
    for (a member's own kind, such as a quorum's ``bad_proof``) is a :class:`VaultError` that
    keeps the member's kind."""
    detail = {} if outcome.remaining is None else {"remaining": outcome.remaining}
    cls = ERRORS.get(outcome.status)
    if cls is not None:
        return cls(outcome.reason or outcome.status, **detail)
    error = VaultError(outcome.reason or outcome.status, **detail)
    error.kind = outcome.status
    return error
