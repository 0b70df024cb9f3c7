"""The vault protocol (subjects ``fleet.vault.<fleet_id>.<op>``): register a PIN-guarded secret,
recover it with the PIN, with OPAQUE (RFC 9807) between the client and the fleet's HSMs so that
the PIN never leaves the client.

Four operations, each one request and one answer (SPEC.md section 10 gives every byte):

- ``register-start``: the client's OPAQUE registration request (a blinded PIN) for a new
  registration id; the HSM applet answers the registration response (OPRF evaluation under that
  registration's own credential identifier, so it says nothing about the record in force);
- ``register``: the registration upload, the user's secret (encrypted by the client under a key
  derived from OPAQUE's export key) and the account authority's authorization; the fleet commits
  the new record. Over an existing record the request also proves the current PIN (a finished
  login) or carries a *replacement* authorization, which the applet rate-limits per user;
- ``recover-start``: one guess: the client's first login message (KE1) and an authorization.
  The fleet commits the incremented attempt count through its quorum *before* the applet answers
  with the server's login response (KE2), so a guess the client can check is always counted;
- ``recover-finish``: the client's final login message (KE3) with the sealed login state it got;
  the applet verifies it, the quorum commits that the attempt succeeded, and the applet releases
  the secret encrypted under the OPAQUE session key. A start never finished stays spent.

Every request is HPKE-sealed (RFC 9180 base mode, DHKEM(P-256, HKDF-SHA256), HKDF-SHA256,
AES-128-GCM) to the fleet's vault key (role ``vault-kem`` in the validation bundle), with
``info`` naming the fleet and the operation; it carries a fresh 32-byte answer key, under which
the member seals its answer (AES-256-GCM, bound to the request id, padded to one length so that
the size does not tell the outcome). The request envelope is unsigned: clients are anonymous to
NATS; what authorizes a request is inside the sealed plaintext.
"""

# No ``from __future__ import annotations``: body field types stay evaluated (see messages.schema).
from dataclasses import dataclass
from typing import cast

from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import ec

from messages import aead
from messages.canonical import canonical, loads_strict
from messages.errors import SchemaViolation
from messages.schema import Body, message
from messages.vault_authorization import Authorization
from messages.vault_policy import VaultError

REGISTER_START = "register-start"
REGISTER = "register"
RECOVER_START = "recover-start"
RECOVER_FINISH = "recover-finish"
OPERATIONS = (REGISTER_START, REGISTER, RECOVER_START, RECOVER_FINISH)


SUITE = hpke.Suite(hpke.KEM.P256, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_128_GCM)
ANSWER_KEY_BYTES = 32
ANSWER_BYTES = 2048
"""Every answer's plaintext is padded to this length (spaces after the JSON)."""
MAX_SECRET_BYTES = 1024
"""The largest stored secret (as the client sealed it): released, sealed once more and encoded,
it still fits an answer of :data:`ANSWER_BYTES`."""

# OPAQUE (RFC 9807) as the fleet runs it: opaque-ke 4 with ristretto255 for the OPRF and the
# 3DH key exchange, SHA-512, Argon2id (m = 19456 KiB, t = 2, p = 1) as the key stretching
# function, the default identities (each side's public key) and an empty context.
REGISTRATION_REQUEST_BYTES = 32
REGISTRATION_RESPONSE_BYTES = 64
"""The evaluated OPRF element, then the server's public key (:data:`SERVER_KEY`)."""
SERVER_KEY = slice(32, 64)
REGISTRATION_UPLOAD_BYTES = 192
KE1_BYTES = 96
KE2_BYTES = 320
KE3_BYTES = 64


def credential_identifier(fleet: str, user: str, registration: str) -> bytes:
    """OPAQUE's credential identifier of one registration: the OPRF key differs per
    registration, so evaluating a new registration's request says nothing about another's."""
    return f"hsmfleet/v1/vault\n{fleet}\n{user}\n{registration}".encode()


@message
@dataclass(frozen=True)
class VaultRequest(Body):
    """A client's request: ``sealed`` to the fleet's vault key whose key id is ``key``."""

    TYPE = "vault.request"
    key: str
    sealed: bytes


@message
@dataclass(frozen=True)
class VaultAnswer(Body):
    """A member's answer, sealed under the answer key the request carried."""

    TYPE = "vault.answer"
    sealed: bytes


@dataclass(frozen=True)
class RegisterStart(Body):
    """Plaintext of ``register-start``: OPAQUE's registration request for registration ``id``."""

    id: str
    user: str
    answer_key: bytes
    authorization: Authorization
    registration_request: bytes


