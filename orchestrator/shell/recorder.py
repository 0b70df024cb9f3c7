"""The decide → seal → fold loop in memory: a log recorded without NATS.

Golden fixtures, pure tests and benchmarks record logs with it; the service does the same steps
with an append to JetStream in the middle. Seeds come from a counter unless given, so a
recording is reproducible.
"""

from __future__ import annotations

from messages.envelope import Envelope
from messages.events import Decision, LogEntry
from messages.inputs import TakeLease
from messages.schema import Body
from messages.signing import Ed25519Signer, TrustStore
from orchestrator.core.context import Context
from orchestrator.core.decisions import decide
from orchestrator.core.state import State, evolve
from orchestrator.shell.keys import trust_for
from orchestrator.shell.log import GENESIS, LogReader, entry_digest, seal
from orchestrator.shell.replay import Replayer


class Recorder:
    """Records decisions as signed, chained entries in :attr:`entries` (wire bytes)."""

    def __init__(self, signer: Ed25519Signer | None = None, holder: str = "orch-a") -> None:
        self.signer = signer or Ed25519Signer.generate()
        self.holder = holder
        self.epoch = 0
        self.state = State()
        self.head = GENESIS
        self.entries: list[bytes] = []
        self._seeds = 0

    def context(self, now_ms: int) -> Context:
        """The context of the next decision: ``now_ms``, the next seed, the current lease."""
        self._seeds += 1
        return Context(now_ms, self._seeds.to_bytes(16, "big"), self.epoch, self.holder)

    def decide(self, command: Body, now_ms: int) -> list[LogEntry]:
        """Decide on ``command`` at ``now_ms``, record the decision and fold its events."""
        ctx = self.context(now_ms)
        events = decide(self.state, command, ctx)
        self.record(command, events, ctx)
        return events

    def record(
        self,
        command: Body,
        events: list[LogEntry],
        ctx: Context,
        written: list[LogEntry] | None = None,
    ) -> None:
        """Seal ``events`` as the decision on ``command`` (whatever decide would say) and fold.

        ``written``, when given, is what goes into the log instead: the same events as an older
        version of their types wrote them.
        """
        if not events:
            return
        sealed = seal(command, written or events, ctx, self.head, self.signer)
        decision = Decision.from_json(Envelope.decode(sealed[0].data).body)
        for item, entry in zip(sealed, [decision, *events], strict=True):
            self.entries.append(item.data)
            self.head = entry_digest(item.data)
            self.state = evolve(self.state, entry)

    @classmethod
    def resume(cls, entries: list[bytes], signer: Ed25519Signer, holder: str) -> Recorder:
        """A recorder continuing the log ``entries`` as a restarted orchestrator would: only
        the log survives, every decision in it is re-run on the way (a divergence raises), and
        the next seed follows the ones the log used. Take the lease before deciding."""
        recorder = cls(signer, holder)
        reader, replayer = LogReader(recorder.trust()), Replayer(check=True)
        for index, data in enumerate(entries, start=1):
            record = reader.admit(data, f"entry {index}")
            replayer.apply(record)
            if isinstance(record.entry, Decision):
                recorder.epoch = max(recorder.epoch, record.entry.epoch)
        recorder.state = replayer.finish("end of log")
        recorder.entries = list(entries)
        recorder.head = reader.head
        recorder._seeds = replayer.decisions
        return recorder

    def take_lease(self, epoch: int, now_ms: int) -> None:
        """Record a takeover by :attr:`holder` under ``epoch``."""
        self.epoch = epoch
        self.decide(TakeLease(), now_ms)

    def trust(self) -> TrustStore:
        return trust_for(self.signer)

    def jsonl(self) -> bytes:
        """The entries as JSON lines (without the header line of an exported log)."""
        return b"".join(data + b"\n" for data in self.entries)
