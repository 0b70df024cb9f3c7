"""What an acceptor promises and accepts: the CASPaxos acceptor rules, pure.

CASPaxos (Rystsov 2018, arXiv:1802.07000, section 2.2): an acceptor returns a conflict for any
ballot not above one it already saw; otherwise it persists the ballot as a promise (prepare) or
the ballot and value as accepted (accept). These functions only decide; the caller persists the
new slot (fsync) before it answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple


class Ballot(NamedTuple):
    """``(n, by)``: a counter and the proposing member's id, compared counter first."""

    n: int
    by: str


NO_BALLOT = Ballot(0, "")


@dataclass(frozen=True)
class Slot:
    """One acceptor's state for one record: its promise and the last value it accepted."""

    promised: Ballot = NO_BALLOT
    accepted: Ballot = NO_BALLOT
    value: bytes | None = None

    @property
    def seen(self) -> Ballot:
        """The highest ballot this acceptor knows for the record."""
        return max(self.promised, self.accepted)


EMPTY = Slot()


def prepare(slot: Slot, ballot: Ballot) -> Slot | None:
    """The slot after promising ``ballot``, or None (a conflict) if it is not above all seen."""
    if ballot <= slot.seen:
        return None
    return Slot(promised=ballot, accepted=slot.accepted, value=slot.value)


def accept(slot: Slot, ballot: Ballot, value: bytes | None) -> Slot | None:
    """The slot after accepting ``value`` under ``ballot``, or None (a conflict) when a higher
    ballot was promised or this one or a higher one was accepted already. Accepting erases the
    promise, which is never above the accepted ballot."""
    if ballot < slot.promised or ballot <= slot.accepted:
        return None
    return Slot(promised=NO_BALLOT, accepted=ballot, value=value)


def accept_then_promise(
    slot: Slot, ballot: Ballot, value: bytes | None, then: Ballot | None
) -> Slot | None:
    """:func:`accept`, then promise ``then`` if given: the next prepare riding on this accept
    (CASPaxos 2.2.1). The promise always succeeds after the accept, as ``then`` is higher."""
    if then is None:
        return accept(slot, ballot, value)
    if then <= ballot:
        raise ValueError("the promised ballot must follow the accepted one")
    if ballot < slot.promised or ballot <= slot.accepted:
        return None
    return Slot(promised=then, accepted=ballot, value=value)


def adopt(slot: Slot, ballot: Ballot, value: bytes | None) -> Slot | None:
    """Catch-up: take a value another member accepted under ``ballot``, if the accept rule would.

    The proposer of ``ballot`` sent its accept message to every member of the accept set, so
    copying the value is the same as that message arriving late, which Paxos tolerates
    (CASPaxos 2.3, "network equivalence"). A copy the acceptor would have refused is dropped.
    """
    return accept(slot, ballot, value)
