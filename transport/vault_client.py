"""The client of a fleet's vault: register a PIN-guarded secret, recover it with the PIN.

A :class:`VaultClient` is made from a validation bundle that passed :func:`messages.verify.
verify_bundle` (the only way to get a :class:`messages.verify.Accepted`): it seals its requests
to the bundle's ``vault-kem`` key and checks that the OPAQUE server key the fleet answers with
is the bundle's ``vault-opaque`` key. The PIN never leaves the client: it runs OPAQUE (RFC 9807,
through opaque-ke) with the fleet's HSMs, and encrypts the secret itself under a key derived
from OPAQUE's export key before it is sent, so the fleet stores only ciphertext that a login with
the right PIN gives back. Each request carries an authorization from the account authority,
which ``authorize(user, op, request_id)`` obtains. Errors are the typed
:class:`messages.vault.VaultError` kinds.
"""

from __future__ import annotations

import asyncio
import inspect
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

import opaque_ke_py as opaque
from nats.aio.client import Client as NATS

from messages import aead, subjects
from messages.artifact import FleetKey
from messages.envelope import Envelope
from messages.errors import HsmfleetError
from messages.ids import format_time, id_time_ms
from messages.signing import TrustStore, key_id
from messages.vault import (
    ANSWER_KEY_BYTES,
    ERRORS,
    KE2_BYTES,
    MAX_SECRET_BYTES,
    OK,
    RECOVER_FINISH,
    RECOVER_START,
    REGISTER,
    REGISTER_START,
    REGISTRATION_RESPONSE_BYTES,
    SERVER_KEY,
    MalformedOpaque,
    Outcome,
    PinProof,
    Plaintext,
    RecoverFinish,
    RecoverStart,
    Register,
    RegisterStart,
    UnreadableAnswer,
    VaultAnswer,
    VaultRequest,
    WrongGuess,
    kem_public_key,
    open_answer,
    open_release,
    outcome_error,
    seal_request,
)
from messages.vault_authorization import (
    RECOVER,
    REPLACE,
    Authorization,
    AuthorizationExpired,
    AuthorizationRefused,
)
from messages.vault_authorization import REGISTER as REGISTER_KIND
from messages.vault_policy import KEM_ROLE, OPAQUE_ROLE, VaultError
from messages.verify import Accepted
from transport.bus import RequestRejected, request
from transport.gate import Gate
from transport.outbox import IdSource, Outbox

# What a member refuses before it opens a request comes back as a bus refusal of this kind.
_REFUSALS: dict[str, type[HsmfleetError]] = {
    **ERRORS,
    AuthorizationRefused.kind: AuthorizationRefused,
    AuthorizationExpired.kind: AuthorizationExpired,
}

Authorize = Callable[[str, str, str], Authorization | Awaitable[Authorization]]
"""``authorize(user, op, request_id)``: the account authority's authorization for one request."""

_SECRET_INFO = b"hsmfleet/v1/vault/secret"


class BundleWithoutVault(VaultError):
    """The validation bundle lists no usable vault key (role ``vault-kem`` or ``vault-opaque``)."""

    kind = "bundle_without_vault"


@dataclass(frozen=True)
class VaultKeysInForce:
    """A fleet's vault keys a client uses: the key it seals requests to and the OPAQUE server
    key, as a verified validation bundle lists them (:meth:`of`)."""

    fleet: str
    kem: FleetKey
    server: FleetKey

    @classmethod
    def of(cls, bundle: Accepted, now_ms: int) -> VaultKeysInForce:
        """The current vault keys of a bundle that passed :func:`messages.verify.verify_bundle`;
        raises :class:`BundleWithoutVault`."""
        artifact = bundle.artifact
        usable = {k.role: k for k in artifact.keys_usable_at(now_ms) if k.legacy_until is None}
        if KEM_ROLE not in usable or OPAQUE_ROLE not in usable:
            raise BundleWithoutVault("the bundle lists no vault keys", fleet=artifact.fleet)
        return cls(artifact.fleet, usable[KEM_ROLE], usable[OPAQUE_ROLE])


@dataclass(frozen=True)
class Recovered:
    """What a recovery gives back: the secret, the attempt it spent, and how many times the
    record was replaced without its PIN (a change since the last recovery is worth telling the
    user about). ``moved``: the registration was of an older key epoch and was made again
    under the bundle's (``generation`` is the new one); ``move_failed`` holds the kind of the
    refusal when that failed (the secret is returned all the same; the next recovery tries
    again)."""

    secret: bytes
    attempt: int
    replaced: int
    generation: int
    moved: bool = False
    move_failed: str = ""


