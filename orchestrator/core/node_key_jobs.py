"""The requests identity-key rotations wait on, and the core's input for their answers.

Like the service's other effects these are derived from the state, not remembered: each
rotation waiting for its node (:func:`orchestrator.core.node_keys.waiting`) is one
:class:`NodeKeyJob`, a request on ``fleet.node.<id>.cmd.rotate``: the challenge while it is
open, the adoption once the new key is on record. Its raw answer goes back into the core as a
:class:`RotationAnswer` or :class:`AdoptionAnswer`, so the judgement is made (and replayed) there.
"""

from __future__ import annotations

from dataclasses import dataclass

from messages.node_keys import (
    AdoptIdentity,
    AdoptionAnswer,
    RotateIdentity,
    RotationAnswer,
)
from orchestrator.core import node_keys
from orchestrator.core.state import State

ADOPTION_ATTEMPTS = 20
"""Adoption requests before a job gives up until the next kick (an adoption has no deadline)."""


@dataclass(frozen=True)
class NodeKeyJob:
    """One request a rotation waits on: ``body`` to ``node_id``, until ``deadline_ms`` (an
    open challenge's expiry) or, for an adoption, :data:`ADOPTION_ATTEMPTS` tries."""

    key: str
    rotation_id: str
    node_id: str
    body: RotateIdentity | AdoptIdentity
    deadline_ms: int | None

    def answer(self, reply: bytes) -> RotationAnswer | AdoptionAnswer:
        """The core's input for the node's raw ``reply``."""
        if isinstance(self.body, RotateIdentity):
            return RotationAnswer(rotation_id=self.rotation_id, node_id=self.node_id, reply=reply)
        return AdoptionAnswer(rotation_id=self.rotation_id, node_id=self.node_id, reply=reply)


def node_key_jobs(state: State) -> list[NodeKeyJob]:
    """The requests the rotations in ``state`` wait on, oldest rotation first."""
    jobs = []
    for rotation in node_keys.waiting(state):
        identity = state.nodes[rotation.node_id].identity
        if identity is None:
            continue  # judged not_enrolled when answered; nothing to prove it with meanwhile
        body: RotateIdentity | AdoptIdentity
        if rotation.status == "open":
            body = RotateIdentity(
                nonce=rotation.nonce, expires_ms=rotation.expires_ms, identity_kid=identity.kid
            )
            deadline: int | None = rotation.expires_ms
        else:
            body = AdoptIdentity(
                identity_alg=identity.identity_alg, identity_key=identity.identity_key
            )
            deadline = None
        key = f"node-key:{rotation.rotation_id}:{rotation.status}"
        jobs.append(NodeKeyJob(key, rotation.rotation_id, rotation.node_id, body, deadline))
    return jobs
