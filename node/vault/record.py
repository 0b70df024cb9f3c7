"""A user's vault record as the fleet replicates it, and what its HSMs seal inside it.

The record is the value of the user's quorum register (key ``vault-<user>``), canonical JSON.
What would let anyone check a PIN guess or read the secret (the OPAQUE password file and the
client-encrypted secret) is sealed under the fleet's storage key inside the HSMs; what the
fleet counts is in the clear so every member's applet can check each change:

- ``attempts``: logins ever started on this user (each one guess), never decreasing;
- ``cleared``: the highest attempt proven by a finished login (the PIN holder's); the user's
  failures are ``attempts - cleared``, and a new attempt needs them below the policy's limit;
- ``generation``/``registration``: which registration is in force (the id of its
  ``register-start``, time-ordered, so an older one is a replay);
- ``replaced``/``replaced_at``: registrations made without the PIN in force, counted for the
  user to see and rate-limited;
- ``recent``: the logins started lately, each with the member that evaluates it and the digest
  of its first message, so a replayed start spends nothing and an evaluator answers exactly the
  message that was counted.
"""

# No ``from __future__ import annotations``: body field types stay evaluated (see messages.schema).
import hashlib
from dataclasses import dataclass, replace

from messages.canonical import canonical, loads_strict
from messages.errors import SchemaViolation
from messages.ids import id_time_ms
from messages.schema import Body
from messages.vault_policy import VaultError

RECORD_PREFIX = "vault-"
REQUEST_WINDOW_MS = 5 * 60 * 1000
"""Members take requests whose id time is within this window of their clock."""
RECENT_MS = 3 * REQUEST_WINDOW_MS
"""How long a started login stays in ``recent``: while a copy of it could still pass a
member's freshness check (two windows) and one more."""
MAX_RECENT = 128


class DamagedRecord(VaultError):
    """A stored record, sealed registration or login state does not decode or authenticate."""

    kind = "damaged_record"


@dataclass(frozen=True)
class Attempt(Body):
    """One started login: its request id, its number, who evaluates it, and SHA-256 of its
    first OPAQUE message."""

    id: str
    number: int
    evaluator: str
    message: bytes


@dataclass(frozen=True)
class UserRecord(Body):
    """One user's vault state, as replicated; ``sealed`` is None once the record is destroyed.
    ``storage`` and ``server`` are the key ids of the storage key that sealed it and of the
    OPAQUE setup its registration was made with."""

    user: str
    generation: int
    registration: str
    sealed: bytes | None
    storage: str
    server: str
    attempts: int = 0
    cleared: int = 0
    replaced: int = 0
    replaced_at: int = 0
    recent: tuple[Attempt, ...] = ()

    @property
    def destroyed(self) -> bool:
        return self.sealed is None

    @property
    def failures(self) -> int:
        return self.attempts - self.cleared

    def started(self, request_id: str) -> Attempt | None:
        """The login started by ``request_id``, if the record still lists it."""
        return next((a for a in self.recent if a.id == request_id), None)


@dataclass(frozen=True)
class Registered(Body):
    """What the storage key seals in a record: OPAQUE's password file and the secret as the
    client encrypted it."""

    password_file: bytes
    secret: bytes


@dataclass(frozen=True)
class LoginState(Body):
    """A started login, sealed by the evaluating HSM and carried by the client to its finish:
    OPAQUE's server state (which holds the session key) and what it is a login of."""

    fleet: str
    user: str
    generation: int
    registration: str
    attempt: int
    expires_ms: int
    server_state: bytes


@dataclass(frozen=True)
class SealedBlob(Body):
    """Bytes sealed under the storage key with id ``key``."""

    key: str
    sealed: bytes

    def encode(self) -> bytes:
        return canonical(self.to_json())

    @classmethod
    def decode(cls, data: bytes) -> "SealedBlob":
        try:
            return cls.from_json(loads_strict(data))
        except (ValueError, SchemaViolation) as exc:
            raise DamagedRecord(f"sealed data does not decode: {exc}") from None


def record_key(user: str) -> str:
    """The quorum register holding ``user``'s record."""
    return RECORD_PREFIX + user


def encode(record: UserRecord) -> bytes:
    return canonical(record.to_json())


def decode(value: bytes | None) -> UserRecord | None:
    if value is None:
        return None
    try:
        return UserRecord.from_json(loads_strict(value))
    except (ValueError, SchemaViolation) as exc:
        raise DamagedRecord(f"record does not decode: {exc}") from exc


def record_aad(fleet: str, record: UserRecord) -> bytes:
    """What a record's sealed part is bound to: fleet, user, generation and registration."""
    return (
        f"hsmfleet/v1/vault/record\n{fleet}\n{record.user}\n{record.generation}\n"
        f"{record.registration}"
    ).encode()


def login_aad(fleet: str) -> bytes:
    return f"hsmfleet/v1/vault/login\n{fleet}".encode()


def message_digest(message: bytes) -> bytes:
    return hashlib.sha256(message).digest()


def with_attempt(record: UserRecord, attempt: Attempt) -> UserRecord:
    """``record`` with login ``attempt`` started: counted, and listed in ``recent`` (pruned to
    the logins started within :data:`RECENT_MS` of it, at most :data:`MAX_RECENT`)."""
    horizon = id_time_ms(attempt.id) - RECENT_MS
    kept = tuple(a for a in record.recent if id_time_ms(a.id) >= horizon)[-(MAX_RECENT - 1) :]
    return replace_record(record, attempts=attempt.number, recent=(*kept, attempt))


def replace_record(record: UserRecord, **changes: object) -> UserRecord:
    """``record`` with ``changes``: a new value, holding only the fields this build writes
    (not the unknown ones ``record`` was decoded with)."""
    return replace(record, extra={}, **changes)