class VaultClient:
    """Vault operations on a fleet whose vault keys ``keys`` are (normally from a verified
    validation bundle: :meth:`from_bundle`)."""

    def __init__(
        self,
        nc: NATS,
        keys: VaultKeysInForce,
        authorize: Authorize,
        *,
        timeout: float = 10.0,
        source: str = "vault-client",
    ) -> None:
        self.nc = nc
        self.fleet = subjects.token(keys.fleet, "fleet id")
        self.kem_key = kem_public_key(keys.kem.public_key)
        self.kem_id = key_id(keys.kem.alg, keys.kem.public_key)
        self.server_key = keys.server.public_key
        self.authorize = authorize
        self.timeout = timeout
        self.ids = IdSource()
        self.outbox = Outbox(source, ids=self.ids)
        self.gate = Gate(TrustStore())

    @classmethod
    def from_bundle(
        cls, nc: NATS, bundle: Accepted, authorize: Authorize, *, now_ms: int, **options: Any
    ) -> VaultClient:
        """A client of the fleet a verified validation bundle describes, with the vault keys it
        lists in force at ``now_ms``; raises :class:`BundleWithoutVault`."""
        return cls(nc, VaultKeysInForce.of(bundle, now_ms), authorize, **options)

    async def register(
        self,
        user: str,
        pin: bytes,
        secret: bytes,
        *,
        current_pin: bytes | None = None,
        replace_record: bool = False,
    ) -> int:
        """Register ``secret`` under ``pin`` for ``user``; returns the record's generation.

        Over an existing registration give ``current_pin`` (the PIN in force: one login proves
        it, and spends one attempt like any other), or ``replace_record`` for a user who forgot
        it (the account authority must allow a replacement; the fleet rate-limits them and the
        next recovery reports it). Raises :class:`messages.vault.RegistrationExists` when
        neither is given over a live record.
        """
        subjects.token(user, "user")
        if not 0 < len(secret) <= MAX_SECRET_BYTES - 64:
            raise VaultError(f"a secret is 1 to {MAX_SECRET_BYTES - 64} bytes", length=len(secret))
        proof = None
        if current_pin is not None:
            proof = (await self._login(user, current_pin))[0]
        registration = self.ids.new()
        kind = REPLACE if replace_record else REGISTER_KIND
        authorization = await self._authorization(user, kind, registration)
        start = await asyncio.to_thread(opaque.client_registration_start, pin)
        answer_key = os.urandom(ANSWER_KEY_BYTES)
        begun = await self._call(
            REGISTER_START,
            RegisterStart(
                id=registration,
                user=user,
                answer_key=answer_key,
                authorization=authorization,
                registration_request=start.get_message(),
            ),
        )
        response = _opaque_field(
            begun.response, "registration response", REGISTRATION_RESPONSE_BYTES
        )
        if response[SERVER_KEY] != self.server_key:
            raise MalformedOpaque(
                "the fleet answered with another OPAQUE server key than the bundle's"
            )
        finish = await asyncio.to_thread(_finish_registration, pin, start.get_state(), response)
        sealed = _seal_secret(finish.get_export_key(), self.fleet, user, secret)
        outcome = await self._call(
            REGISTER,
            Register(
                id=self.ids.new(),
                user=user,
                answer_key=os.urandom(ANSWER_KEY_BYTES),
                authorization=authorization,
                registration=registration,
                upload=finish.get_message(),
                secret=sealed,
                proof=proof,
            ),
        )
        return outcome.generation or 0

    async def recover(self, user: str, pin: bytes) -> Recovered:
        """The secret ``user`` registered, if ``pin`` is the PIN: one attempt of the user's
        budget, spent before the fleet answers.

        A registration made with another key epoch than the bundle's (the fleet rotated keys
        since) is made again under the bundle's after the recovery (one more login and
        registration), while the old epoch's keys are still held. Raises
        :class:`messages.vault.WrongGuess` (with ``remaining``),
        :class:`messages.vault.NoRecord`, :class:`messages.vault.BudgetExhausted`, or
        :class:`messages.vault.VaultUnavailable`.
        """
        subjects.token(user, "user")
        proof, session_key, export_key, started = await self._login(user, pin)
        finish_id = self.ids.new()
        outcome = await self._call(
            RECOVER_FINISH,
            RecoverFinish(
                id=finish_id,
                user=user,
                answer_key=os.urandom(ANSWER_KEY_BYTES),
                login=proof.login,
                finalization=proof.finalization,
            ),
        )
        if outcome.secret is None:
            raise UnreadableAnswer("a finished login carries no secret", user=user)
        sealed = open_release(session_key, self.fleet, user, finish_id, outcome.secret)
        secret = _open_secret(export_key, self.fleet, user, sealed)
        recovered = Recovered(
            secret=secret,
            attempt=started.attempt or 0,
            replaced=started.replaced or 0,
            generation=outcome.generation or 0,
        )
        if not started.legacy:
            return recovered
        try:
            generation = await self.register(user, pin, secret, current_pin=pin)
        except VaultError as exc:
            return replace(recovered, move_failed=exc.kind)
        return replace(recovered, generation=generation, moved=True)

    async def _login(self, user: str, pin: bytes) -> tuple[PinProof, bytes, bytes, Outcome]:
        """One guess: OPAQUE's login up to the client's final message. Returns the proof to
        send, the session and export keys, and the start's answer; raises
        :class:`WrongGuess` when the PIN is not the one registered."""
        start_id = self.ids.new()
        authorization = await self._authorization(user, RECOVER, start_id)
        start = await asyncio.to_thread(opaque.client_login_start, pin)
        started = await self._call(
            RECOVER_START,
            RecoverStart(
                id=start_id,
                user=user,
                answer_key=os.urandom(ANSWER_KEY_BYTES),
                authorization=authorization,
                credential_request=start.get_message(),
            ),
        )
        response = _opaque_field(started.response, "login response", KE2_BYTES)
        if started.login is None:
            raise UnreadableAnswer("a started login carries no login state", user=user)
        try:
            finish = await asyncio.to_thread(
                opaque.client_login_finish, pin, start.get_state(), response
            )
        except ValueError:
            raise WrongGuess("wrong PIN", remaining=started.remaining) from None
        proof = PinProof(login=started.login, finalization=finish.get_message())
        return proof, finish.get_session_key(), finish.get_export_key(), started

    async def _authorization(self, user: str, op: str, request_id: str) -> Authorization:
        got = self.authorize(user, op, request_id)
        return await got if inspect.isawaitable(got) else got

    async def _call(self, op: str, plain: Plaintext) -> Outcome:
        sealed = seal_request(self.kem_key, self.fleet, op, plain)
        env = self._envelope(plain.id, VaultRequest(key=self.kem_id, sealed=sealed))
        try:
            received = await request(
                self.nc, subjects.vault(self.fleet, op), env, self.gate, None, self.timeout
            )
        except RequestRejected as exc:  # refused before it was opened: the kind is the error
            cls = _REFUSALS.get(str(exc.detail.get("kind")))
            if cls is None:
                raise
            raise cls(exc.args[0], subject=exc.detail.get("subject")) from None
        if not isinstance(received.body, VaultAnswer):
            raise UnreadableAnswer("the answer is not a vault answer", type=received.envelope.type)
        outcome = open_answer(plain.answer_key, plain.id, received.body.sealed)
        if outcome.status != OK:
            raise outcome_error(outcome)
        return outcome

    def _envelope(self, request_id: str, body: VaultRequest) -> Envelope:
        """The request's envelope under the id sealed inside it (members check they agree);
        unsigned, so the id can be set after the fact."""
        env = self.outbox.envelope(body)
        return replace(env, id=request_id, at=format_time(id_time_ms(request_id)))


def _opaque_field(value: bytes | None, what: str, size: int) -> bytes:
    if value is None:
        raise UnreadableAnswer(f"the answer carries no {what}")
    if len(value) != size:
        raise MalformedOpaque(f"a {what} is {size} bytes", got=len(value))
    return value


def _finish_registration(pin: bytes, state: bytes, response: bytes) -> object:
    try:
        return opaque.client_registration_finish(pin, state, response)
    except ValueError as exc:
        raise MalformedOpaque(f"the registration response does not decode: {exc}") from None


def _secret_aad(fleet: str, user: str) -> bytes:
    return f"hsmfleet/v1/vault/secret\n{fleet}\n{user}".encode()


def _seal_secret(export_key: bytes, fleet: str, user: str, secret: bytes) -> bytes:
    return aead.seal(aead.derive_key(export_key, _SECRET_INFO), secret, _secret_aad(fleet, user))


def _open_secret(export_key: bytes, fleet: str, user: str, sealed: bytes) -> bytes:
    try:
        key = aead.derive_key(export_key, _SECRET_INFO)
        return aead.open_sealed(key, sealed, _secret_aad(fleet, user))
    except aead.SealedDataError:
        raise UnreadableAnswer("the stored secret does not open with this login") from None
