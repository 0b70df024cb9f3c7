"""User authorizations: what the account authority signs so that a vault request may change a
user's record (register, replace) or spend one of the user's guesses (recover).

The account authority is the service that logs users in (outside hsmfleet); the fleet's vault
policy pins its public key. An :class:`Authorization` names the fleet, the user, the operation
and the one request id it authorizes, and expires shortly after it was made: a request without
one, or with one for another user, fleet, operation or request, or an expired one, is refused
inside the HSM applet before anything is committed. The request id makes it single-use: the
fleet keeps the ids of the requests that changed a record (see ``node/vault/record.py``).

Signed bytes: ``b"hsmfleet/v1/vault-authorization\\n" + JCS(body without "sig")``.
"""

# No ``from __future__ import annotations``: body field types stay evaluated (see messages.schema).
from dataclasses import dataclass, replace

from messages.canonical import canonical
from messages.errors import HsmfleetError
from messages.ids import format_time, parse_time
from messages.schema import Body
from messages.signing import ALGORITHMS, Signer, verify_bytes

DOMAIN = b"hsmfleet/v1/vault-authorization\n"
REGISTER = "register"
REPLACE = "replace"
RECOVER = "recover"
KINDS = (REGISTER, REPLACE, RECOVER)
MAX_LIFETIME_MS = 15 * 60 * 1000
"""The longest an authorization may be valid for; longer ones are refused."""
SKEW_MS = 60 * 1000
"""How far the authority's clock may run ahead of a member's."""


class AuthorizationRefused(HsmfleetError):
    """The request carries no valid user authorization: none, another user's, fleet's,
    operation's or request's, a bad signature, or one that expired."""

    kind = "unauthorized"


class AuthorizationExpired(AuthorizationRefused):
    """The authorization expired (or claims a lifetime longer than allowed)."""

    kind = "authorization_expired"


@dataclass(frozen=True)
class Authorization(Body):
    """The account authority's signed statement that ``user`` may make request ``request``
    (one operation of :data:`KINDS`) on ``fleet``'s vault until ``expires``."""

    fleet: str
    user: str
    op: str
    request: str
    issued: str
    expires: str
    sig: bytes = b""

    def signing_bytes(self) -> bytes:
        body = self.to_json()
        body.pop("sig", None)
        return DOMAIN + canonical(body)

    def check(
        self,
        alg: str,
        public_key: bytes,
        *,
        fleet: str,
        user: str,
        ops: tuple[str, ...],
        request: str,
        now_ms: int | None,
    ) -> None:
        """Raise :class:`AuthorizationRefused` unless this authorization, signed by the
        authority key ``(alg, public_key)``, lets ``user`` make ``request`` (one of ``ops``) on
        ``fleet`` at ``now_ms`` (None: whenever it was issued for, as when a request taken
        earlier is checked again)."""
        if alg not in ALGORITHMS or not verify_bytes(
            alg, public_key, self.sig, self.signing_bytes()
        ):
            raise AuthorizationRefused("the authorization is not signed by the account authority")
        if self.fleet != fleet or self.user != user:
            raise AuthorizationRefused(
                "the authorization is for another user or fleet", user=self.user
            )
        if self.op not in ops:
            raise AuthorizationRefused(
                "the authorization is for another operation", op=self.op, expected=list(ops)
            )
        if self.request != request:
            raise AuthorizationRefused("the authorization is for another request")
        try:
            issued, expires = parse_time(self.issued), parse_time(self.expires)
        except HsmfleetError:
            raise AuthorizationRefused("the authorization's times are not RFC 3339") from None
        if expires - issued > MAX_LIFETIME_MS:
            raise AuthorizationExpired("the authorization claims too long a lifetime")
        if now_ms is None:
            return
        if issued > now_ms + SKEW_MS:
            raise AuthorizationExpired("the authorization is issued in the future")
        if now_ms >= expires:
            raise AuthorizationExpired("the authorization expired", expires=self.expires)


class AccountAuthority:
    """The account authority's signing side, for tests, the demo and trying a fleet by hand:
    in production this key belongs to the service that logs users in."""

    def __init__(self, signer: Signer, lifetime_ms: int = 5 * 60 * 1000) -> None:
        if not 0 < lifetime_ms <= MAX_LIFETIME_MS:
            raise ValueError("an authorization lives at most 15 minutes")
        self.signer = signer
        self.lifetime_ms = lifetime_ms

    def authorize(self, fleet: str, user: str, op: str, request: str, now_ms: int) -> Authorization:
        """An authorization for ``user`` to make ``request`` (``op``) on ``fleet``."""
        if op not in KINDS:
            raise ValueError(f"unknown operation {op!r}")
        unsigned = Authorization(
            fleet=fleet,
            user=user,
            op=op,
            request=request,
            issued=format_time(now_ms),
            expires=format_time(now_ms + self.lifetime_ms),
        )
        return replace(unsigned, sig=self.signer.sign(unsigned.signing_bytes()))
