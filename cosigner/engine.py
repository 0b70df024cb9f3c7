"""One cosigner at work: its notary and witness behind an asyncio front that batches writes.

:class:`Cosigner` is what the NATS service, the HTTP API and in-process callers all use. Signing
requests that arrive together are logged in one batch (one fsynced append, one checkpoint); the
blocking SQLite work runs in a worker thread so the event loop keeps answering reads.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import structlog

from cosigner.config import CosignerConfig, load_config, load_key
from cosigner.notary import Notary
from cosigner.witness import Witness, WitnessConflict
from messages.cosigning import Signed, Witnessed
from messages.errors import HsmfleetError
from messages.signing import Ed25519Signer

MAX_BATCH = 256
log = structlog.get_logger("hsmfleet.cosigner")

Clock = Callable[[], int]


class CosignerClosed(HsmfleetError):
    """The cosigner is shutting down and takes no more signing requests."""

    kind = "cosigner_closed"


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class Cosigner:
    """A cosigner's log and witness, with batched, serialized writes."""

    def __init__(
        self,
        config: CosignerConfig,
        signer: Ed25519Signer,
        notary: Notary,
        witness: Witness,
        clock_ms: Clock = wall_clock_ms,
    ) -> None:
        self.config = config
        self.signer = signer
        self.notary = notary
        self.witness = witness
        self._clock_ms = clock_ms
        self._queue: asyncio.Queue[tuple[Any, asyncio.Future[Signed | HsmfleetError]] | None] = (
            asyncio.Queue()
        )
        self._worker: asyncio.Task[None] | None = None
        self._closed = False
        self._witness_lock = asyncio.Lock()
        self.batches = 0

    @classmethod
    def open(cls, state: Path, clock_ms: Clock = wall_clock_ms) -> Cosigner:
        """Open the cosigner whose key, configuration, log and store live in ``state``."""
        config = load_config(state)
        signer = load_key(state)
        notary = Notary.open(Path(state), config.name, signer)
        witness = Witness(
            config.name,
            signer,
            [pin.log_verifier for pin in config.witness_of],
            notary.store,
        )
        return cls(config, signer, notary, witness, clock_ms)

    @property
    def id(self) -> str:
        return self.config.id

    @property
    def name(self) -> str:
        return self.config.name

    def now_ms(self) -> int:
        return self._clock_ms()

    async def close(self) -> None:
        """Stop: requests still waiting fail with :class:`CosignerClosed`, the batch being
        logged and a cosignature being made are finished and answered, then the log and store
        are closed (never under a write in progress)."""
        self._closed = True
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if item is not None and not item[1].done():
                item[1].set_exception(CosignerClosed("the cosigner is shutting down"))
        if self._worker is not None:
            self._queue.put_nowait(None)
            await self._worker
            self._worker = None
        async with self._witness_lock:
            self.notary.close()

    async def sign(self, document: Any) -> Signed:
        """Log ``document`` (raw JSON) and return the signed answer, or raise why not."""
        if self._closed:
            raise CosignerClosed("the cosigner is shutting down")
        if self._worker is None:
            self._worker = asyncio.create_task(self._run(), name=f"cosigner-{self.id}")
        future: asyncio.Future[Signed | HsmfleetError] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((document, future))
        answer = await future
        if isinstance(answer, HsmfleetError):
            raise answer
        return answer

    async def _run(self) -> None:
        # close() empties the queue before it puts the stop mark (None), and sign() queues
        # nothing after close(): the mark is the last item, and it arrives alone.
        while (first := await self._queue.get()) is not None:
            batch = [first]
            while len(batch) < MAX_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            documents = [document for document, _ in batch]
            try:
                answers: Sequence[Signed | HsmfleetError] = await asyncio.to_thread(
                    self.notary.log, documents, self.now_ms()
                )
            except Exception as exc:  # a failure of the worker must not hang the requesters
                log.exception("signing batch failed", size=len(batch))
                error = (
                    exc
                    if isinstance(exc, HsmfleetError)
                    else HsmfleetError(f"the cosigner failed: {exc}")
                )
                answers = [error] * len(batch)
            self.batches += 1
            for (_, future), answer in zip(batch, answers, strict=True):
                if not future.done():
                    future.set_result(answer)

    async def receipt(self, digest: str) -> Signed:
        """The answer for a document already logged."""
        return await asyncio.to_thread(self.notary.receipt, digest)

    async def cosign(self, old_size: int, consistency: Sequence[bytes], note: str) -> Witnessed:
        """Cosign another log's checkpoint as a witness; a size conflict is an answer too."""
        async with self._witness_lock:
            if self._closed:
                raise CosignerClosed("the cosigner is shutting down")
            try:
                return await asyncio.to_thread(
                    self.witness.cosign, old_size, consistency, note, self.now_ms() // 1000
                )
            except WitnessConflict as exc:
                return Witnessed(size=exc.size, cosignature=None)

    def stats(self) -> dict[str, Any]:
        """Counters: what was logged, cosigned and refused, by kind."""
        return {
            "id": self.id,
            "name": self.name,
            "size": self.notary.size,
            "logged": self.notary.accepted,
            "batches": self.batches,
            "cosigned": self.witness.cosigned,
            "rejects": dict(self.notary.rejects + self.witness.rejects),
        }
