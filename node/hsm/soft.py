"""The software HSM: the embedded default backend.

Keys live in process memory and, sealed under the operator's key, in one state file with a
rollback counter beside it (:mod:`node.hsm.sealed_state`): private keys as PKCS#8 DER, AES keys
and OPAQUE setups as their raw bytes. Keys leave only wrapped to another HSM's transport key; the
device-internal primitives (ECDH, AES-GCM sealing, OPAQUE setups) serve applets in the same
process. The software HSM stands in for real hardware in development and tests: it protects
against a stolen disk, not against someone who can read its process's memory (run it behind
``hsmfleet hsm serve`` so that is not the node daemon's process).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.asymmetric import ec

from messages import aead
from messages.canonical import b64, unb64
from messages.signing import ECDH_P256
from node.hsm import keys
from node.hsm.base import (
    KEY_ALGORITHMS,
    SIGNING_ALGORITHMS,
    Hsm,
    HsmStateTampered,
    KeyExists,
    KeyNotFound,
    NotWrappable,
    PublicKey,
    UnsupportedAlgorithm,
    WrappedKey,
)
from node.hsm.sealed_state import STATE_FILE, SealedState

if TYPE_CHECKING:
    from messages.attestation import Attestation

__all__ = ["STATE_FILE", "SoftHsm"]


@dataclass(frozen=True)
class _Key:
    alg: str
    private: keys.Secret
    public: bytes
    wrappable: bool


class SoftHsm(Hsm):
    """Keys in memory, persisted sealed with AES-GCM under ``state_dir``."""

    kind = "soft"
    blocking = False  # signing is a short computation; only key changes touch the disk

    def __init__(self, state_dir: Path, operator_key: bytes) -> None:
        """Open the HSM whose state is in ``state_dir`` (a new, empty one if there is none).

        Refuses, with a typed error, a wrong operator key and a state that was altered, rolled
        back or belongs to another HSM.
        """
        self._state = SealedState(state_dir, operator_key)
        self._lock = threading.Lock()
        self._keys: dict[str, _Key] = {}
        self._certs: dict[str, bytes] = {}
        plaintext = self._state.load()
        if plaintext is not None:
            self._load(plaintext)

    def supports(self, alg: str) -> bool:
        return alg in KEY_ALGORITHMS

    def generate(self, label: str, alg: str, *, wrappable: bool = False) -> PublicKey:
        if not self.supports(alg):
            raise UnsupportedAlgorithm("software HSM cannot make this key", alg=alg)
        private = keys.generate_private(alg)
        return self._add(label, _Key(alg, private, keys.public_bytes(private), wrappable))

    def public_key(self, label: str) -> PublicKey:
        key = self._get(label)
        return PublicKey(label, key.alg, key.public)

    def labels(self) -> list[str]:
        return sorted(self._keys)

    def sign(self, label: str, data: bytes) -> bytes:
        key = self._get(label)
        if key.alg not in SIGNING_ALGORITHMS:
            raise UnsupportedAlgorithm("key cannot sign", label=label, alg=key.alg)
        return keys.software_sign(key.private, data)

    def wrap(
        self,
        label: str,
        recipient: bytes,
        context: bytes,
        *,
        attestation: Attestation | None = None,
    ) -> WrappedKey:
        key = self._get(label)
        if not key.wrappable:
            raise NotWrappable("key never leaves this HSM", label=label)
        return keys.wrap(key.alg, key.public, keys.material(key.private), recipient, context)

    def unwrap(
        self, transport_label: str, wrapped: WrappedKey, label: str, context: bytes
    ) -> PublicKey:
        if not self.supports(wrapped.alg):
            raise UnsupportedAlgorithm("software HSM cannot hold this key", alg=wrapped.alg)
        private = keys.unwrap(partial(self.open_hpke, transport_label), wrapped, context)
        return self._add(label, _Key(wrapped.alg, private, wrapped.public_key, wrappable=True))

    def ecdh(self, label: str, peer_point: bytes) -> bytes:
        key = self._get(label)
        if key.alg != ECDH_P256 or not isinstance(key.private, ec.EllipticCurvePrivateKey):
            raise UnsupportedAlgorithm("key is not an ECDH key", label=label, alg=key.alg)
        return key.private.exchange(ec.ECDH(), keys.p256_public(peer_point))

    def seal(self, label: str, plaintext: bytes, aad: bytes) -> bytes:
        return aead.seal(self._aes(label).raw, plaintext, aad)

    def unseal(self, label: str, sealed: bytes, aad: bytes) -> bytes:
        return keys.aead_open(self._aes(label).raw, sealed, aad)

    def secret(self, label: str) -> bytes:
        key = self._get(label)
        if not isinstance(key.private, keys.OpaqueSetup):
            raise UnsupportedAlgorithm("key is not an OPAQUE setup", label=label, alg=key.alg)
        return key.private.raw

    def destroy(self, label: str) -> None:
        with self._lock:
            if label not in self._keys:
                raise KeyNotFound("no key with this label", label=label)
            kept_keys = {k: v for k, v in self._keys.items() if k != label}
            kept_certs = {k: v for k, v in self._certs.items() if k != label}
            self._commit(kept_keys, kept_certs)

    def certificate(self, label: str) -> bytes | None:
        return self._certs.get(label)

    def store_certificate(self, label: str, der: bytes) -> None:
        with self._lock:
            self._commit(self._keys, {**self._certs, label: der})

    def healthy(self) -> bool:
        return True

    def close(self) -> None:
        """Nothing to release: every change is on disk when its call returns."""

    def _aes(self, label: str) -> keys.AesKey:
        key = self._get(label)
        if not isinstance(key.private, keys.AesKey):
            raise UnsupportedAlgorithm("key is not an AES-GCM key", label=label, alg=key.alg)
        return key.private

    def _get(self, label: str) -> _Key:
        try:
            return self._keys[label]
        except KeyError:
            raise KeyNotFound("no key with this label", label=label) from None

    def _add(self, label: str, key: _Key) -> PublicKey:
        with self._lock:
            if label in self._keys:
                raise KeyExists("a key with this label exists", label=label)
            self._commit({**self._keys, label: key}, self._certs)
        return PublicKey(label, key.alg, key.public)

    def _commit(self, new_keys: dict[str, _Key], certs: dict[str, bytes]) -> None:
        """Write the new state to disk first, then adopt it, so a failed write changes nothing."""
        state = {
            "keys": {
                label: {
                    "alg": k.alg,
                    "private": b64(keys.material(k.private)),
                    "wrappable": k.wrappable,
                }
                for label, k in new_keys.items()
            },
            "certificates": {label: b64(der) for label, der in certs.items()},
        }
        self._state.store(json.dumps(state).encode())
        self._keys, self._certs = new_keys, certs

    def _load(self, plaintext: bytes) -> None:
        try:
            state = json.loads(plaintext)
            for label, raw in state["keys"].items():
                if raw["alg"] not in KEY_ALGORITHMS:
                    raise ValueError(f"unknown algorithm {raw['alg']!r}")
                private = keys.from_material(raw["alg"], unb64(raw["private"]))
                self._keys[label] = _Key(
                    raw["alg"], private, keys.public_bytes(private), bool(raw["wrappable"])
                )
            self._certs = {label: unb64(der) for label, der in state["certificates"].items()}
        except (ValueError, KeyError, TypeError) as exc:
            raise HsmStateTampered(
                f"sealed HSM state authenticates but does not parse: {exc}",
                file=str(self._state.path),
            ) from exc
