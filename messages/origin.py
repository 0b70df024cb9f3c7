"""Names of logs and signers (``messages/SPEC.md`` section 5.5).

A log **origin** names a cosigner's log: its checkpoints' first line, the key name of its note
signatures and cosignatures, its name in pins and statements. It is a note key name (no Unicode
space, no ``+``, no control character) of 1 to :data:`MAX_ORIGIN_CHARS` characters that does not
begin with a domain prefix of another signed format (:data:`RESERVED_ORIGIN_PREFIXES`) and is
not :data:`OPERATOR`, the signer name of the operator's countersigning key, so that the two kinds
of signer never share a name in a verifier's keys.
"""

from __future__ import annotations

from messages.note import is_key_name

OPERATOR = "operator"
"""The signer name of the operator's countersigning key."""
MAX_ORIGIN_CHARS = 256
RESERVED_ORIGIN_PREFIXES = ("hsmfleet/v1/", "cosignature/")
"""A log origin may not start with these: its note signatures would share a key and a prefix
with statements or cosignatures."""


def is_origin(value: object) -> bool:
    """True for a usable log origin / cosigner name."""
    return (
        is_key_name(value)
        and len(str(value)) <= MAX_ORIGIN_CHARS
        and not str(value).startswith(RESERVED_ORIGIN_PREFIXES)
        and value != OPERATOR
    )


def is_signer_name(value: object) -> bool:
    """True for the name of a signer whose key rotates: :data:`OPERATOR` or a log origin."""
    return value == OPERATOR or is_origin(value)
