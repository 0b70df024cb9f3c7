"""What an acceptor promises and accepts: the CASPaxos acceptor rules, pure.

CASPaxos (Rystsov 2018, arXiv:1802.07000, section 2.2): an acceptor returns a conflict for any
ballot not above one it already saw; otherwise it persists the ballot as a promise (prepare) or
the ballot and value as accepted (accept). These functions only decide; the caller persists the
new slot (fsync) before it answers.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from messages.quorum import NO_BALLOT, Ballot


@dataclass(frozen=True)
class Slot:
    """One acceptor's state for one record: its promise and the last value it accepted, with
    the justification that value came with (vetted records) and whether this acceptor's HSM
    checked it (a value copied in a catch-up was not)."""

    promised: Ballot = NO_BALLOT
    accepted: Ballot = NO_BALLOT
    value: bytes | None = None
    justification: bytes | None = None
    vetted: bool = True

    @property
    def seen(self) -> Ballot:
        """The highest ballot this acceptor knows for the record."""
        return max(self.promised, self.accepted)


EMPTY = Slot()


def prepare(slot: Slot, ballot: Ballot) -> Slot | None:
    """The slot after promising ``ballot``, or None (a conflict) if it is not above all seen."""
    if ballot <= slot.seen:
        return None
    return replace(slot, promised=ballot)


def accept(
    slot: Slot, ballot: Ballot, value: bytes | None, justification: bytes | None = None
) -> Slot | None:
    """The slot after accepting ``value`` (with its ``justification``) under ``ballot``, or
    None (a conflict) when a higher ballot was promised or this one or a higher one was accepted
    already. Accepting erases the promise, which is never above the accepted ballot."""
    if ballot < slot.promised or ballot <= slot.accepted:
        return None
    return Slot(accepted=ballot, value=value, justification=justification)


def accept_then_promise(
    slot: Slot,
    ballot: Ballot,
    value: bytes | None,
    then: Ballot | None,
    justification: bytes | None = None,
) -> Slot | None:
    """:func:`accept`, then promise ``then`` if given: the next prepare riding on this accept
    (CASPaxos 2.2.1). The promise always succeeds after the accept, as ``then`` is higher."""
    accepted = accept(slot, ballot, value, justification)
    if accepted is None or then is None:
        return accepted
    if then <= ballot:
        raise ValueError("the promised ballot must follow the accepted one")
    return replace(accepted, promised=then)


def adopt(
    slot: Slot, ballot: Ballot, value: bytes | None, justification: bytes | None = None
) -> Slot | None:
    """Catch-up: take a value another member accepted under ``ballot``, if the accept rule would.

    The proposer of ``ballot`` sent its accept message to every member of the accept set, so
    copying the value is the same as that message arriving late, which Paxos tolerates
    (CASPaxos 2.3, "network equivalence"). A copy the acceptor would have refused is dropped.
    The copy is not vetted: this acceptor's HSM never checked it, so it vouches for it only
    once it checks the value's justification itself.
    """
    adopted = accept(slot, ballot, value, justification)
    return None if adopted is None else replace(adopted, vetted=False)
