"""The signer keys a verifier holds in force: for the operator and each pinned cosigner, the
pinned key and those logged rotations walked it to, each from where it took over."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from messages.cosignature import Cosignature, CosignatureVerifier
from messages.origin import OPERATOR
from messages.pins import Pins
from messages.signing import ED25519
from messages.verification import StatePinsMismatch
from messages.verifier_state import KeyInForce, VerifierState


def _pinned_key(pins: Pins, name: str) -> KeyInForce | None:
    """Signer ``name``'s pinned key (None for a signer not pinned)."""
    if name == OPERATOR:
        operator = pins.operator
        return KeyInForce(operator.alg, operator.public_key, operator.version, 0, None)
    pin = pins.cosigner(name)
    return None if pin is None else KeyInForce(ED25519, pin.public_key, pin.version, 0, None)


def pinned_keys(pins: Pins, state: VerifierState, name: str) -> tuple[KeyInForce, ...]:
    """The keys of signer ``name`` (``operator`` or a pinned cosigner's origin), oldest first:
    those ``state`` walked to by rotations, else the pinned one; empty for a signer not pinned.

    The walked keys must hold the pinned key at the pinned version (:class:`StatePinsMismatch`
    otherwise: the state was made under other pins); a pin of a newer version than any walked
    stands alone (the pins moved on past the state)."""
    pinned = _pinned_key(pins, name)
    if pinned is None:
        return ()
    walked = state.keys.get(name)
    if walked is None or pinned.version > walked[-1].version:
        return (pinned,)
    held = next((k for k in walked if k.version == pinned.version), None)
    if held is None or held.key != pinned.key:
        raise StatePinsMismatch(
            "the stored keys do not hold the pinned key at its version",
            signer=name,
            version=pinned.version,
        )
    return walked


@dataclass(frozen=True)
class Keyring:
    """Every pinned signer's keys as the verifier knows them: which key signs what."""

    keys: dict[str, tuple[KeyInForce, ...]]

    @classmethod
    def of(cls, pins: Pins, state: VerifierState) -> Keyring:
        names = [OPERATOR, *(c.name for c in pins.cosigners)]
        return cls({name: pinned_keys(pins, state, name) for name in names})

    def current(self, name: str) -> KeyInForce:
        return self.keys[name][-1]

    def with_key(self, name: str, key: KeyInForce) -> Keyring:
        return Keyring({**self.keys, name: (*self.keys[name], key)})

    def log_key(self, log: str, position: int) -> KeyInForce:
        """The key of ``log`` that signs entry ``position``'s statement and the checkpoint of
        ``position + 1`` entries: the last to take over at or before it."""
        keys = self.keys[log]
        return next((k for k in reversed(keys) if k.from_index <= position), keys[0])

    def witnesses(self) -> list[CosignatureVerifier]:
        """Cosignature keys of every pinned cosigner, superseded ones included."""
        return [
            CosignatureVerifier(name, k.public_key)
            for name, keys in self.keys.items()
            if name != OPERATOR
            for k in keys
        ]

    def in_force(self, lines: Iterable[Cosignature]) -> list[Cosignature]:
        """The cosignatures among ``lines`` (verified ones) made by a pinned cosigner's key in
        force at their time: its current key, or a superseded key dated before its
        successor's ``since``."""
        out = []
        for line in lines:
            keys = self.keys.get(line.name, ())
            for i, k in enumerate(keys):
                if CosignatureVerifier(line.name, k.public_key).key_id == line.key_id:
                    if i + 1 == len(keys) or line.timestamp * 1000 < keys[i + 1].since_ms:
                        out.append(line)
                    break
        return out

    def walked(self) -> dict[str, tuple[KeyInForce, ...]]:
        """The signers that rotated at least once, for the verifier's state."""
        return {name: keys for name, keys in self.keys.items() if len(keys) > 1}