@dataclass(frozen=True)
class PinProof(Body):
    """Proof of the PIN in force: a login state from ``recover-start`` and its final message."""

    login: bytes
    finalization: bytes


@dataclass(frozen=True)
class Register(Body):
    """Plaintext of ``register``: the upload of registration ``registration`` (the id of its
    ``register-start``) and the client-encrypted ``secret``; over a live record ``proof`` proves
    the PIN in force, otherwise the authorization must be a replacement."""

    id: str
    user: str
    answer_key: bytes
    authorization: Authorization
    registration: str
    upload: bytes
    secret: bytes
    proof: PinProof | None = None


@dataclass(frozen=True)
class RecoverStart(Body):
    """Plaintext of ``recover-start``: one guess, OPAQUE's first login message (KE1)."""

    id: str
    user: str
    answer_key: bytes
    authorization: Authorization
    credential_request: bytes


@dataclass(frozen=True)
class RecoverFinish(Body):
    """Plaintext of ``recover-finish``: the login state ``recover-start`` answered and the
    client's final login message (KE3)."""

    id: str
    user: str
    answer_key: bytes
    login: bytes
    finalization: bytes


Plaintext = RegisterStart | Register | RecoverStart | RecoverFinish
PLAINTEXTS: dict[str, type[Body]] = {
    REGISTER_START: RegisterStart,
    REGISTER: Register,
    RECOVER_START: RecoverStart,
    RECOVER_FINISH: RecoverFinish,
}

OK = "ok"


@dataclass(frozen=True)
class Outcome(Body):
    """Plaintext of an answer: ``status`` is ``ok`` or an error kind, and what the operation
    gives back: OPAQUE's ``response`` (registration response or KE2), the sealed ``login``
    state, the ``attempt`` spent and the guesses ``remaining``, the record's ``generation`` and
    how many times it was ``replaced`` without its PIN, whether its registration was made with
    a ``legacy`` key epoch's OPAQUE setup, older than the epoch of the key the request was
    sealed to (register again after this login: that setup is destroyed once the rotation's
    overlap ends), and the ``secret`` (encrypted under the OPAQUE session key)."""

    status: str
    reason: str = ""
    response: bytes | None = None
    login: bytes | None = None
    attempt: int | None = None
    remaining: int | None = None
    generation: int | None = None
    replaced: int | None = None
    legacy: bool | None = None
    secret: bytes | None = None


class WrongGuess(VaultError):
    """The PIN did not match (the client found out from the server's login response); the
    attempt is spent and ``remaining`` guesses are left."""

    kind = "wrong_guess"

    @property
    def remaining(self) -> int | None:
        return self.detail.get("remaining")  # type: ignore[return-value]


class NoRecord(VaultError):
    """The user has no registration."""

    kind = "no_record"


class BudgetExhausted(VaultError):
    """The user's guesses are used up: the record is destroyed (a replacement starts over)."""

    kind = "budget_exhausted"


class StaleRegistration(VaultError):
    """A registration older than the record's current one (a replay) was refused."""

    kind = "stale_registration"


class RegistrationExists(VaultError):
    """The user has a registration: registering again needs the PIN in force or a replacement
    authorization."""

    kind = "registration_exists"


class ReplacementTooSoon(VaultError):
    """The user's record was replaced without its PIN too recently."""

    kind = "replacement_too_soon"


class ReplayedRequest(VaultError):
    """The request (or its login) was already carried out once: a copy is never run again."""

    kind = "replayed_request"


class LoginRefused(VaultError):
    """The final login message does not match its login state (or the state is not one this
    fleet sealed, or is for another user or registration)."""

    kind = "login_refused"


class LoginExpired(VaultError):
    """The login state is older than the policy allows; start again (that attempt is spent)."""

    kind = "login_expired"


class MalformedOpaque(VaultError):
    """An OPAQUE message has the wrong length or does not decode."""

    kind = "malformed_opaque"


class UnknownVaultKey(VaultError):
    """The request is sealed to a vault key this member does not hold (another fleet's, a
    retired epoch's, or none)."""

    kind = "unknown_vault_key"


class RecordKeyDestroyed(VaultError):
    """The record is sealed under a key epoch whose keys are destroyed: it can only be replaced."""

    kind = "record_key_destroyed"


class VaultUnavailable(VaultError):
    """The fleet could not commit the operation; ``detail`` says whether an attempt was spent."""

    kind = "vault_unavailable"


class VaultBusy(VaultError):
    """The member holds as many requests as it may; the client should try again later."""

    kind = "vault_busy"


