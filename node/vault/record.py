"""A user's vault record and how operations change it (pure functions over records).

The record is the value of the user's quorum register. Its guess budget is per user, not per
registration: ``failures`` counts wrong guesses since the user last proved the PIN and survives
re-registration, so registering again never buys more guesses (Davies et al., "Security
Analysis of the WhatsApp End-to-End Encrypted Backup Protocol", CRYPTO 2023, showed that a fresh
budget per registration lets a corrupted server multiply its guesses). ``seq`` numbers every
attempt ever started and names the one member allowed to evaluate it, so a committed attempt is
evaluated at most once. ``recent`` holds the ids of the recoveries started in the last three
freshness windows, so a replayed recovery request spends no guess. The registration itself (PIN
digest and secret) is sealed under the fleet's storage key and bound to the user and the
registration's request id.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, replace

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from messages.canonical import canonical, loads_strict
from messages.errors import SchemaViolation
from messages.ids import id_time_ms
from messages.schema import Body
from messages.vault import (
    BudgetExhausted,
    NoRecord,
    ReplayedRequest,
    StaleRegistration,
    VaultError,
)

# Members take requests whose id time is within this window of their clock.
REQUEST_WINDOW_MS = 5 * 60 * 1000
# A request id stays in ``recent`` while a request that passed a member's freshness check could
# still be replayed: two windows back from the newest id (its time may run one window ahead),
# and a third, so that a member that lost track of its own request can still find it there.
RECENT_MS = 3 * REQUEST_WINDOW_MS
MAX_RECENT = 64


class DamagedRecord(VaultError):
    """A stored record or sealed registration does not decode or authenticate."""

    kind = "damaged_record"


@dataclass(frozen=True)
class UserRecord(Body):
    """One user's vault state, as replicated."""

    user: str
    limit: int
    generation: int = 0
    failures: int = 0
    seq: int = 0
    evaluator: str = ""
    registered_by: str = ""
    sealed: bytes | None = None
    recent: tuple[str, ...] = ()

    @property
    def destroyed(self) -> bool:
        """True once the user had a registration and it was destroyed."""
        return self.generation > 0 and self.sealed is None

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.failures)


@dataclass(frozen=True)
class SealedRegistration(Body):
    """What the storage key seals: the PIN's digest and the secret."""

    pin_digest: bytes
    secret: bytes


def record_key(user: str) -> str:
    """The quorum register holding ``user``'s record."""
    return f"vault-{user}"


def encode(record: UserRecord) -> bytes:
    return canonical(record.to_json())


def decode(value: bytes | None) -> UserRecord | None:
    if value is None:
        return None
    try:
        return UserRecord.from_json(loads_strict(value))
    except (ValueError, SchemaViolation) as exc:
        raise DamagedRecord(f"record does not decode: {exc}") from exc


def pin_digest(user: str, pin: bytes) -> bytes:
    return hashlib.sha256(b"hsmfleet/v1/vault/pin\n" + user.encode() + b"\n" + pin).digest()


def _aad(user: str, registration: str) -> bytes:
    return f"hsmfleet/v1/vault/record\n{user}\n{registration}".encode()


def seal_registration(
    storage_key: bytes, user: str, registration: str, pin: bytes, secret: bytes, nonce: bytes
) -> bytes:
    """Seal a registration under the storage key, bound to ``user`` and request ``registration``."""
    plain = canonical(SealedRegistration(pin_digest=pin_digest(user, pin), secret=secret).to_json())
    return nonce + AESGCM(storage_key).encrypt(nonce, plain, _aad(user, registration))


def check_guess(storage_key: bytes, record: UserRecord, guess: bytes) -> bytes | None:
    """The secret if ``guess`` is the record's PIN, else None (compared in constant time)."""
    if record.sealed is None:
        raise NoRecord("the record holds no registration", user=record.user)
    nonce, body = record.sealed[:12], record.sealed[12:]
    try:
        plain = AESGCM(storage_key).decrypt(nonce, body, _aad(record.user, record.registered_by))
        sealed = SealedRegistration.from_json(loads_strict(plain))
    except (InvalidTag, ValueError, SchemaViolation) as exc:
        raise DamagedRecord(f"registration does not open: {type(exc).__name__}") from None
    if hmac.compare_digest(sealed.pin_digest, pin_digest(record.user, guess)):
        return sealed.secret
    return None


def registered(
    old: UserRecord | None, user: str, registration: str, sealed: bytes, limit: int
) -> UserRecord:
    """The record after registering ``sealed``: a new generation, the budget kept.

    Raises :class:`BudgetExhausted` when the user's guesses are used up and
    :class:`StaleRegistration` for a registration older than the current one (a replay).
    """
    record = old or UserRecord(user=user, limit=limit)
    if record.failures >= record.limit:
        raise BudgetExhausted("the user's guesses are used up", user=user)
    if registration <= record.registered_by:
        raise StaleRegistration("an equal or newer registration is in force", user=user)
    return replace(
        record,
        generation=record.generation + 1,
        registered_by=registration,
        sealed=sealed,
    )


def attempted(old: UserRecord | None, member: str, request: str) -> UserRecord:
    """The record after starting attempt ``request`` (its id), which ``member`` will evaluate.

    The attempt counts as a failure until a correct guess clears it, so a crash between the
    commit and the evaluation never gives a guess back. A record at its limit is returned
    destroyed (no attempt started); raises :class:`NoRecord` for a user never registered,
    :class:`BudgetExhausted` once the record is destroyed and :class:`ReplayedRequest` for a
    request id the record holds. ``recent`` keeps the last ``MAX_RECENT`` ids: a user who
    makes more recoveries than that within a freshness window leaves the oldest of them open
    to a replay (which a correct guess makes harmless and a wrong one costs a guess).
    """
    if old is None or old.generation == 0:
        raise NoRecord("the user has no registration")
    if old.destroyed:
        raise BudgetExhausted("the user's guesses are used up", user=old.user)
    if request in old.recent:
        raise ReplayedRequest("this recovery request was already made", user=old.user)
    if old.failures >= old.limit:
        return replace(old, sealed=None)
    horizon = id_time_ms(request) - RECENT_MS
    recent = tuple(r for r in old.recent if id_time_ms(r) >= horizon)[-(MAX_RECENT - 1) :]
    return replace(
        old,
        failures=old.failures + 1,
        seq=old.seq + 1,
        evaluator=member,
        recent=(*recent, request),
    )


def after_success(old: UserRecord | None, attempt: UserRecord) -> UserRecord | None:
    """The record after ``attempt`` proved the PIN: the failures counted up to it are cleared.
    A record destroyed meanwhile (by attempts after this one) stays destroyed."""
    if old is None or old.destroyed:
        return old
    return replace(old, failures=max(0, old.failures - attempt.failures))


def after_failure(old: UserRecord | None) -> UserRecord | None:
    """The record after a wrong guess: destroyed once the budget is used up."""
    if old is None or old.failures < old.limit:
        return old
    return replace(old, sealed=None)
