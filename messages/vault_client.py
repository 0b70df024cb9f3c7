"""The client of a fleet's vault: register a PIN-guarded secret, recover it with a guess.

Only :mod:`messages` is needed: the client knows the fleet id and the fleet's session public
key (from its validation bundle), seals each request to that key and opens the answer with the
key it sent inside the request. Errors are the typed :class:`messages.vault.VaultError` kinds.
"""

from __future__ import annotations

import os
from dataclasses import replace

from nats.aio.client import Client as NATS

from messages import subjects
from messages.bus import request
from messages.envelope import Envelope
from messages.gate import Gate
from messages.ids import IdSource, format_time, id_time_ms
from messages.outbox import Outbox
from messages.signing import TrustStore
from messages.vault import (
    ANSWER_KEY_BYTES,
    OK,
    RECOVER,
    REGISTER,
    Outcome,
    RecoverRequest,
    RegisterRequest,
    Registration,
    UnreadableAnswer,
    VaultAnswer,
    VaultRequest,
    open_answer,
    outcome_error,
    seal_request,
    session_public_key,
)


class VaultClient:
    """Vault operations against fleet ``fleet`` whose session public key is ``session_key``."""

    def __init__(
        self,
        nc: NATS,
        fleet: str,
        session_key: bytes,
        *,
        timeout: float = 5.0,
        source: str = "vault-client",
    ) -> None:
        self.nc = nc
        self.fleet = subjects.token(fleet, "fleet id")
        self.session_key = session_public_key(session_key)
        self.timeout = timeout
        self.ids = IdSource()
        self.outbox = Outbox(source, ids=self.ids)
        self.gate = Gate(TrustStore())

    async def register(self, user: str, record: Registration) -> None:
        """Register ``record`` for ``user``, replacing any earlier registration.

        The user's remaining guesses carry over (the budget is per user); raises
        :class:`messages.vault.BudgetExhausted` when none are left.
        """
        subjects.token(user, "user")
        answer_key = os.urandom(ANSWER_KEY_BYTES)
        plain = RegisterRequest(
            id=self.ids.new(),
            user=user,
            pin=record.pin,
            secret=record.secret,
            answer_key=answer_key,
        )
        await self._call(REGISTER, plain, answer_key)

    async def recover(self, user: str, guess: bytes) -> bytes:
        """The secret ``user`` registered, if ``guess`` is the PIN.

        Raises :class:`messages.vault.WrongGuess` (with ``remaining``),
        :class:`messages.vault.NoRecord`, :class:`messages.vault.BudgetExhausted`, or
        :class:`messages.vault.VaultUnavailable`.
        """
        subjects.token(user, "user")
        answer_key = os.urandom(ANSWER_KEY_BYTES)
        plain = RecoverRequest(id=self.ids.new(), user=user, guess=guess, answer_key=answer_key)
        outcome = await self._call(RECOVER, plain, answer_key)
        if outcome.secret is None:
            raise UnreadableAnswer("a successful recovery carries no secret", user=user)
        return outcome.secret

    async def _call(
        self, op: str, plain: RegisterRequest | RecoverRequest, answer_key: bytes
    ) -> Outcome:
        sealed = seal_request(self.session_key, self.fleet, op, plain)
        env = self._envelope(plain.id, VaultRequest(sealed=sealed))
        received = await request(
            self.nc, subjects.vault(self.fleet, op), env, self.gate, None, self.timeout
        )
        if not isinstance(received.body, VaultAnswer):
            raise UnreadableAnswer("the answer is not a vault answer", type=received.envelope.type)
        outcome = open_answer(answer_key, plain.id, received.body.sealed)
        if outcome.status != OK:
            raise outcome_error(outcome)
        return outcome

    def _envelope(self, request_id: str, body: VaultRequest) -> Envelope:
        """The request's envelope under the id sealed inside it (members check they agree);
        unsigned, so the id can be set after the fact."""
        env = self.outbox.envelope(body)
        return replace(env, id=request_id, at=format_time(id_time_ms(request_id)))
