"""Building outbound envelopes: one producer id, its signer, and its id source."""

from __future__ import annotations

from messages.envelope import Envelope
from messages.ids import IdSource, format_time, id_time_ms
from messages.schema import Body
from messages.signing import Signer, sign_envelope


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
