"""The core's side of signer-key rotation (pure): a cosigner's logged log-key rotation,
checked and recorded, so the cosigners' later answers are checked with the key in force at
each position of their log (:func:`orchestrator.core.evidence.vouchers`).

The shell submits every notice of the orchestrator's rotation chain
(:func:`orchestrator.shell.keys.load_rotation_chain`) not yet recorded. A rotation is recorded when
its old key is the cosigner's key in force here (the last one recorded, else a key a plan pins
for it), its version follows, both keys signed it, and the cosigner's own log proves it,
checked with the new key. The operator's rotations change nothing the core checks: they are
taken without an event.
"""

from __future__ import annotations

from typing import Any

from messages.documents import DocumentError
from messages.errors import MessageError
from messages.events import LogEntry, SignerKeyRotated
from messages.inputs import RecordSignerRotation
from messages.log_proofs import check_logged
from messages.origin import OPERATOR
from messages.pins import CosignerPin
from messages.rotation import KeyRotation, SignerKey, check_rotation
from messages.signing import ED25519
from messages.validation import LoggedNotice
from messages.verification import VerificationError
from orchestrator.core.errors import CommandRefused
from orchestrator.core.state import State, signer_keys_after


class BadSignerRotation(CommandRefused):
    """A signer-key rotation notice the core cannot record: not a logged rotation, or one that
    does not follow from the cosigner's key in force, or not proven by the cosigner's log."""

    kind = "bad_signer_rotation"


def recorded(state: State, rotation: KeyRotation) -> bool:
    """Whether ``rotation`` is on record (an operator's needs no record)."""
    if rotation.signer == OPERATOR:
        return True
    walked = state.signer_keys.get(rotation.signer, ())
    return any(
        k.version == rotation.version and k.public_key == rotation.new.public_key for k in walked
    )


def _pinned(state: State, signer: str) -> set[bytes]:
    return {
        pin.public_key
        for rollout in state.book.rollouts.values()
        for pin in rollout.plan.cosigners.pins
        if pin.name == signer
    }


def record(state: State, c: RecordSignerRotation, _: Any) -> list[LogEntry]:
    """The event recording the cosigner key rotation ``c`` carries (none if on record)."""
    try:
        notice = LoggedNotice.from_json(c.notice)
    except (DocumentError, MessageError) as exc:
        raise BadSignerRotation(f"not a logged notice: {exc}") from None
    rotation = notice.logged
    if not isinstance(rotation, KeyRotation):
        raise BadSignerRotation("the notice logs no key rotation", logged=rotation.KIND)
    if recorded(state, rotation):
        return []
    walked = state.signer_keys.get(rotation.signer, ())
    if walked:
        current, version = walked[-1].key, walked[-1].version
    elif rotation.old.public_key in _pinned(state, rotation.signer):
        current, version = SignerKey(ED25519, rotation.old.public_key), None
    else:
        raise BadSignerRotation("the old key is no key a plan pins", signer=rotation.signer)
    own = next((p for p in notice.proofs if p.log == rotation.signer), None)
    if own is None:
        raise BadSignerRotation("the cosigner's own log does not prove it", signer=rotation.signer)
    rotated = SignerKeyRotated(
        signer=rotation.signer,
        version=rotation.version,
        old_key=current.public_key,
        new_key=rotation.new.public_key,
        from_index=own.statement.index,
        at=rotation.at,
        digest=rotation.digest,
    )
    try:
        check_rotation(current, version, rotation)
        check_logged(
            CosignerPin(rotation.signer, current.public_key),
            rotation,
            own.statement,
            own.signature,
            own.inclusion,
            own.checkpoint,
            keys=signer_keys_after(state, rotated),
        )
    except VerificationError as exc:
        raise BadSignerRotation(
            f"rotation refused: {exc}", signer=rotation.signer, reason=exc.kind
        ) from None
    return [rotated]
