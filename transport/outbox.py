"""Building outbound envelopes: one producer id, its signer, and its id source."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from messages.envelope import Envelope
from messages.ids import format_time, id_time_ms, make_id
from messages.schema import Body
from messages.signing import Signer, sign_envelope


class IdSource:
    """Monotonic ULID generator reading a clock and a random source (the impure shell)."""

    def __init__(
        self,
        clock_ms: Callable[[], int] | None = None,
        entropy: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self._clock_ms = clock_ms or (lambda: time.time_ns() // 1_000_000)
        self._entropy = entropy
        self._last_ms = -1
        self._last_rand = 0

    def now_ms(self) -> int:
        """The current time of this source's clock, in milliseconds."""
        return self._clock_ms()

    def new(self) -> str:
        """A fresh id, strictly greater than every id this source returned before."""
        ms = max(self._clock_ms(), self._last_ms)
        if ms == self._last_ms:
            self._last_rand += 1
            if self._last_rand >= 1 << 80:
                ms += 1
                self._last_rand = int.from_bytes(self._entropy(10), "big") >> 1
        else:
            self._last_rand = int.from_bytes(self._entropy(10), "big") >> 1
        self._last_ms = ms
        return make_id(ms, self._last_rand.to_bytes(10, "big"))


class Outbox:
    """Wraps typed bodies in envelopes from ``source``, signed when a signer is given."""

    def __init__(self, source: str, signer: Signer | None = None, ids: IdSource | None = None):
        self.source = source
        self.signer = signer
        self.ids = ids or IdSource()

    @property
    def blocking(self) -> bool:
        """Whether signing may wait on a device (a signer that says ``blocking = True``), so that
        callers on an event loop sign in a thread."""
        return bool(getattr(self.signer, "blocking", False))

    def envelope(
        self, body: Body, *, corr: str | None = None, causation: str | None = None
    ) -> Envelope:
        """A fresh envelope around ``body``, stamped with a new id and the time inside that id."""
        message_id = self.ids.new()
        env = Envelope(
            type=body.TYPE,
            v=body.VERSION,
            id=message_id,
            at=format_time(id_time_ms(message_id)),
            source=self.source,
            body=body.to_json(),
            corr=corr,
            causation=causation,
        )
        return sign_envelope(env, self.signer) if self.signer is not None else env
