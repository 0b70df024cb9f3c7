"""Entries of the orchestrator's log: sealing decisions into signed, chained envelopes, and
admitting stored entries back after checking the chain and the signatures.

Each entry's envelope carries ``prev``: the SHA-256 of the wire bytes of the entry before it
(32 zero bytes for the first). An entry's signature covers ``prev``, so one verified signature
vouches for every entry before it; :class:`LogReader` can therefore verify only every n-th
signature (and always the last) and still refuse any altered, dropped or inserted entry.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from messages.canonical import b64, canonical
from messages.envelope import Envelope
from messages.errors import HsmfleetError, MessageError
from messages.events import Decision, LogEntry
from messages.ids import format_time
from messages.schema import REGISTRY, Body, Registry
from messages.signing import Signer, TrustStore, sign_envelope, verify_envelope
from orchestrator.core.context import Context
from orchestrator.core.errors import LogCorrupt

GENESIS = bytes(32)
PREV = "prev"
ROLE = "orchestrator"
SOURCE = "orchestrator"


def entry_digest(data: bytes) -> bytes:
    """The chain digest of an entry: SHA-256 over its wire bytes."""
    return hashlib.sha256(data).digest()


@dataclass(frozen=True)
class Sealed:
    """An entry ready to append: its subject, wire bytes and envelope id (``Nats-Msg-Id``)."""

    subject: str
    data: bytes
    id: str


def seal(
    command: Body, events: list[LogEntry], ctx: Context, prev: bytes, signer: Signer
) -> list[Sealed]:
    """The decision on ``command`` and the ``events`` it emitted, as chained signed entries.

    Envelope ids and times come from ``ctx``, so sealing is deterministic too.
    """
    decision = Decision(
        input_type=command.TYPE,
        input_v=command.VERSION,
        input=command.to_json(),
        now_ms=ctx.now_ms,
        seed=ctx.seed,
        epoch=ctx.epoch,
        holder=ctx.holder,
        emits=len(events),
    )
    decision_id = ctx.new_id("entry", 0)
    at = format_time(ctx.now_ms)
    sealed = []
    for index, body in enumerate([decision, *events]):
        env = Envelope(
            type=body.TYPE,
            v=body.VERSION,
            id=ctx.new_id("entry", index),
            at=at,
            source=SOURCE,
            body=body.to_json(),
            corr=body.corr(),
            causation=None if index == 0 else decision_id,
            extra={PREV: b64(prev)},
        )
        data = sign_envelope(env, signer).encode()
        sealed.append(Sealed(body.subject(), data, env.id))
        prev = entry_digest(data)
    return sealed


@dataclass(frozen=True)
class Record:
    """An admitted entry: where it was read (``seq 12``, ``line 3``), its envelope and body."""

    where: str
    envelope: Envelope
    entry: LogEntry


@dataclass(frozen=True)
class _Unverified:
    """An admitted entry whose signature and spelling are still to be checked."""

    where: str
    envelope: Envelope
    raw: Any
    data: bytes


class LogReader:
    """Admits a log's entries in order, refusing any that is not a well-formed, chained entry.

    ``verify_every=1`` verifies each signature; ``n > 1`` verifies every n-th and, at
    :meth:`settle`, the last one admitted: the chain makes that as strict, only faster.
    ``head`` is the digest of the entry before the first one read (:data:`GENESIS` at seq 1).
    """

    def __init__(
        self,
        trust: TrustStore,
        *,
        head: bytes = GENESIS,
        verify_every: int = 1,
        registry: Registry = REGISTRY,
    ) -> None:
        if verify_every < 1:
            raise ValueError("verify_every must be at least 1")
        self.trust = trust
        self.head = head
        self.verify_every = verify_every
        self.registry = registry
        self.admitted = 0
        self._unverified: _Unverified | None = None

    def admit(self, data: bytes, where: str) -> Record:
        """Decode, chain-check and (when due) verify one entry; raises :class:`LogCorrupt`."""
        try:
            raw = json.loads(data)
            env = Envelope.from_json(raw)
        except (ValueError, UnicodeDecodeError, RecursionError, HsmfleetError) as exc:
            raise LogCorrupt(where, f"not a log entry: {exc}") from None
        if env.extra.get(PREV) != b64(self.head):
            raise LogCorrupt(where, "breaks the chain: prev is not the digest of the entry before")
        if (self.admitted + 1) % self.verify_every == 0:
            self._verify(_Unverified(where, env, raw, data))
            self._unverified = None
        else:
            self._unverified = _Unverified(where, env, raw, data)
        try:
            entry = self.registry.parse(env)
        except MessageError as exc:
            raise LogCorrupt(where, f"entry does not fit its schema: {exc}") from None
        if not isinstance(entry, LogEntry):
            raise LogCorrupt(where, "not an entry of the orchestrator's log", type=env.type)
        self.head = entry_digest(data)
        self.admitted += 1
        return Record(where, env, entry)

    def settle(self) -> None:
        """Verify the signature of the last entry admitted, if it was not yet verified."""
        if self._unverified is not None:
            self._verify(self._unverified)
            self._unverified = None

    def _verify(self, entry: _Unverified) -> None:
        where, env = entry.where, entry.envelope
        if env.source != SOURCE:
            raise LogCorrupt(where, "entry was not written by the orchestrator", source=env.source)
        # Entries are written as canonical bytes. Another spelling of a signed entry (a
        # duplicated key, other escapes) would chain under bytes its signature never saw; the
        # entries between verified ones are held to their bytes by the next entry's prev.
        try:
            spelled = canonical(entry.raw)
        except HsmfleetError as exc:
            raise LogCorrupt(where, f"not a log entry: {exc}") from None
        if spelled != entry.data:
            raise LogCorrupt(where, "not a log entry: not in canonical form")
        try:
            verify_envelope(env, self.trust, ROLE)
        except HsmfleetError as exc:
            raise LogCorrupt(where, f"signature refused: {exc}") from None
