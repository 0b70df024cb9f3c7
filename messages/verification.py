"""Every refusal of a verifier, each its own kind: the root :class:`VerificationError` and the
checks a bundle, its logs' proofs, the pins or the verifier's state can fail. Apart from the
verifier itself so that the documents it walks (key rotations, retirements) raise refusals of
their own without an import cycle."""

from __future__ import annotations

from messages.errors import HsmfleetError


class VerificationError(HsmfleetError):
    """A validation bundle (or a notice it rests on) was refused; ``kind`` says which check
    failed."""

    kind = "verification"


class MalformedBundle(VerificationError):
    """The bytes are not a validation bundle."""

    kind = "malformed_bundle"


class DigestMismatch(VerificationError):
    """The artifact does not hash to the bundle's digest: the artifact was tampered with."""

    kind = "digest_mismatch"


class StatementMismatch(VerificationError):
    """A cosigner's statement names another document than this artifact."""

    kind = "statement_mismatch"


class BadStatementSignature(VerificationError):
    """A cosigner's signature over its statement does not verify under its pinned key."""

    kind = "bad_statement_signature"


class BadCountersignature(VerificationError):
    """The operator countersignature is missing, by another key, or does not verify."""

    kind = "bad_countersignature"


class BadCheckpoint(VerificationError):
    """The checkpoint is malformed, not signed by the log, or carries a bad pinned signature."""

    kind = "bad_checkpoint"


class BadInclusionProof(VerificationError):
    """The inclusion proof does not lead from the artifact to the signed checkpoint's root."""

    kind = "bad_inclusion_proof"


class BelowThreshold(VerificationError):
    """Fewer pinned cosigners than the policy's threshold vouch for the artifact."""

    kind = "below_threshold"


class StaleCheckpoint(VerificationError):
    """The log's checkpoint is smaller than the one the verifier stored: a log never shrinks."""

    kind = "stale_checkpoint"


class SplitView(VerificationError):
    """The log's checkpoint is not consistent with the one the verifier stored."""

    kind = "split_view"


class MissingConsistencyProof(VerificationError):
    """No consistency proof links the stored checkpoint to the bundle's; fetch one and retry."""

    kind = "missing_consistency_proof"


class Rollback(VerificationError):
    """The artifact's epoch is lower than the last one accepted."""

    kind = "rollback"


class EpochConflict(VerificationError):
    """The artifact reuses the last accepted epoch with other content."""

    kind = "epoch_conflict"


class NotYetValid(VerificationError):
    """The current time is before the artifact's ``not_before``."""

    kind = "not_yet_valid"


class Expired(VerificationError):
    """The current time is at or after the artifact's ``not_after`` (a freeze attack, or stale)."""

    kind = "expired"


class QuorumBelowFloor(VerificationError):
    """The artifact's quorum parameters are weaker than the verifier's floor."""

    kind = "quorum_below_floor"


class SupersededKey(VerificationError):
    """A signature by a signer's key that a logged rotation superseded, on something signed
    after that rotation (a statement or checkpoint past the rotation's entry, a countersignature
    of a statement logged after it)."""

    kind = "superseded_key"


class FutureCosignature(VerificationError):
    """A pinned cosignature on a checkpoint is dated further ahead of the verifier's clock than
    the allowed skew: it would keep a view "fresh" long after it was made."""

    kind = "future_cosignature"


class StatePinsMismatch(VerificationError):
    """The stored state holds, for a pinned signer, another key at the pinned version (or none
    at it): the state was made under other pins."""

    kind = "state_pins_mismatch"


class StaleView(VerificationError):
    """A log's checkpoint carries no pinned timestamp (a witness cosignature, the log's own
    timestamped cosignature) within the verifier's maximum age: a frozen view."""

    kind = "stale_view"


class UnknownFleetKey(VerificationError):
    """The key is not one of the accepted artifact's keys for that role."""

    kind = "unknown_fleet_key"


class LegacyKeyExpired(VerificationError):
    """The key was kept only for a rotation overlap and its ``legacy_until`` has passed."""

    kind = "legacy_key_expired"


class PinsError(HsmfleetError):
    """The pins (trusted keys and policy) are missing or malformed."""

    kind = "malformed_pins"


class StateError(HsmfleetError):
    """The verifier's stored state is unreadable or breaks its rules."""

    kind = "malformed_state"
