"""The cosigner's request/reply protocol on ``cosign.<cosigner_id>.sign``.

Requests are envelopes signed by the orchestrator (role :data:`REQUESTER_ROLE`); answers are
envelopes signed by the cosigner's own key (role :data:`COSIGNER_ROLE`, owner = cosigner id), or
:class:`transport.bus.Rejected` with the error's kind.

- :class:`SignRequest` -> :class:`Signed`: check a stage bundle or fleet-key artifact, log it,
  answer with the statement, its signature, the leaf's inclusion proof and the checkpoint.
- :class:`ReceiptRequest` -> :class:`Signed`: the same answer for a document already logged
  (for a requester whose first answer was lost).
- :class:`WitnessRequest` -> :class:`Witnessed`: cosign another log's checkpoint (C2SP
  tlog-witness semantics: ``old_size`` must be the size the witness last saw, else the answer
  carries that size and no cosignature).
- :class:`CheckpointRequest` -> :class:`LatestCheckpoint`; :class:`InclusionRequest` and
  :class:`ConsistencyRequest` -> :class:`Proof`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from messages.schema import Body, message
from messages.statement import Statement

REQUESTER_ROLE = "orchestrator"
COSIGNER_ROLE = "cosigner"


@message
@dataclass(frozen=True)
class SignRequest(Body):
    """Log ``document`` (a stage bundle or fleet-key artifact, as JSON) and sign for it."""

    TYPE = "cosigner.sign"
    document: dict[str, Any]


@message
@dataclass(frozen=True)
class ReceiptRequest(Body):
    """Answer again for the document with ``digest``, already logged."""

    TYPE = "cosigner.receipt"
    digest: str


@message
@dataclass(frozen=True)
class Signed(Body):
    """A logged document: the signed statement, and its leaf's proof against ``checkpoint``."""

    TYPE = "cosigner.signed"
    statement: Statement
    signature: bytes
    inclusion: tuple[bytes, ...]
    checkpoint: str


@message
@dataclass(frozen=True)
class WitnessRequest(Body):
    """Cosign ``checkpoint`` (a signed note of another log), proving it extends ``old_size``."""

    TYPE = "cosigner.witness"
    old_size: int
    consistency: tuple[bytes, ...]
    checkpoint: str


@message
@dataclass(frozen=True)
class Witnessed(Body):
    """The witness's cosignature line (newline included), or None with the size it last saw
    of that log when ``old_size`` was not that size."""

    TYPE = "cosigner.witnessed"
    size: int
    cosignature: str | None


@message
@dataclass(frozen=True)
class CheckpointRequest(Body):
    """The cosigner's latest signed checkpoint, please."""

    TYPE = "cosigner.checkpoint_request"


@message
@dataclass(frozen=True)
class LatestCheckpoint(Body):
    TYPE = "cosigner.checkpoint"
    checkpoint: str


@message
@dataclass(frozen=True)
class InclusionRequest(Body):
    """The inclusion proof of leaf ``index`` in the tree of ``size`` leaves."""

    TYPE = "cosigner.inclusion_request"
    index: int
    size: int


@message
@dataclass(frozen=True)
class ConsistencyRequest(Body):
    """The consistency proof from the tree of ``old_size`` leaves to that of ``size``."""

    TYPE = "cosigner.consistency_request"
    old_size: int
    size: int


@message
@dataclass(frozen=True)
class Proof(Body):
    TYPE = "cosigner.proof"
    proof: tuple[bytes, ...]
