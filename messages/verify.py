"""Client verification of a validation bundle (normative: ``messages/SPEC.md``).

:func:`verify_bundle` accepts a :class:`~messages.validation.ValidationBundle` only if:

1. the bundle's digest is the SHA-256 of the artifact's canonical bytes, and its fleet was not
   retired (a retirement notice ingested by :func:`ingest_retirement`);
2. the signer-key rotation chain (the bundle's, or one given) walks from the keys the verifier
   holds (which must agree with its pins) to the current ones (:func:`walk_rotations`): each
   rotation from the key in force, to the next version, to a key only its holder can sign for,
   signed by both keys, and logged like a bundle (however long ago);
3. for every log proof from a pinned cosigner: the cosigner's statement signature verifies under
   its key in force at that entry, its statement names this artifact, the checkpoint is a note
   signed by that cosigner's key in force at that size, the inclusion proof leads from the
   artifact's leaf to the checkpoint's root at the statement's index (size and root taken from
   the signed checkpoint), and the operator countersignature over the statement signature
   verifies under an operator key not superseded before the statement was logged; a signature
   by a superseded key where it no longer counts is :class:`SupersededKey`;
4. no pinned cosignature on a checkpoint is dated ahead of the clock by more than
   :data:`MAX_CLOCK_SKEW_S` (:class:`FutureCosignature`); at least ``threshold`` distinct
   pinned cosigners vouch: as the log of a verified proof, and, when the pins' ``vouching`` is
   :data:`WITNESSED`, by a witness cosignature on the checkpoint of one (never the log's own);
   and, if the pins set a maximum checkpoint age, every such checkpoint of the bundle carries a
   pinned timestamp that recent (:class:`StaleView`);
5. each such checkpoint extends the one the verifier stored for that log (never smaller, and a
   consistency proof between them verifies);
6. the epoch is not lower than the last accepted one (and an equal epoch is the same artifact);
7. ``now`` is inside ``[not_before, not_after)``;
8. the quorum meets the pinned floor.

Each failure raises its own :class:`VerificationError`. The verifier's memory is a
:class:`VerifierState` value the caller persists; :func:`verify_bundle` never changes it but
returns the next one inside :class:`Accepted`, so a bundle that fails any check leaves nothing
cached (the TUF client bug of caching before the rollback check cannot happen). Time is an input.
:func:`check_fleet_key` is the check a client makes before using a fleet key (legacy keys only
inside their overlap window).

What it rests on: the pins (:mod:`messages.pins`), the verifier's state
(:mod:`messages.verifier_state`), the signer keys in force (:mod:`messages.keyring`), the checks
of each log's proof (:mod:`messages.log_proofs`) and the refusals (:mod:`messages.verification`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from messages.artifact import FleetKey, FleetKeyArtifact
from messages.documents import DocumentError, load_json
from messages.errors import MessageError
from messages.keyring import Keyring
from messages.log_proofs import (
    ConsistencyProofs,
    check_extends,
    check_fresh,
    consistency_proof,
    verify_logged,
)
from messages.origin import OPERATOR
from messages.pins import Pins
from messages.retirement import FleetRetired, FleetRetirement
from messages.rotation import (
    KeyRotation,
    RotationBadKey,
    RotationRefused,
    StaleRotation,
    check_rotation,
)
from messages.signing import ED25519
from messages.validation import LoggedNotice, ValidationBundle
from messages.verification import (
    DigestMismatch,
    EpochConflict,
    Expired,
    LegacyKeyExpired,
    MalformedBundle,
    NotYetValid,
    Rollback,
    UnknownFleetKey,
)
from messages.verifier_state import KeyInForce, VerifierState


class RotationNotLogged(RotationRefused):
    """A cosigner's key rotation without a proof from that cosigner's own log: where its new
    key takes over is unknown."""

    kind = "rotation_not_logged_by_signer"


@dataclass(frozen=True)
class Walk:
    """The result of walking a rotation chain: the keys reached and the rotations taken."""

    keyring: Keyring
    steps: tuple[KeyRotation, ...]


def _new_key(rotation: KeyRotation, notice: LoggedNotice, keyring: Keyring) -> KeyInForce:
    """The key ``rotation`` introduces and where it takes over; :class:`RotationBadKey` if it
    is a key a pinned signer has or had, or a cosigner's key that is not Ed25519."""
    new = rotation.new
    known = {k.public_key for keys in keyring.keys.values() for k in keys}
    if new.public_key in known:
        raise RotationBadKey("the new key is a pinned signer's key", signer=rotation.signer)
    if rotation.signer == OPERATOR:
        return KeyInForce(new.alg, new.public_key, rotation.version, 0, rotation.at)
    if new.alg != ED25519:
        raise RotationBadKey("a cosigner's new key must be an Ed25519 key", signer=rotation.signer)
    own = next((p for p in notice.proofs if p.log == rotation.signer), None)
    if own is None:
        raise RotationNotLogged(
            "a cosigner's rotation must be proven by its own log", signer=rotation.signer
        )
    return KeyInForce(new.alg, new.public_key, rotation.version, own.statement.index, rotation.at)