class UnreadableRequest(VaultError):
    """The request does not open with the fleet's vault key, or its plaintext is malformed."""

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
        RegistrationExists,
        ReplacementTooSoon,
        ReplayedRequest,
        LoginRefused,
        LoginExpired,
        MalformedOpaque,
        UnknownVaultKey,
        RecordKeyDestroyed,
        VaultUnavailable,
        VaultBusy,
        UnreadableRequest,
        RegistrationsClosed,
    )
}


def request_info(fleet: str, op: str) -> bytes:
    """HPKE ``info`` of a request for ``op`` on ``fleet``."""
    return f"hsmfleet/v1/vault/{fleet}/{op}".encode()


def kem_public_key(encoded: bytes) -> ec.EllipticCurvePublicKey:
    """The fleet's vault key from its X9.62 uncompressed encoding (as bundles publish it)."""
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), encoded)
    except ValueError as exc:
        raise VaultError("not a P-256 vault key") from exc


def seal_request(kem_key: ec.EllipticCurvePublicKey, fleet: str, op: str, plain: Body) -> bytes:
    """HPKE-seal a request's plaintext to the fleet's vault key for ``op``."""
    return SUITE.encrypt(canonical(plain.to_json()), kem_key, info=request_info(fleet, op))


def parse_request(op: str, plain: bytes) -> Plaintext:
    """The typed plaintext of an opened ``op`` request; any defect is :class:`UnreadableRequest`."""
    kind = PLAINTEXTS.get(op)
    if kind is None:
        raise UnreadableRequest("unknown vault operation", op=op)
    try:
        request = cast(Plaintext, kind.from_json(loads_strict(plain)))
    except (ValueError, SchemaViolation) as exc:
        raise UnreadableRequest(f"request plaintext is malformed: {exc}") from None
    if len(request.answer_key) != ANSWER_KEY_BYTES:
        raise UnreadableRequest("answer key must be 32 bytes")
    return request


def _answer_aad(request_id: str) -> bytes:
    return f"hsmfleet/v1/vault/answer\n{request_id}".encode()


def seal_answer(answer_key: bytes, request_id: str, outcome: Outcome) -> bytes:
    """Seal ``outcome``, padded to :data:`ANSWER_BYTES`, for the client of ``request_id``."""
    data = canonical(outcome.to_json())
    if len(data) > ANSWER_BYTES:
        raise VaultError("an answer is longer than the padded length", length=len(data))
    padded = data + b" " * (ANSWER_BYTES - len(data))
    return aead.seal(answer_key, padded, _answer_aad(request_id))


def open_answer(answer_key: bytes, request_id: str, sealed: bytes) -> Outcome:
    """Open the answer to request ``request_id``; any defect is :class:`UnreadableAnswer`."""
    try:
        plain = aead.open_sealed(answer_key, sealed, _answer_aad(request_id))
        return Outcome.from_json(loads_strict(plain.rstrip(b" ")))
    except (aead.SealedDataError, ValueError, SchemaViolation) as exc:
        raise UnreadableAnswer(f"answer does not open: {type(exc).__name__}") from None


def _release_key(session_key: bytes) -> bytes:
    return aead.derive_key(session_key, b"hsmfleet/v1/vault/release")


def _release_aad(fleet: str, user: str, request_id: str) -> bytes:
    return f"hsmfleet/v1/vault/release\n{fleet}\n{user}\n{request_id}".encode()


def seal_release(
    session_key: bytes, fleet: str, user: str, request_id: str, secret: bytes
) -> bytes:
    """The user's stored secret for the holder of the OPAQUE ``session_key`` of a finished
    login (``request_id``: the ``recover-finish`` request)."""
    return aead.seal(_release_key(session_key), secret, _release_aad(fleet, user, request_id))


def open_release(
    session_key: bytes, fleet: str, user: str, request_id: str, sealed: bytes
) -> bytes:
    """Open :func:`seal_release`; any defect is :class:`UnreadableAnswer`."""
    try:
        aad = _release_aad(fleet, user, request_id)
        return aead.open_sealed(_release_key(session_key), sealed, aad)
    except aead.SealedDataError as exc:
        raise UnreadableAnswer(f"the released secret does not open: {type(exc).__name__}") from None


def outcome_error(outcome: Outcome) -> VaultError:
    """The typed error an unsuccessful outcome stands for. A refusal this client has no class
    for (a member's own kind, such as ``unauthorized``) is a :class:`VaultError` that keeps the
    member's kind."""
    detail = {} if outcome.remaining is None else {"remaining": outcome.remaining}
    cls = ERRORS.get(outcome.status)
    if cls is not None:
        return cls(outcome.reason or outcome.status, **detail)
    error = VaultError(outcome.reason or outcome.status, **detail)
    error.kind = outcome.status
    return error
