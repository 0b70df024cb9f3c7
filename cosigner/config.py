"""A cosigner's state directory: its key, its configuration, its log and store.

Layout::

    <state>/key            Ed25519 seed, 64 hex digits, mode 0600 (created by ``init``)
    <state>/config.json    CosignerConfig (below)
    <state>/audit.db       the audit log (cosigner.log)
    <state>/state.db       statements, signed and witnessed checkpoints (cosigner.store)

The configuration names the cosigner (``id``: its NATS subject token; ``name``: its log origin
and witness name), pins the orchestrator keys whose requests it answers (the format of
``node/pins.py``: ``{"owner", "alg", "public_key"}``), and lists the logs it witnesses as
verifier pins (``{"name", "public_key"}``, what ``hsmfleet cosigner pin`` prints).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from messages.canonical import canonical
from messages.cosigning import REQUESTER_ROLE
from messages.documents import DocumentError, is_name, load_json, require
from messages.errors import HsmfleetError, MessageError
from messages.origin import is_origin
from messages.pins import CosignerPin, OperatorPin
from messages.schema import Body
from messages.signing import ALGORITHMS, Ed25519Signer, TrustedKey, TrustStore
from transport.files import write_file, write_seed

CONFIG_FORMAT = "hsmfleet/cosigner-config/v1"
KEY_FILE = "key"
CONFIG_FILE = "config.json"


class ConfigError(HsmfleetError):
    """The cosigner's key or configuration is missing or malformed."""

    kind = "cosigner_config"


@dataclass(frozen=True)
class RequesterPin(Body):
    """A key whose signed requests the cosigner answers, and the ``source`` it signs as."""

    owner: str
    alg: str
    public_key: bytes

    def __post_init__(self) -> None:
        require(self.alg in ALGORITHMS, "unknown key algorithm", alg=self.alg)


@dataclass(frozen=True)
class CosignerConfig(Body):
    """Who the cosigner is, whom it answers, and which logs it witnesses."""

    id: str
    name: str
    requesters: tuple[RequesterPin, ...]
    witness_of: tuple[CosignerPin, ...] = ()
    operator: OperatorPin | None = None
    """The operator's countersigning key as first pinned: the operator's first rotation this
    cosigner logs must start from it. Without it, the first rotation it sees starts the chain."""
    format: str = field(default=CONFIG_FORMAT, kw_only=True)

    def __post_init__(self) -> None:
        require(self.format == CONFIG_FORMAT, "not a cosigner configuration")
        require(is_name(self.id), "cosigner id must be a subject token", id=self.id)
        require(is_origin(self.name), "cosigner name must be a valid log origin", name=self.name)
        require(bool(self.requesters), "a cosigner answers at least one requester key")
        require(
            all(log.name != self.name for log in self.witness_of),
            "a cosigner does not witness its own log",
        )
        names = [log.name for log in self.witness_of]
        require(len(set(names)) == len(names), "each witnessed log is named once")

    def trust(self) -> TrustStore:
        """The requester keys, trusted for the requester role."""
        return TrustStore(
            [
                TrustedKey(p.owner, p.alg, p.public_key, frozenset({REQUESTER_ROLE}))
                for p in self.requesters
            ]
        )

    def witnessing(self, *logs: CosignerPin) -> CosignerConfig:
        """This configuration also witnessing ``logs`` (a log already listed is replaced)."""
        names = {log.name for log in logs}
        kept = tuple(log for log in self.witness_of if log.name not in names)
        return replace(self, witness_of=(*kept, *logs))


def read_json_file(path: Path, what: str) -> object:
    try:
        return load_json(Path(path).read_bytes())
    except (OSError, DocumentError) as exc:
        raise ConfigError(f"cannot read {what}: {exc}", path=str(path)) from exc


def read_operator(path: Path) -> OperatorPin:
    """The operator pin in ``path`` (the Ed25519 key in hex, or the pin's JSON)."""
    try:
        return OperatorPin.parse(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read the operator key: {exc}", path=str(path)) from exc
    except (DocumentError, MessageError) as exc:
        raise ConfigError(f"not an operator key: {exc}", path=str(path)) from exc


def read_requesters(path: Path) -> tuple[RequesterPin, ...]:
    """Requester pins from a file of one pin object or a list of them."""
    raw = read_json_file(path, "requester keys")
    entries = raw if isinstance(raw, list) else [raw]
    try:
        return tuple(RequesterPin.from_json(e) for e in entries)
    except (MessageError, DocumentError) as exc:
        raise ConfigError(f"bad requester key: {exc}", path=str(path)) from exc


def read_pin(path: Path) -> CosignerPin:
    """A cosigner pin (``{"name", "public_key"}``) from a file."""
    try:
        return CosignerPin.from_json(read_json_file(path, "cosigner pin"))
    except (MessageError, DocumentError) as exc:
        raise ConfigError(f"bad cosigner pin: {exc}", path=str(path)) from exc


def load_config(state: Path) -> CosignerConfig:
    try:
        return CosignerConfig.from_json(read_json_file(Path(state) / CONFIG_FILE, "configuration"))
    except (MessageError, DocumentError) as exc:
        raise ConfigError(f"bad configuration: {exc}", path=str(state)) from exc


def save_config(state: Path, config: CosignerConfig) -> None:
    write_file(Path(state) / CONFIG_FILE, canonical(config.to_json()) + b"\n")


def load_key(state: Path, name: str = KEY_FILE) -> Ed25519Signer:
    """The Ed25519 key in ``<state>/<name>`` (hex seed): ``key``, the one in force, by default."""
    path = Path(state) / name
    try:
        seed = bytes.fromhex(path.read_text().strip())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the cosigner key: {exc}", path=str(path)) from None
    if len(seed) != 32:
        raise ConfigError("the cosigner key must be 32 bytes of hex", path=str(path))
    return Ed25519Signer.from_seed(seed)


def pin_of(config: CosignerConfig, signer: Ed25519Signer, url: str | None = None) -> CosignerPin:
    """What verifiers and other witnesses pin for this cosigner."""
    return CosignerPin(name=config.name, public_key=signer.public_key, url=url)


def init_state(state: Path, config: CosignerConfig, seed: bytes | None = None) -> Ed25519Signer:
    """Create the state directory with a new key (or one from ``seed``) and ``config``.

    Refuses a directory that already holds a key: a cosigner's key is never replaced in place.
    """
    state = Path(state)
    state.mkdir(parents=True, exist_ok=True)
    seed = os.urandom(32) if seed is None else seed
    try:
        write_seed(state / KEY_FILE, seed)
    except FileExistsError:
        raise ConfigError("the state directory already has a key", path=str(state)) from None
    save_config(state, config)
    return Ed25519Signer.from_seed(seed)