def walk_rotations(
    notices: Sequence[LoggedNotice], pins: Pins, state: VerifierState, now_ms: int
) -> Walk:
    """Walk from the keys ``state`` (or the pins) holds to the current ones, one logged
    rotation at a time, in the order given. A rotation of a signer not pinned is ignored, one
    already walked (same version, same new key) skipped. Each other must: have the current key
    as old key, the next version, a valid new key, both signatures
    (:func:`messages.rotation.check_rotation`), a new key no pinned signer has or had, and be
    logged and vouched for like a bundle (k pinned cosigners, countersigned), checked with the
    keys it introduces. A rotation is a fact of the past: its checkpoints are not held to the
    pins' maximum age (a client that was offline long walks an old chain as it was logged).
    Raises the :class:`VerificationError` of the first refusal."""
    keyring = Keyring.of(pins, state)
    steps: list[KeyRotation] = []
    for notice in notices:
        rotation = notice.logged
        if not isinstance(rotation, KeyRotation):
            raise MalformedBundle("a rotation chain holds only key rotations")
        keys = keyring.keys.get(rotation.signer)
        if not keys:
            continue
        current = keys[-1]
        if rotation.version <= current.version:
            walked = next((k for k in keys if k.version == rotation.version), None)
            if walked is None or walked.key == rotation.new:
                continue
            raise StaleRotation(
                "another key was walked to for this version",
                signer=rotation.signer,
                v=rotation.version,
            )
        check_rotation(current.key, current.version, rotation)
        keyring = keyring.with_key(rotation.signer, _new_key(rotation, notice, keyring))
        verify_logged(rotation, notice.proofs, keyring, pins, now_ms)
        steps.append(rotation)
    return Walk(keyring, tuple(steps))


@dataclass(frozen=True)
class Accepted:
    """A bundle that passed every check: its artifact, who vouched, the rotations walked, and
    the state to persist."""

    artifact: FleetKeyArtifact
    digest: str
    vouchers: tuple[str, ...]
    state: VerifierState
    rotations: tuple[KeyRotation, ...] = ()


def parse_bundle(data: bytes | str | Any) -> ValidationBundle:
    """Decode a validation bundle from JSON text or a decoded object (:class:`MalformedBundle`)."""
    try:
        raw = load_json(data) if isinstance(data, bytes | str) else data
        bundle = ValidationBundle.from_json(raw)
        bundle.rotations  # noqa: B018 - the optional chain must decode too
        return bundle
    except (DocumentError, MessageError) as exc:
        raise MalformedBundle(f"not a validation bundle: {exc}") from exc


def parse_notice(data: bytes | str | Any) -> LoggedNotice:
    """Decode a logged notice (key rotation, fleet retirement) (:class:`MalformedBundle`)."""
    try:
        raw = load_json(data) if isinstance(data, bytes | str) else data
        return LoggedNotice.from_json(raw)
    except (DocumentError, MessageError) as exc:
        raise MalformedBundle(f"not a logged notice: {exc}") from exc


