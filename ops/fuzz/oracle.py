"""What the fuzzer expects of a receiver, and how it notices a crash.

:func:`expected_refusal` runs the gate's checks (:mod:`transport.gate`) in the gate's order
without remembering anything and without counting, so the fuzzer knows before sending whether a
candidate must be refused at the gate, and of which kind. :class:`CrashWatch` collects every
error-level log record of the process (structlog and the standard library, where nats.py reports
an exception that escaped a subscription callback) while a campaign runs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import structlog

from messages.envelope import Envelope
from messages.errors import MessageError, ReplayedMessage, StaleMessage
from messages.ids import parse_time
from messages.replay import FutureMessage
from messages.schema import REGISTRY
from messages.signing import TrustStore, verify_envelope

ERROR_LEVELS = frozenset({"error", "critical", "exception"})


@dataclass(frozen=True)
class GateModel:
    """The checks of one receiver's gate: its trust, the role it expects, its time window."""

    trust: TrustStore
    role: str | None
    window_ms: int = 5 * 60 * 1000

    def expected_refusal(self, data: bytes, seen: frozenset[str], now_ms: int) -> str | None:
        """The kind of error the gate refuses ``data`` with, or None if it admits it.

        ``seen`` are the ids the receiver has already admitted. An exception other than a
        :class:`MessageError` propagates: the shared decoding code itself failed.
        """
        try:
            env = Envelope.decode(data)
            if self.role is not None:
                verify_envelope(env, self.trust, self.role)
            REGISTRY.parse(env)
            at = parse_time(env.at)
            if now_ms - at > self.window_ms:
                raise StaleMessage("behind the window")
            if at - now_ms > self.window_ms:
                raise FutureMessage("ahead of the window")
            if env.id in seen:
                raise ReplayedMessage("seen")
        except MessageError as exc:
            return exc.kind
        return None


@dataclass
class CrashWatch:
    """Error-level log records seen while watching, as short descriptions."""

    records: list[str] = field(default_factory=list)

    def structlog_processor(self, _logger: Any, method: str, event: dict[str, Any]) -> Any:
        if method in ERROR_LEVELS:
            self.records.append(f"{event.get('event')}: {event.get('exc_info') or event}")
        raise structlog.DropEvent

    @contextmanager
    def watching(self) -> Iterator[CrashWatch]:
        """Route every structlog event through this watch (dropping the rest: a reject logs a
        warning, and a campaign makes hundreds of thousands) and catch standard errors."""
        saved = structlog.get_config()
        handler = _Collect(self)
        root = logging.getLogger()
        structlog.configure(processors=[self.structlog_processor], cache_logger_on_first_use=False)
        root.addHandler(handler)
        try:
            yield self
        finally:
            root.removeHandler(handler)
            structlog.configure(**saved)


class _Collect(logging.Handler):
    def __init__(self, watch: CrashWatch) -> None:
        super().__init__(level=logging.ERROR)
        self.watch = watch

    def emit(self, record: logging.LogRecord) -> None:
        detail = f" ({record.exc_info[1]!r})" if record.exc_info else ""
        self.watch.records.append(f"{record.name}: {record.getMessage()}{detail}")
