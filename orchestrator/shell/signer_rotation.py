"""Signer-key rotation on the operator's side.

:func:`rotate_operator_key` moves the operator's countersigning key to a new one:

1. the new key is made inside the operator's HSM (label ``<label>.v<n>``, see
   :mod:`orchestrator.shell.keys`), or found there if a crashed attempt made it;
2. the rotation statement (:class:`~messages.rotation.KeyRotation`) is signed by the old and the
   new key and kept as pending (``operator-rotation.pending.json`` beside the orchestrator's
   key), so that a retry submits the very same statement;
3. the cosigners log it (:class:`~transport.cosign_client.CosigningClient`); its notice is
   countersigned with the new key and appended to the rotation chain, which makes the new key
   the one in force (:func:`orchestrator.shell.keys.operator_signer`).

:func:`log_cosigner_rotation` has the cosigners log a cosigner's own rotation (what
``hsmfleet cosigner rotate-key`` printed) and appends its notice to the chain. Clients get the
chain with every validation bundle (:func:`messages.validation.with_rotations`).

Each step is reported through ``progress(step, **detail)``. The HSM is opened by this process:
run it with the orchestrator stopped (a software HSM's state is one process's).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from messages.canonical import canonical
from messages.documents import DocumentError, load_json
from messages.errors import HsmfleetError, MessageError
from messages.ids import format_time
from messages.origin import OPERATOR
from messages.rotation import KeyRotation
from messages.signing import Signer
from messages.validation import LoggedNotice
from orchestrator.shell.config import Settings
from orchestrator.shell.keys import (
    KeyFileError,
    load_rotation_chain,
    operator_hsm,
    operator_label,
    operator_version,
    save_rotation_chain,
)
from transport.cosign_client import CosigningClient
from transport.files import write_file

Progress = Callable[..., None]


def _quiet(step: str, **detail: object) -> None:
    return None


class RotationFailed(HsmfleetError):
    """The rotation could not be completed; running it again resumes it."""

    kind = "rotation_failed"


def pending_path(settings: Settings) -> Path:
    return settings.key_file.with_name("operator-rotation.pending.json")


def _pending(settings: Settings, version: int) -> KeyRotation | None:
    path = pending_path(settings)
    if not path.exists():
        return None
    try:
        rotation = KeyRotation.from_json(load_json(path.read_bytes()))
    except (OSError, DocumentError, MessageError) as exc:
        raise KeyFileError(f"cannot read the pending rotation: {exc}", path=str(path)) from None
    return rotation if rotation.version == version else None


def _keep_pending(settings: Settings, rotation: KeyRotation) -> None:
    write_file(pending_path(settings), canonical(rotation.to_json()) + b"\n")


async def rotate_operator_key(
    settings: Settings, client: CosigningClient, now_ms: int, progress: Progress = _quiet
) -> LoggedNotice:
    """Rotate the operator's countersigning key (module doc); returns the logged notice. From
    then on ``client`` countersigns with the new key, and so does every
    :func:`~orchestrator.shell.keys.operator_signer` opened after."""
    hsm = operator_hsm(settings)
    if hsm is None:
        raise KeyFileError("the configuration names no operator_hsm")
    chain = load_rotation_chain(settings)
    version = operator_version(chain) + 1
    old = hsm.signer(operator_label(settings, version - 1))
    label = operator_label(settings, version)
    hsm.ensure(label, old.alg)
    new = hsm.signer(label)
    progress("key", label=label, version=version, kid=new.kid)
    rotation = _pending(settings, version)
    if rotation is None or rotation.new.public_key != new.public_key:
        rotation = KeyRotation.make(OPERATOR, version, old, new, format_time(now_ms))
        _keep_pending(settings, rotation)
    progress("statement", version=version, old=old.kid, new=new.kid, at=rotation.at)
    notice = await _log(client, rotation, new, progress)
    save_rotation_chain(settings, [*chain, notice])
    pending_path(settings).unlink(missing_ok=True)
    progress("adopted", version=version, kid=new.kid)
    return notice


async def log_cosigner_rotation(
    settings: Settings, client: CosigningClient, rotation: KeyRotation, progress: Progress = _quiet
) -> LoggedNotice:
    """Have the cosigners log a cosigner's own key rotation and keep its notice in the chain
    (a rotation already in the chain is not added again)."""
    if rotation.signer == OPERATOR:
        raise RotationFailed("the operator's key rotates with rotate_operator_key")
    chain = load_rotation_chain(settings)
    progress("statement", signer=rotation.signer, version=rotation.version)
    notice = await _log(client, rotation, None, progress)
    if all(n.logged.digest != rotation.digest for n in chain):
        save_rotation_chain(settings, [*chain, notice])
    progress("adopted", signer=rotation.signer, version=rotation.version)
    return notice


async def _log(
    client: CosigningClient, rotation: KeyRotation, operator: Signer | None, progress: Progress
) -> LoggedNotice:
    """Log ``rotation``; countersign its notice with ``operator`` (and from then on) if given."""
    try:
        logged = await client.log(rotation)
    except HsmfleetError as exc:
        raise RotationFailed(f"the cosigners did not log the rotation: {exc}") from exc
    progress("logged", vouchers=sorted(logged.vouchers(client.peers)))
    if operator is not None:
        client.operator = operator
    return client.notice(logged)
