"""The orchestrator's configuration file (JSON) and what it yields: policy, tokens, keys (the
log-signing key file; the operator's countersigning key, inside a software HSM).

Paths in the file are relative to the file. Unknown keys are refused, so a typo is an error,
not a silently ignored setting.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives.serialization import Encoding
from nats.aio.client import Client as NATS

from messages.attestation import load_vendor_roots
from messages.errors import HsmfleetError, SchemaViolation
from messages.inputs import SetPolicy
from messages.schema import Body
from messages.subjects import token
from transport import credentials
from transport.httpguard import BadListenAddress, listen_address
from transport.parties import ORCHESTRATOR

Role = Literal["read", "operator"]
_PATHS = ("key_file", "operator_hsm", "operator_hsm_key", "nats_seed", "nats_ca")


class ConfigError(HsmfleetError):
    """The configuration file is missing, not JSON, or holds a bad or unknown setting."""

    kind = "config"


@dataclass(frozen=True)
class Settings:
    """Everything an orchestrator process is configured with."""

    holder: str
    key_file: Path
    vendor_roots: tuple[Path, ...]
    allowed_measurements: tuple[str, ...]
    nats: str = "nats://127.0.0.1:4222"
    nonce_ttl_ms: int = 30_000
    auto_enroll: bool = False
    listen: str = "127.0.0.1:8080"
    tokens: dict[str, Role] = field(default_factory=dict)
    """Bearer token -> role (``read`` or ``operator``)."""
    lease_ttl_s: float = 2.0
    unreachable_after_s: float = 15.0
    """A node not heard from (announcement, heartbeat) for this long is unreachable: three of
    the node daemon's default heartbeats."""
    replicas: int = 1
    operator_hsm: Path | None = None
    """State directory of the software HSM holding the operator's countersigning key."""
    operator_hsm_key: Path | None = None
    """The sealing key file of that HSM."""
    operator_key_label: str = "operator"
    nats_seed: Path | None = None
    """This orchestrator's NATS nkey seed file (``orchestrator-<holder>.nk`` of a bundle)."""
    nats_ca: Path | None = None
    """The CA file of NATS servers that require TLS."""

    async def connect(self) -> NATS:
        """This orchestrator's connection to NATS, as the party ``orchestrator-<holder>``."""
        party = credentials.party_options(ORCHESTRATOR, self.holder, self.nats_seed, self.nats_ca)
        return await credentials.connect(self.nats, party)

    @classmethod
    def load(cls, path: Path) -> Settings:
        """Read and check a configuration file."""
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read the configuration: {exc}", path=str(path)) from None
        return cls.from_json(raw, path.parent)

    @classmethod
    def from_json(cls, raw: Any, base: Path) -> Settings:
        """Settings from the file's JSON, every value checked against its declared type (a path
        is a string, relative to ``base``); a bad value raises :class:`ConfigError` naming its
        key, and so does an unknown key."""
        try:
            written = _written_form().from_json(raw, "config")
        except SchemaViolation as exc:
            raise ConfigError(str(exc)) from None
        if written.extra:
            raise ConfigError("unknown settings", unknown=sorted(written.extra))
        values = {f.name: getattr(written, f.name) for f in fields(cls)}
        for name in _PATHS:
            if values[name] is not None:
                values[name] = base / values[name]
        values["vendor_roots"] = tuple(base / p for p in values["vendor_roots"])
        values["tokens"] = dict(values["tokens"])
        settings = cls(**values)
        try:
            token(settings.holder, "holder")
        except HsmfleetError as exc:
            raise ConfigError(f"holder: {exc}") from None
        return settings

    def policy(self) -> SetPolicy:
        """The enrollment policy this configuration asks for, vendor roots read as DER."""
        roots: list[bytes] = []
        for path in self.vendor_roots:
            try:
                certificates = load_vendor_roots(path.read_bytes())
            except (OSError, HsmfleetError) as exc:
                raise ConfigError(f"cannot read a vendor root: {exc}", path=str(path)) from None
            roots += [cert.public_bytes(Encoding.DER) for cert in certificates]
        return SetPolicy(
            vendor_roots=tuple(roots),
            allowed_measurements=self.allowed_measurements,
            nonce_ttl_ms=self.nonce_ttl_ms,
            auto_enroll=self.auto_enroll,
        )

    @property
    def host_port(self) -> tuple[str, int]:
        try:
            return listen_address(self.listen)
        except BadListenAddress:
            raise ConfigError("listen must be HOST:PORT", listen=self.listen) from None


@functools.cache
def _written_form() -> type[Body]:
    """:class:`Settings` as the file writes it: the same keys, defaults and types, but a path
    (or a list of them) is a string, as JSON has no paths."""
    hints = typing.get_type_hints(Settings)

    def written(hint: Any) -> Any:
        if hint is Path:
            return str
        if typing.get_origin(hint) is tuple and typing.get_args(hint)[0] is Path:
            return tuple[str, ...]
        if typing.get_origin(hint) in (typing.Union, types.UnionType) and Path in typing.get_args(
            hint
        ):
            return str | None
        return hint

    return dataclasses.make_dataclass(
        "SettingsFile",
        [(f.name, written(hints[f.name]), f) for f in fields(Settings)],
        bases=(Body,),
        frozen=True,
    )
