"""One cosigner at work: its notary and witness behind an asyncio front that batches writes.

:class:`Cosigner` is what the NATS service, the HTTP API and in-process callers all use. Signing
requests that arrive together are logged in one batch (one fsynced append, one checkpoint); the
blocking SQLite work runs in a worker thread so the event loop keeps answering reads.

:meth:`Cosigner.rotate_key` moves the log to a new key (:mod:`cosigner.keys`); the witness
follows the keys of the logs it witnesses as their rotations are logged here.
:meth:`Cosigner.start_refresh` re-signs the latest checkpoint with a timestamp every
``refresh_s`` seconds in a background task, even when nothing is logged, so verifiers with a
maximum checkpoint age see a fresh view (:meth:`cosigner.notary.Notary.refresh`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import structlog

from cosigner.config import ConfigError, CosignerConfig, load_config
from cosigner.keys import available_keys, next_key, record_version, settle
from cosigner.notary import Notary
from cosigner.witness import Witness, WitnessConflict
from messages.cosigning import Signed, Witnessed
from messages.errors import HsmfleetError
from messages.ids import format_time
from messages.origin import OPERATOR
from messages.rotation import KeyRotation, SignerKey
from messages.signing import ED25519

MAX_BATCH = 256
REFRESH_S = 60.0
"""Default period of checkpoint re-signing, in seconds."""
log = structlog.get_logger("hsmfleet.cosigner")

Clock = Callable[[], int]


class CosignerClosed(HsmfleetError):
    """The cosigner is shutting down and takes no more signing requests."""

    kind = "cosigner_closed"


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class CurrentKey:
    """The cosigner's key in force, followed through rotations: the signer of its answers."""

    alg = ED25519

    def __init__(self, notary: Notary) -> None:
        self._notary = notary

    @property
    def public_key(self) -> bytes:
        return self._notary.signer.public_key

    @property
    def kid(self) -> str:
        return self._notary.signer.kid

    def sign(self, data: bytes) -> bytes:
        return self._notary.signer.sign(data)


class Cosigner:
    """A cosigner's log and witness, with batched, serialized writes."""

    def __init__(
        self,
        config: CosignerConfig,
        notary: Notary,
        witness: Witness,
        clock_ms: Clock = wall_clock_ms,
        state: Path | None = None,
        refresh_s: float = REFRESH_S,
    ) -> None:
        self.config = config
        self.signer = CurrentKey(notary)
        self.notary = notary
        self.witness = witness
        self.state = state
        self.refresh_s = refresh_s
        self._clock_ms = clock_ms
        self._refresher: asyncio.Task[None] | None = None
        self._queue: asyncio.Queue[tuple[Any, asyncio.Future[Signed | HsmfleetError]] | None] = (
            asyncio.Queue()
        )
        self._worker: asyncio.Task[None] | None = None
        self._closed = False
        self._witness_lock = asyncio.Lock()
        self._rotating = asyncio.Lock()
        self.batches = 0

    @classmethod
    def open(
        cls, state: Path, clock_ms: Clock = wall_clock_ms, refresh_s: float = REFRESH_S
    ) -> Cosigner:
        """Open the cosigner whose keys, configuration, log and store live in ``state``; a key
        rotation a crash left half done is finished (the log says which key is in force)."""
        state = Path(state)
        config = load_config(state)
        keys = available_keys(state)
        known = {
            pin.name: (SignerKey(ED25519, pin.public_key), pin.version) for pin in config.witness_of
        }
        if config.operator is not None:
            pinned = config.operator
            known[OPERATOR] = (SignerKey(pinned.alg, pinned.public_key), pinned.version)
        notary = Notary.open(state, config.name, keys[0], keys[1:], known)
        try:
            settle(state, notary.signer.public_key)
            record_version(state, notary.own_version)
        except BaseException:
            notary.close()
            raise
        witness = Witness(
            config.name,
            notary.signer,
            [pin.log_verifier for pin in config.witness_of],
            notary.store,
        )
        witness.follow(notary.signer_keys())
        return cls(config, notary, witness, clock_ms, state, refresh_s)

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
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
            self._refresher = None
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
            try:
                self.witness.follow(self.notary.signer_keys())
                self.witness.use_key(self.notary.signer)
            except Exception:  # the worker must outlive it, or every later request would hang
                log.exception("the witness could not take the log's keys")
            for (_, future), answer in zip(batch, answers, strict=True):
                if not future.done():
                    future.set_result(answer)

    async def rotate_key(self) -> KeyRotation:
        """Move the log to a new key: make it (``key.next``), log the rotation statement both
        keys sign, then make the new key the one on disk; the old one is destroyed. Statements
        from the rotation's entry on and checkpoints that include it are signed with the new
        key. Returns the logged rotation (to submit to the other cosigners)."""
        if self.state is None:
            raise ConfigError("this cosigner has no state directory to keep a new key in")
        async with self._rotating:  # one at a time: each starts from the key the last settled
            new = await asyncio.to_thread(next_key, self.state)
            self.notary.hold(new)
            rotation = KeyRotation.make(
                self.name,
                self.notary.own_version + 1,
                self.notary.signer,
                new,
                format_time(self.now_ms()),
            )
            await self.sign(rotation.to_json())
            await asyncio.to_thread(settle, self.state, new.public_key)
            await asyncio.to_thread(record_version, self.state, rotation.version)
        log.info("log key rotated", id=self.id, version=rotation.version, kid=new.kid)
        return rotation

    async def refresh(self) -> str:
        """Re-sign the latest checkpoint with the current time; the note served from now on."""
        return await asyncio.to_thread(self.notary.refresh, self.now_ms() // 1000)

    def start_refresh(self, period_s: float | None = None) -> None:
        """Re-sign the latest checkpoint now and every ``period_s`` seconds (default
        :attr:`refresh_s`) in a background task, until :meth:`close`. Starting it again with
        the same period does nothing; with another, the new period replaces the old."""
        period = self.refresh_s if period_s is None else period_s
        if self._closed or (self._refresher is not None and period == self.refresh_s):
            return
        if self._refresher is not None:
            self._refresher.cancel()  # another period: the new task replaces it
        self.refresh_s = period
        self._refresher = asyncio.create_task(
            self._refresh_every(period), name=f"cosigner-refresh-{self.id}"
        )

    async def _refresh_every(self, period_s: float) -> None:
        while True:
            try:
                await self.refresh()
            except HsmfleetError:
                log.exception("checkpoint refresh failed", id=self.id)
            await asyncio.sleep(period_s)

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
