"""What a cosigner signs for each entry it logs, and the operator's countersignature over it.

A :class:`Statement` says: log ``log`` holds, at leaf ``index``, the document of ``kind`` for
``fleet`` at position ``seq`` (a stage bundle's serial, an artifact's epoch, a retired fleet's
last epoch; for a key rotation, ``fleet`` is the signer's name and ``seq`` the new key's
version) whose digest is ``digest``, logged at ``logged_at``. The cosigner signs it with
Ed25519 over::

    b"hsmfleet/v1/statement\\n" || JCS(statement)

The operator countersigns the cosigner's signature bytes (as Meta countersigns the auditor's, cf.
facebook/mbt) with its own key, over::

    b"hsmfleet/v1/countersignature\\n" || cosigner signature (64 bytes)

The domain prefixes keep these signatures apart from each other, from envelope signatures
(``hsmfleet/v1/<type>\\n``) and from the cosigner's note signatures (which begin with a log
origin, never with ``hsmfleet/v1/``) and cosignatures (``cosignature/v1\\n``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from messages.artifact import FleetKeyArtifact
from messages.bundle import StageBundle
from messages.documents import (
    Document,
    UnknownFormat,
    is_digest,
    is_name,
    load_json,
    require,
    time_ms,
)
from messages.origin import is_origin, is_signer_name
from messages.retirement import FleetRetirement
from messages.rotation import KeyRotation
from messages.schema import Body
from messages.signing import ALGORITHMS, ED25519, Signer, key_id, verify_bytes

FORMAT = "hsmfleet/statement/v1"
STATEMENT_DOMAIN = b"hsmfleet/v1/statement\n"
COUNTERSIGNATURE_DOMAIN = b"hsmfleet/v1/countersignature\n"
LOGGED = (StageBundle, FleetKeyArtifact, KeyRotation, FleetRetirement)
"""The documents a cosigner logs, by format tag."""
LoggedDocument = StageBundle | FleetKeyArtifact | KeyRotation | FleetRetirement
_BY_FORMAT: dict[str, type[LoggedDocument]] = {c.FORMAT: c for c in LOGGED}
_KINDS = {c.KIND for c in LOGGED}


def parse_logged(raw: Any) -> LoggedDocument:
    """Decode a document a cosigner logs (stage bundle, fleet-key artifact, key rotation, fleet
    retirement) by its format."""
    format_name = raw.get("format") if isinstance(raw, dict) else None
    cls = _BY_FORMAT.get(format_name) if isinstance(format_name, str) else None
    if cls is None:
        raise UnknownFormat(
            "not a document a cosigner logs",
            format=raw.get("format") if isinstance(raw, dict) else None,
        )
    return cls.from_json(raw)


def parse_logged_bytes(data: bytes) -> LoggedDocument:
    """Decode a log entry: the canonical bytes of a document a cosigner logs."""
    return parse_logged(load_json(data))


@dataclass(frozen=True)
class Statement(Document):
    """A cosigner's signed claim that it logged one document at one leaf of its log."""

    FORMAT = FORMAT

    log: str
    index: int
    kind: str
    fleet: str
    seq: int
    digest: str
    logged_at: str
    format: str = field(default=FORMAT, kw_only=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        require(is_origin(self.log), "log must be a valid origin", log=self.log)
        require(self.index >= 0, "index must not be negative", index=self.index)
        # The kinds are a closed list: a statement of another kind names nothing a verifier
        # could check.
        require(self.kind in _KINDS, "kind must name a logged document", kind=self.kind)
        # A key rotation's statement names its signer (``operator`` or an origin) here.
        named = is_signer_name if self.kind == KeyRotation.KIND else is_name
        require(named(self.fleet), "fleet must be a fleet id (signer name)", fleet=self.fleet)
        require(self.seq >= 1, "seq must be at least 1", seq=self.seq)
        require(is_digest(self.digest), "digest must be 64 lowercase hex digits")
        time_ms(self.logged_at, "logged_at")

    @classmethod
    def for_entry(cls, log: str, index: int, document: LoggedDocument, logged_at: str) -> Statement:
        """The statement for ``document`` logged at ``index`` of ``log``."""
        return cls(
            log=log,
            index=index,
            kind=document.KIND,
            fleet=document.fleet,
            seq=document.seq,
            digest=document.digest,
            logged_at=logged_at,
        )

    def describes(self, document: LoggedDocument) -> bool:
        """True when this statement names ``document``: same kind, fleet, position and digest."""
        return (self.kind, self.fleet, self.seq, self.digest) == (
            document.KIND,
            document.fleet,
            document.seq,
            document.digest,
        )

    def signing_bytes(self) -> bytes:
        """``b"hsmfleet/v1/statement\\n" || JCS(statement)``."""
        return STATEMENT_DOMAIN + self.to_bytes()

    def sign(self, signer: Signer) -> bytes:
        """The cosigner's Ed25519 signature over :meth:`signing_bytes`."""
        require(signer.alg == ED25519, "statements are signed with Ed25519", alg=signer.alg)
        return signer.sign(self.signing_bytes())

    def verify(self, public_key: bytes, signature: bytes) -> bool:
        """True when ``signature`` by the Ed25519 ``public_key`` verifies over this statement."""
        return verify_bytes(ED25519, public_key, signature, self.signing_bytes())


def countersigned_bytes(statement_signature: bytes) -> bytes:
    """``b"hsmfleet/v1/countersignature\\n" || statement signature``."""
    return COUNTERSIGNATURE_DOMAIN + statement_signature


@dataclass(frozen=True)
class Countersignature(Body):
    """The operator's signature over a cosigner's statement signature."""

    alg: str
    kid: str
    value: bytes

    def __post_init__(self) -> None:
        require(self.alg in ALGORITHMS, "unknown countersignature algorithm", alg=self.alg)
        require(0 < len(self.value) <= 512, "countersignature must be 1-512 bytes")

    @classmethod
    def make(cls, signer: Signer, statement_signature: bytes) -> Countersignature:
        """Countersign ``statement_signature`` with the operator's ``signer``."""
        value = signer.sign(countersigned_bytes(statement_signature))
        return cls(alg=signer.alg, kid=signer.kid, value=value)

    def verify(self, alg: str, public_key: bytes, statement_signature: bytes) -> bool:
        """True when this was made by the key ``(alg, public_key)`` over the signature."""
        return (
            self.alg == alg
            and self.kid == key_id(alg, public_key)
            and verify_bytes(alg, public_key, self.value, countersigned_bytes(statement_signature))
        )