def verify_bundle(
    bundle: ValidationBundle | bytes | str,
    pins: Pins,
    state: VerifierState,
    now_ms: int,
    proofs: ConsistencyProofs | None = None,
    rotations: Sequence[LoggedNotice] | None = None,
) -> Accepted:
    """Accept ``bundle`` at time ``now_ms`` (ms since the epoch) or raise the
    :class:`VerificationError` of the first check that fails, in the order of the module doc.

    ``state`` is what the verifier stored after its last accepted bundle; persist
    ``Accepted.state`` only when this returns. ``proofs`` adds consistency proofs fetched from
    the logs (see :func:`needed_proofs`). ``rotations`` is the chain of signer-key rotation
    notices to walk first (default: the chain the bundle carries, if any).
    """
    if not isinstance(bundle, ValidationBundle):
        bundle = parse_bundle(bundle)
    artifact = bundle.artifact
    digest = artifact.digest
    if bundle.digest != digest:
        raise DigestMismatch("artifact does not match the digest", digest=bundle.digest)
    if artifact.fleet in state.retired:
        raise FleetRetired(
            "the fleet was retired", fleet=artifact.fleet, last=state.retired[artifact.fleet]
        )
    if rotations is None:
        try:
            rotations = bundle.rotations
        except (DocumentError, MessageError) as exc:
            raise MalformedBundle(f"not a rotation chain: {exc}") from exc
    walk = walk_rotations(rotations, pins, state, now_ms)
    logged, vouchers = verify_logged(artifact, bundle.proofs, walk.keyring, pins, now_ms)
    check_fresh(logged, pins, now_ms)

    for item in logged:
        stored = state.checkpoints.get(item.proof.log)
        if stored is not None:
            path = consistency_proof(item.proof, stored, item.head, proofs or {})
            check_extends(item.proof.log, stored, item.head, path)

    if state.epoch is not None:
        if artifact.epoch < state.epoch:
            raise Rollback(
                "epoch is lower than the last accepted", epoch=artifact.epoch, last=state.epoch
            )
        if artifact.epoch == state.epoch and digest != state.digest:
            raise EpochConflict(
                "another artifact was accepted for this epoch", epoch=artifact.epoch
            )

    if now_ms < artifact.not_before_ms:
        raise NotYetValid("artifact is not valid yet", not_before=artifact.not_before)
    if now_ms >= artifact.not_after_ms:
        raise Expired("artifact has expired", not_after=artifact.not_after)

    pins.floor.check(artifact.quorum)

    checkpoints = dict(state.checkpoints)
    checkpoints.update({item.proof.log: item.head for item in logged})
    next_state = replace(
        state,
        epoch=artifact.epoch,
        digest=digest,
        checkpoints=checkpoints,
        keys=walk.keyring.walked(),
    )
    return Accepted(artifact, digest, tuple(sorted(vouchers)), next_state, walk.steps)


def ingest_rotations(
    notices: Sequence[LoggedNotice], pins: Pins, state: VerifierState, now_ms: int
) -> tuple[VerifierState, tuple[KeyRotation, ...]]:
    """Walk a rotation chain on its own (:func:`walk_rotations`): the state that knows the
    keys reached, and the rotations taken. ``state`` is not changed."""
    walk = walk_rotations(notices, pins, state, now_ms)
    return replace(state, keys=walk.keyring.walked()), walk.steps


def ingest_retirement(
    notice: LoggedNotice | bytes | str,
    pins: Pins,
    state: VerifierState,
    now_ms: int,
    rotations: Sequence[LoggedNotice] = (),
) -> VerifierState:
    """Check a fleet retirement notice like a validation bundle (k pinned cosigners logged it,
    countersigned; after walking ``rotations``) and return the state that refuses the fleet
    from now on (:class:`~messages.retirement.FleetRetired`). A retirement stays true however
    old its checkpoints are: they are not held to the pins' maximum age. ``state`` is not
    changed; :class:`VerificationError` on any refusal."""
    if not isinstance(notice, LoggedNotice):
        notice = parse_notice(notice)
    retirement = notice.logged
    if not isinstance(retirement, FleetRetirement):
        raise MalformedBundle("not a fleet retirement notice", kind=retirement.KIND)
    walk = walk_rotations(rotations, pins, state, now_ms)
    verify_logged(retirement, notice.proofs, walk.keyring, pins, now_ms)
    retired = {**state.retired, retirement.fleet: retirement.last_epoch}
    return replace(state, keys=walk.keyring.walked(), retired=retired)


def check_fleet_key(
    artifact: FleetKeyArtifact, public_key: bytes, role: str, now_ms: int
) -> FleetKey:
    """Check, before use at ``now_ms``, that ``public_key`` is a key of the accepted
    ``artifact`` for ``role``: a current key, or a legacy key before its ``legacy_until``.
    Raises :class:`UnknownFleetKey`, :class:`LegacyKeyExpired`, or :class:`Expired` /
    :class:`NotYetValid` outside the artifact's window."""
    if now_ms < artifact.not_before_ms:
        raise NotYetValid("artifact is not valid yet", not_before=artifact.not_before)
    if now_ms >= artifact.not_after_ms:
        raise Expired("artifact has expired", not_after=artifact.not_after)
    key = next((k for k in artifact.keys if (k.role, k.public_key) == (role, public_key)), None)
    if key is None:
        raise UnknownFleetKey(
            "not a key of the fleet for this role", fleet=artifact.fleet, role=role
        )
    if not key.usable_at(now_ms):
        raise LegacyKeyExpired(
            "the legacy key's overlap window has ended",
            fleet=artifact.fleet,
            role=role,
            legacy_until=key.legacy_until,
        )
    return key
