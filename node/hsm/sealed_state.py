"""Where the software HSM keeps its sealed state, and the rollback counter beside it.

The state file holds the sealed state (:mod:`node.hsm.sealing`); the counter file, next to it,
records the HSM's id and the generation of the last state written, in plain JSON. Each write
seals the next generation, then advances the counter; the generation and the HSM id are bound
into the state's associated data, so neither can be edited without breaking authentication.

What the counter defends against: replacing the state file *alone* with an older sealed copy
(restoring a backup of that file, or copying an exfiltrated old state back), which would bring
destroyed keys back to life; a state file of another HSM sealed under the same operator key; and
a state file deleted to reset the HSM. What it does not defend against: someone who replaces the
state file *and* the counter (or the whole directory) with older copies. A counter that resists
that must live where the holder of the disk cannot write it: a TPM NV counter, or a record the
fleet keeps of each member's HSM generation.

Writes also detect a second writer: a write happens only if the counter on disk is still the
one this handle last read or wrote (checked under an exclusive ``flock``), so two handles on one
state can never silently undo each other's keys.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from node.hsm.base import (
    HsmStateConflict,
    HsmStateRolledBack,
    HsmStateTampered,
    HsmUnavailable,
)
from node.hsm.sealing import HSM_ID_BYTES, check_operator_key, seal, unseal
from transport.files import write_file

STATE_FILE = "softhsm.sealed"
COUNTER_FILE = "softhsm.counter"
LOCK_FILE = "softhsm.lock"


@dataclass(frozen=True)
class Generation:
    """Which HSM, and how many states it has written."""

    hsm_id: bytes
    number: int


class SealedState:
    """One software HSM's state file and rollback counter in ``directory``."""

    def __init__(self, directory: Path, operator_key: bytes) -> None:
        check_operator_key(operator_key)
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / STATE_FILE
        self.counter_path = directory / COUNTER_FILE
        self._lock_path = directory / LOCK_FILE
        self._operator_key = operator_key
        self._at: Generation | None = None

    @property
    def generation(self) -> Generation | None:
        """The generation this handle last read or wrote; ``None`` before the first write."""
        return self._at

    def load(self) -> bytes | None:
        """The latest state's plaintext, or ``None`` for an HSM that never wrote one.

        Raises :class:`~node.hsm.base.OperatorKeyError` for a wrong key,
        :class:`HsmStateRolledBack` for an older state than the counter's, and
        :class:`HsmStateTampered` when the state or the counter is altered, missing, or belongs
        to another HSM. A counter one write behind the state (a crash between the two writes)
        is brought forward.
        """
        with self._exclusive():
            counter = self._read_counter()
            if not self.path.exists():
                if counter is not None and counter.number > 0:
                    raise HsmStateTampered(
                        "the sealed HSM state is missing, yet its counter records writes",
                        file=str(self.path),
                        generation=counter.number,
                    )
                self._at = counter
                return None
            opened = unseal(self._operator_key, self._read(self.path), str(self.path))
            if counter is None:
                raise HsmStateTampered(
                    "the HSM's rollback counter is missing beside its sealed state",
                    file=str(self.counter_path),
                )
            if opened.hsm_id != counter.hsm_id:
                raise HsmStateTampered(
                    "the sealed state belongs to another HSM", file=str(self.path)
                )
            if opened.generation < counter.number:
                raise HsmStateRolledBack(
                    "the sealed state is older than the last one this HSM wrote",
                    file=str(self.path),
                    found=opened.generation,
                    expected=counter.number,
                )
            if opened.generation > counter.number + 1:
                raise HsmStateTampered(
                    "the rollback counter is behind the sealed state by more than one write",
                    file=str(self.counter_path),
                    found=counter.number,
                    state=opened.generation,
                )
            at = Generation(opened.hsm_id, opened.generation)
            if opened.generation != counter.number:
                self._write_counter(at)
            self._at = at
            return opened.plaintext

    def store(self, plaintext: bytes) -> None:
        """Seal ``plaintext`` as the next generation, then advance the counter.

        Raises :class:`HsmStateConflict`, writing nothing, if the state changed on disk since
        this handle last read or wrote it, and :class:`HsmUnavailable` if the disk refuses.
        """
        with self._exclusive():
            if self._read_counter() != self._at:
                raise HsmStateConflict(
                    "the sealed HSM state was written by another handle since this one read it",
                    file=str(self.path),
                )
            at = self._at
            if at is None:
                # The counter exists before the first state does: a state without one is tampering.
                at = Generation(os.urandom(HSM_ID_BYTES), 0)
                self._write_counter(at)
                self._at = at
            following = Generation(at.hsm_id, at.number + 1)
            sealed = seal(self._operator_key, at.hsm_id, following.number, plaintext)
            try:
                write_file(self.path, sealed)
            except OSError as exc:
                raise HsmUnavailable(f"cannot write the sealed HSM state: {exc}") from exc
            self._write_counter(following)
            self._at = following

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        try:
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise HsmUnavailable(f"cannot open the HSM state lock: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _read(self, path: Path) -> bytes:
        try:
            return path.read_bytes()
        except OSError as exc:
            raise HsmUnavailable(f"cannot read {path.name}: {exc}") from exc

    def _read_counter(self) -> Generation | None:
        if not self.counter_path.exists():
            return None
        try:
            raw = json.loads(self._read(self.counter_path))
            hsm_id, number = bytes.fromhex(raw["hsm"]), raw["generation"]
            if len(hsm_id) != HSM_ID_BYTES or type(number) is not int or number < 0:
                raise ValueError("not an HSM id and a generation")
        except (ValueError, KeyError, TypeError) as exc:
            raise HsmStateTampered(
                f"the HSM's rollback counter does not parse: {exc}", file=str(self.counter_path)
            ) from exc
        return Generation(hsm_id, number)

    def _write_counter(self, at: Generation) -> None:
        data = json.dumps({"hsm": at.hsm_id.hex(), "generation": at.number}).encode()
        try:
            write_file(self.counter_path, data + b"\n")
        except OSError as exc:
            raise HsmUnavailable(f"cannot write the HSM's rollback counter: {exc}") from exc
