"""The gate every inbound message passes before any handler sees it.

Decode, check the signature against the trust store for the expected role, refuse replays and
stale messages, and parse the body against its schema. A message that fails any step is counted
by the kind of its error, logged, and dropped; nothing behind the gate changes.

Every reject is counted twice over: in the gate's own ``rejects`` (by kind, for the receiver
that owns the gate) and in the process-wide Prometheus counter :data:`REJECTED` (by kind), which
a process exposing the default registry shows on its metrics page. A message that passes the
gate but is refused by its handler is counted the same way through :meth:`Gate.refused`.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from prometheus_client import Counter as PromCounter

from messages.envelope import Envelope
from messages.errors import MessageError
from messages.replay import ReplayGuard
from messages.schema import REGISTRY, Body, Registry
from messages.signing import TrustedKey, TrustStore, verify_envelope

log = structlog.get_logger("hsmfleet.gate")

REJECTED = PromCounter(
    "hsmfleet_messages_rejected",
    "Inbound messages refused, at a gate or by the handler behind it, by the error's kind",
    ["kind"],
)


@dataclass(frozen=True)
class Received:
    """A message that passed the gate: its envelope as sent, its typed body, and its signer."""

    envelope: Envelope
    body: Body
    signer: TrustedKey | None


class Gate:
    """Admits messages for one receiver; counts every reject by kind in ``rejects``."""

    def __init__(
        self,
        trust: TrustStore,
        *,
        registry: Registry = REGISTRY,
        replay: ReplayGuard | None = None,
        clock_ms: Callable[[], int] | None = None,
    ) -> None:
        self.trust = trust
        self.registry = registry
        self.replay = replay if replay is not None else ReplayGuard()
        self._clock_ms = clock_ms or (lambda: time.time_ns() // 1_000_000)
        self.rejects: Counter[str] = Counter()
        self.accepted = 0

    def admit(
        self, data: bytes, role: str | None, *, unsigned_types: frozenset[str] = frozenset()
    ) -> Received:
        """Open ``data`` as a message signed for ``role``.

        ``role=None`` admits unsigned messages of any type (such as announcements), and
        ``unsigned_types`` names types admitted unsigned even when a role is expected. Raises a
        :class:`MessageError` subclass, after counting and logging it, on any defect.
        """
        try:
            env = Envelope.decode(data)
            must_sign = role is not None and env.type not in unsigned_types
            signer = verify_envelope(env, self.trust, role) if must_sign else None
            body = self.registry.parse(env)
            self.replay.check(env, self._clock_ms())
        except MessageError as exc:
            self._count(exc.kind)
            log.warning("message rejected", kind=exc.kind, reason=str(exc), size=len(data))
            raise
        self.accepted += 1
        return Received(env, body, signer)

    def refused(self, kind: str) -> None:
        """Count a message that passed the gate but that its handler refused, by ``kind``."""
        self._count(kind)

    def _count(self, kind: str) -> None:
        self.rejects[kind] += 1
        REJECTED.labels(kind).inc()
