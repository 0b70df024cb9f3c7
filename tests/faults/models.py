"""Sequential models of what the fleet offers, for the linearizability checker.

:class:`CasRegister` is one quorum record: writes, reads and compare-and-set. :class:`VaultUser`
is one user's vault record as the client sees it: registrations (numbered in the order one
client made them, as their request ids are; over a live record each proves the PIN in force),
recoveries with a right or wrong PIN, and the per-user limit of failed logins.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

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
    """State ``(k, failures)``: the registration in force (0: none) and the user's failures, the
    attempts counted since the last one a finished login proved (the record's ``attempts -
    cleared``). Every login (a recovery, or the proof of the PIN a re-registration carries) is
    one attempt, counted before the client learns anything; a login with the right PIN clears
    the failures when it finishes.

    Inputs: ``("register", k, None)``: a first registration with :func:`pin` ``(k)``;
    ``("register", k, p)``: a registration over the user's record, proving :func:`pin` ``(p)``;
    ``("recover", g)``: a login guessing :func:`pin` ``(g)`` (``g == 0``: a wrong guess).
    Outputs: ``"ok"``, ``("ok", secret)``, ``("wrong_guess", remaining)``, ``"no_record"``,
    ``"budget_exhausted"``, ``"registration_exists"``, ``"stale_registration"``, or
    :data:`UNKNOWN` (it may have taken effect, in part or whole, or not at all).

    ``remaining`` may be lower than the model's: a member that lost track of its commit finds it
    by a read, which shows the attempts counted after it too; it is never higher.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def init(self) -> Hashable:
        return (0, 0)

    def step(self, state: Hashable, input: Hashable, output: Hashable) -> list[Hashable]:
        outcomes = self._outcomes(state, input)
        if output is UNKNOWN:  # any effect, or none at all
            return list(dict.fromkeys([state, *(after for after, _ in outcomes)]))
        return [after for after, expected in outcomes if expected(output)]

    def _outcomes(self, state: Hashable, input: Hashable) -> list[tuple[Hashable, Expected]]:
        """What ``input`` may do from ``state``: each next state with the output it gives
        (``never``: a partial effect only an unknown outcome can have)."""
        k, failures = state
        kind, *args = input
        if kind == "register" and args[1] is None:
            if k != 0:
                return [(state, equal("registration_exists"))]
            return [((args[0], 0), equal("ok"))]
        guessed = args[1] if kind == "register" else args[0]
        if k == 0:
            return [(state, equal("no_record"))]
        if failures >= self.limit:
            return [(state, equal("budget_exhausted"))]
        counted = (k, failures + 1)
        if guessed != k:
            return [(counted, self._wrong(failures + 1))]
        if kind == "recover":
            return [((k, 0), equal(("ok", secret(k)))), (counted, never)]
        if args[0] <= k:  # the PIN proven, the registration refused: the login stays counted
            return [(counted, equal("stale_registration"))]
        return [((args[0], 0), equal("ok")), (counted, never)]

    def _wrong(self, failures: int) -> Expected:
        """A wrong guess answered with at most the guesses this history leaves. Fewer are
        allowed: a guess whose outcome the client never learned (an unknown outcome) may have
        been counted. That attempts are not counted twice the fault tests check apart, on the
        members' journals (each attempt answered once, none past the limit)."""
        most = self.limit - failures

        def expected(output: Hashable) -> bool:
            return (
                isinstance(output, tuple)
                and output[0] == "wrong_guess"
                and isinstance(output[1], int)
                and 0 <= output[1] <= most
            )

        return expected


Expected = Callable[[Hashable], bool]


def equal(value: Hashable) -> Expected:
    return lambda output: output == value


def never(_output: Hashable) -> bool:
    return False
