"""What a fleet's vault is made of and enforces: the fleet keys it needs, by role, and the policy
fixed at its key ceremony and published with those keys."""

# No ``from __future__ import annotations``: body field types stay evaluated (see messages.schema).
import hashlib
from dataclasses import dataclass

from messages.canonical import canonical
from messages.errors import HsmfleetError, SchemaViolation
from messages.schema import Body

KEM_ROLE = "vault-kem"
"""Role of the fleet key clients seal requests to (ECDH P-256, published in the bundle)."""
STORAGE_ROLE = "vault-storage"
"""Role of the fleet key that seals records and login states inside the HSMs (AES-256-GCM)."""
OPAQUE_ROLE = "vault-opaque"
"""Role of the fleet's OPAQUE server setup (OPRF seed and server key pair); the bundle lists
its public key, the OPAQUE server key."""
KEM_ALG = "ecdh-p256"
STORAGE_ALG = "aes256-gcm"
OPAQUE_ALG = "opaque-ristretto255"
VAULT_KEYS = {KEM_ROLE: KEM_ALG, STORAGE_ROLE: STORAGE_ALG, OPAQUE_ROLE: OPAQUE_ALG}
"""The fleet keys a vault needs, by role, with their algorithms."""

DEFAULT_LIMIT = 10


class VaultError(HsmfleetError):
    """Root of the errors a vault operation reports to its client."""

    kind = "vault"


class VaultPolicyError(VaultError, SchemaViolation):
    """A vault policy value is out of range (in a document, a schema violation like any other:
    a bundle whose artifact carries one is malformed)."""

    kind = "vault_policy"


@dataclass(frozen=True)
class VaultPolicy(Body):
    """What a fleet's vault enforces, fixed at its key ceremony and published with its keys.

    ``limit``: wrong guesses allowed since the PIN was last proven; ``authority_alg`` and
    ``authority_key``: the account authority's signing key; ``replace_interval_s``: the least
    time between two replacements of one user's record without its PIN; ``login_ttl_s``: how
    long a started login may be finished.
    """

    limit: int
    authority_alg: str
    authority_key: bytes
    replace_interval_s: int
    login_ttl_s: int = 120

    def __post_init__(self) -> None:
        if not 1 <= self.limit <= 100:
            raise VaultPolicyError("the guess limit must be 1 to 100", limit=self.limit)
        if not 0 <= self.replace_interval_s <= 10 * 365 * 86400:
            raise VaultPolicyError("replace_interval_s must be 0 to ten years")
        if not 10 <= self.login_ttl_s <= 3600:
            raise VaultPolicyError("login_ttl_s must be 10 to 3600 seconds")
        if not 0 < len(self.authority_key) <= 256:
            raise VaultPolicyError("the authority key must be 1-256 bytes")

    @property
    def digest(self) -> bytes:
        return hashlib.sha256(b"hsmfleet/v1/vault-policy\n" + canonical(self.to_json())).digest()
