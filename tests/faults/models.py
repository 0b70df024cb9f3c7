"""Sequential models of what the fleet offers, for the linearizability checker.

:class:`CasRegister` is one quorum record: writes, reads and compare-and-set. :class:`VaultUser`
is one user's vault record as the client sees it: registrations (numbered in the order one
client made them, as their request ids are), recoveries with a right or wrong PIN, and the
per-user budget of wrong guesses.
"""

from __future__ import annotations

from collections.abc import Hashable

from tests.faults.linearizability import UNKNOWN


class CasRegister:
    """Inputs ``("write", v)`` -> ``"ok"``; ``("read",)`` -> value; ``("cas", old, new)`` ->
    ``True``/``False``. The register starts empty (``None``)."""

    def init(self) -> Hashable:
        return None

    def step(self, state: Hashable, input: Hashable, output: Hashable) -> list[Hashable]:
        kind = input[0]
        if kind == "write":
            return [input[1]] if output in ("ok", UNKNOWN) else []
        if kind == "read":
            return [state] if output in (state, UNKNOWN) else []
        if kind == "cas":
            _, old, new = input
            swapped = state == old
            if output is UNKNOWN:
                return [new] if swapped else [state]
            return ([new] if swapped else [state]) if output == swapped else []
        raise ValueError(f"unknown register operation {input!r}")


def pin(k: int) -> bytes:
    return b"pin-%d" % k


def secret(k: int) -> bytes:
    return b"secret-%d" % k


WRONG = b"not-the-pin"


class VaultUser:
    """State ``(k, failures)``: the registration in force (0: none) and the wrong guesses
    counted since the user last proved the PIN.

    Inputs: ``("register", k)`` with :func:`pin` ``(k)``; ``("recover", k)`` guessing
    :func:`pin` ``(k)`` (``k == 0``: a wrong guess). Outputs: ``"ok"``, ``("ok", secret)``,
    ``("wrong_guess", remaining)``, ``"no_record"``, ``"budget_exhausted"``,
    ``"stale_registration"``, or :data:`UNKNOWN`.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def init(self) -> Hashable:
        return (0, 0)

    def step(self, state: Hashable, input: Hashable, output: Hashable) -> list[Hashable]:
        k, failures = state
        kind, guess_or_k = input
        exhausted = failures >= self.limit
        if kind == "register":
            if exhausted:
                return _only(state, output, "budget_exhausted")
            if guess_or_k <= k:
                return _only(state, output, "stale_registration")
            return _only((guess_or_k, failures), output, "ok")
        if k == 0:
            return _only(state, output, "no_record")
        if exhausted:
            return _only(state, output, "budget_exhausted")
        counted = (k, failures + 1)
        if guess_or_k == k:
            # The attempt is counted, then cleared; clearing is best effort (a crash may skip it).
            return [(k, 0), counted] if output in (("ok", secret(k)), UNKNOWN) else []
        return _only(counted, output, ("wrong_guess", self.limit - failures - 1))


def _only(state: Hashable, output: Hashable, expected: Hashable) -> list[Hashable]:
    return [state] if output in (expected, UNKNOWN) else []
