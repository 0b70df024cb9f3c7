"""The PKCS#11 backend (python-pkcs11): the interface real HSMs offer, tested on SoftHSM2.

Access to a token is serialized by one lock per token in this process, since tokens such as
SoftHSM2 break under parallel use. When a session is lost (the token closed it, the library was
finalized or reloaded, the login dropped) the backend opens a new session, logs in again and
retries the operation once.

Keys generated here are sensitive and, unless made ``wrappable``, never extractable: the token
refuses to let them out at all. The limit: a key wrapped *to* this token's transport key is
opened through an AES key derived by ECDH on the token, and whoever holds the PIN can derive the
same secret as a readable key and unwrap outside the token. Tokens that constrain derivation
(``CKA_DERIVE_TEMPLATE``) or unwrap with ECDH in one step (``CKM_ECDH_AES_KEY_WRAP``, PKCS#11 3.0)
close that; SoftHSM2 and python-pkcs11 offer neither.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Callable, Collection
from typing import Any, TypeVar

import pkcs11
import structlog
from cryptography import x509
from pkcs11 import KDF, Attribute, CertificateType, KeyType, Mechanism, MechanismFlag, ObjectClass
from pkcs11 import exceptions as p11
from pkcs11.util.ec import encode_named_curve_parameters

from messages.attestation import ECDH_P256
from messages.signing import ECDSA_P256, ED25519, verify_bytes
from node.hsm import keys
from node.hsm.base import (
    KEY_ALGORITHMS,
    BadCertificate,
    Hsm,
    HsmError,
    HsmLoginFailed,
    HsmUnavailable,
    KeyExists,
    KeyNotFound,
    NotWrappable,
    PublicKey,
    UnsupportedAlgorithm,
    UnwrapFailed,
    WrappedKey,
)

T = TypeVar("T")
log = structlog.get_logger("hsmfleet.hsm.pkcs11")


_P256 = encode_named_curve_parameters("1.2.840.10045.3.1.7")
_ED25519 = encode_named_curve_parameters("1.3.101.112")
_POINT_BYTES = {ED25519: 32, ECDSA_P256: 65, ECDH_P256: 65}
_NEEDS = {
    ED25519: (Mechanism.EC_EDWARDS_KEY_PAIR_GEN, Mechanism.EDDSA),
    ECDSA_P256: (Mechanism.EC_KEY_PAIR_GEN, Mechanism.ECDSA),
    ECDH_P256: (Mechanism.EC_KEY_PAIR_GEN, Mechanism.ECDH1_DERIVE),
}
# Errors after which a new session and login may succeed where the old session failed.
_LOST_SESSION = (
    p11.SessionClosed,
    p11.SessionHandleInvalid,
    p11.UserNotLoggedIn,
    p11.DeviceRemoved,
    p11.TokenNotPresent,
    p11.DeviceError,
    p11.GeneralError,
    p11.ObjectHandleInvalid,
    p11.KeyHandleInvalid,
)
# python-pkcs11 fills every capability attribute; these do not apply to a private signing key.
_NOT_FOR_SIGNING_KEYS = dict.fromkeys(
    (Attribute.ENCRYPT, Attribute.DECRYPT, Attribute.VERIFY, Attribute.WRAP, Attribute.UNWRAP),
    pkcs11.DEFAULT,
)

_token_locks: dict[tuple[str, str], threading.RLock] = {}
_token_locks_guard = threading.Lock()
_logins: dict[tuple[str, str], bytes] = {}


def token_lock(module: str, token_label: str) -> threading.RLock:
    """The one lock serializing this process's access to a token."""
    with _token_locks_guard:
        return _token_locks.setdefault((module, token_label), threading.RLock())


class Pkcs11Hsm(Hsm):
    """Keys on one PKCS#11 token, reached through ``module`` and logged in with ``pin``."""

    kind = "pkcs11"

    def __init__(
        self,
        module: str,
        token_label: str,
        pin: str,
        algorithms: Collection[str] = KEY_ALGORITHMS,
    ) -> None:
        """Log in to ``token_label``; ``algorithms`` limits the key types used (operator policy)."""
        self.module = module
        self.algorithms = frozenset(algorithms)
        if not self.algorithms <= set(_NEEDS):
            raise UnsupportedAlgorithm("unknown key algorithm", alg=sorted(self.algorithms))
        self.token_label = token_label
        self._pin = pin
        self._lock = token_lock(module, token_label)
        self._session: Any = None
        self._lib: Any = None
        self._mechanisms: frozenset[Mechanism] = frozenset()
        self._private: dict[str, Any] = {}
        self.relogins = 0
        with self._lock:
            self._open()

    # -- the interface -------------------------------------------------------------------------

    def supports(self, alg: str) -> bool:
        return alg in self.algorithms and all(m in self._mechanisms for m in _NEEDS[alg])

    def generate(self, label: str, alg: str, *, wrappable: bool = False) -> PublicKey:
        if not self.supports(alg):
            raise UnsupportedAlgorithm("token cannot make this key", alg=alg)

        def op(session: Any) -> PublicKey:
            if self._find(session, ObjectClass.PRIVATE_KEY, label) is not None:
                raise KeyExists("a key with this label exists", label=label)
            signing = MechanismFlag.SIGN | MechanismFlag.VERIFY
            public, _ = session.generate_keypair(
                KeyType.EC_EDWARDS if alg == ED25519 else KeyType.EC,
                mechanism=_NEEDS[alg][0],
                store=True,
                label=label,
                capabilities=MechanismFlag.DERIVE if alg == ECDH_P256 else signing,
                public_template={Attribute.EC_PARAMS: _ED25519 if alg == ED25519 else _P256},
                private_template={
                    Attribute.SENSITIVE: True,
                    Attribute.EXTRACTABLE: wrappable,
                    Attribute.PRIVATE: True,
                },
            )
            return PublicKey(label, alg, _point(public, alg))

        return self._run(op)

    def public_key(self, label: str) -> PublicKey:
        return self._run(lambda session: self._public(session, label))

    def labels(self) -> list[str]:
        def op(session: Any) -> list[str]:
            found = session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY})
            return sorted({o.label for o in found})

        return self._run(op)

    def sign(self, label: str, data: bytes) -> bytes:
        def op(session: Any) -> bytes:
            key = self._private_key(session, label)
            alg = _alg(key)
            if alg not in (ED25519, ECDSA_P256):
                raise UnsupportedAlgorithm("key cannot sign", label=label, alg=alg)
            return _sign(key, alg, data)

        return self._run(op)

    def wrap(self, label: str, recipient: bytes) -> WrappedKey:
        keys.p256_public(recipient)

        def op(session: Any) -> WrappedKey:
            key = self._private_key(session, label)
            if not key[Attribute.EXTRACTABLE]:
                raise NotWrappable("key never leaves this HSM", label=label)
            public = self._public(session, label)
            eph_public, eph_private = session.generate_keypair(
                KeyType.EC,
                store=False,
                capabilities=MechanismFlag.DERIVE,
                public_template={Attribute.EC_PARAMS: _P256},
            )
            try:
                ephemeral = _point(eph_public, ECDH_P256)
                kek = _derive_kek(eph_private, recipient, MechanismFlag.WRAP)
                try:
                    ciphertext = kek.wrap_key(key, mechanism=Mechanism.AES_KEY_WRAP_PAD)
                except p11.KeyNotWrappable as exc:  # SoftHSM2 wraps no Ed25519 private keys
                    raise UnsupportedAlgorithm(
                        "token cannot wrap keys of this algorithm", label=label, alg=public.alg
                    ) from exc
                finally:
                    kek.destroy()
            finally:
                eph_private.destroy()
                eph_public.destroy()
            return WrappedKey(public.alg, public.public_key, ephemeral, ciphertext)

        return self._run(op)

    def unwrap(self, transport_label: str, wrapped: WrappedKey, label: str) -> PublicKey:
        keys.p256_public(wrapped.ephemeral)
        if wrapped.alg not in (ED25519, ECDSA_P256) or not self.supports(wrapped.alg):
            raise UnsupportedAlgorithm("token cannot hold this key", alg=wrapped.alg)

        def op(session: Any) -> PublicKey:
            transport = self._private_key(session, transport_label)
            if _alg(transport) != ECDH_P256:
                raise UnsupportedAlgorithm("key is not a transport key", label=transport_label)
            if self._find(session, ObjectClass.PRIVATE_KEY, label) is not None:
                raise KeyExists("a key with this label exists", label=label)
            kek = _derive_kek(transport, wrapped.ephemeral, MechanismFlag.UNWRAP)
            ed = wrapped.alg == ED25519
            try:
                private = kek.unwrap_key(
                    ObjectClass.PRIVATE_KEY,
                    KeyType.EC_EDWARDS if ed else KeyType.EC,
                    wrapped.ciphertext,
                    label=label,
                    store=True,
                    mechanism=Mechanism.AES_KEY_WRAP_PAD,
                    template={
                        **_NOT_FOR_SIGNING_KEYS,
                        Attribute.SIGN: True,
                        Attribute.DERIVE: False,
                        Attribute.SENSITIVE: True,
                        Attribute.EXTRACTABLE: True,
                        Attribute.PRIVATE: True,
                    },
                )
            except p11.PKCS11Error as exc:
                # Not retried even when it looks like a lost session: SoftHSM2 answers a garbled
                # wrapped key with CKR_GENERAL_ERROR.
                raise UnwrapFailed(f"token refused the wrapped key: {type(exc).__name__}") from exc
            finally:
                kek.destroy()
            kept = False
            try:
                if not _signs_for(private, wrapped.alg, wrapped.public_key):
                    raise UnwrapFailed("wrapped key is not the key it claims to be", label=label)
                session.create_object(
                    {
                        Attribute.CLASS: ObjectClass.PUBLIC_KEY,
                        Attribute.KEY_TYPE: KeyType.EC_EDWARDS if ed else KeyType.EC,
                        Attribute.EC_PARAMS: _ED25519 if ed else _P256,
                        Attribute.EC_POINT: _der_octets(wrapped.public_key),
                        Attribute.LABEL: label,
                        Attribute.TOKEN: True,
                        Attribute.VERIFY: True,
                    }
                )
                kept = True
            finally:
                if not kept:
                    with contextlib.suppress(p11.PKCS11Error):
                        private.destroy()
            return PublicKey(label, wrapped.alg, wrapped.public_key)

        return self._run(op)

    def destroy(self, label: str) -> None:
        def op(session: Any) -> None:
            if self._find(session, ObjectClass.PRIVATE_KEY, label) is None:
                raise KeyNotFound("no key with this label", label=label)
            for cls in (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY, ObjectClass.CERTIFICATE):
                for obj in list(
                    session.get_objects({Attribute.CLASS: cls, Attribute.LABEL: label})
                ):
                    obj.destroy()
            self._private.pop(label, None)

        self._run(op)

    def certificate(self, label: str) -> bytes | None:
        def op(session: Any) -> bytes | None:
            cert = self._find(session, ObjectClass.CERTIFICATE, label)
            return None if cert is None else bytes(cert[Attribute.VALUE])

        return self._run(op)

    def store_certificate(self, label: str, der: bytes) -> None:
        try:
            subject = x509.load_der_x509_certificate(der).subject.public_bytes()
        except ValueError as exc:
            raise BadCertificate(f"not a DER X.509 certificate: {exc}", label=label) from exc

        def op(session: Any) -> None:
            old = self._find(session, ObjectClass.CERTIFICATE, label)
            session.create_object(
                {
                    Attribute.CLASS: ObjectClass.CERTIFICATE,
                    Attribute.CERTIFICATE_TYPE: CertificateType.X_509,
                    Attribute.LABEL: label,
                    Attribute.SUBJECT: subject,
                    Attribute.VALUE: der,
                    Attribute.TOKEN: True,
                }
            )
            if old is not None:
                old.destroy()

        self._run(op)

    def healthy(self) -> bool:
        try:
            self._run(lambda session: session.generate_random(64))
        except HsmError:
            return False
        return True

    def close(self) -> None:
        with self._lock:
            self._drop()

    # -- sessions ------------------------------------------------------------------------------

    def _open(self) -> None:
        try:
            self._lib = lib = pkcs11.lib(self.module)
        except RuntimeError as exc:  # python-pkcs11 reports a library that will not load so
            raise HsmUnavailable(f"cannot load the PKCS#11 library: {exc}") from exc
        try:
            token = lib.get_token(token_label=self.token_label)
        except p11.NoSuchToken:
            # A token made by another process stays invisible until the library starts over.
            lib.reinitialize()
            try:
                token = lib.get_token(token_label=self.token_label)
            except p11.NoSuchToken:
                raise HsmUnavailable("no such PKCS#11 token", token=self.token_label) from None
        pin_digest = hashlib.sha256(self._pin.encode()).digest()
        try:
            session = token.open(rw=True, user_pin=self._pin)
        except p11.UserAlreadyLoggedIn:
            # Login is shared by every session of this process; join it only with the same PIN.
            if _logins.get((self.module, self.token_label)) != pin_digest:
                raise HsmLoginFailed("token refused the PIN: logged in with another PIN") from None
            session = token.open(rw=True)
        except (p11.PinIncorrect, p11.PinLocked, p11.PinInvalid, p11.PinLenRange) as exc:
            raise HsmLoginFailed(f"token refused the PIN: {type(exc).__name__}") from None
        _logins[(self.module, self.token_label)] = pin_digest
        self._session = session
        self._mechanisms = frozenset(token.slot.get_mechanisms())

    def _drop(self) -> None:
        session, self._session = self._session, None
        self._private.clear()
        if session is not None:
            with contextlib.suppress(p11.PKCS11Error):
                session.close()

    def _run(self, op: Callable[[Any], T]) -> T:
        """Run ``op`` on the session, logging in again once if the session was lost."""
        with self._lock:
            for attempt in range(2):
                try:
                    if self._session is None:
                        self._open()
                        self.relogins += 1
                    return op(self._session)
                except p11.PKCS11Error as exc:
                    if not _session_lost(exc, self._lib):
                        raise HsmError(
                            f"token refused the operation: {type(exc).__name__}"
                        ) from exc
                    log.warning("pkcs11 session lost", error=type(exc).__name__, attempt=attempt)
                    self._drop()
                    failure = exc
            raise HsmUnavailable(
                "token unreachable after logging in again",
                token=self.token_label,
                error=type(failure).__name__,
            )

    # -- objects -------------------------------------------------------------------------------

    def _find(self, session: Any, cls: ObjectClass, label: str) -> Any:
        found = list(session.get_objects({Attribute.CLASS: cls, Attribute.LABEL: label}))
        return found[0] if found else None

    def _private_key(self, session: Any, label: str) -> Any:
        key = self._private.get(label)
        if key is None:
            key = self._find(session, ObjectClass.PRIVATE_KEY, label)
            if key is None:
                raise KeyNotFound("no key with this label", label=label)
            self._private[label] = key
        return key

    def _public(self, session: Any, label: str) -> PublicKey:
        alg = _alg(self._private_key(session, label))
        public = self._find(session, ObjectClass.PUBLIC_KEY, label)
        if public is None:
            raise KeyNotFound("key has no public half on the token", label=label)
        return PublicKey(label, alg, _point(public, alg))


def _session_lost(exc: Exception, lib: Any) -> bool:
    """Whether ``exc`` means the session is gone, so a new session and login may succeed."""
    return isinstance(exc, _LOST_SESSION) or not lib.initialized


def _alg(private: Any) -> str:
    if private.key_type == KeyType.EC_EDWARDS:
        return ED25519
    return ECDH_P256 if private[Attribute.DERIVE] else ECDSA_P256


def _sign(private: Any, alg: str, data: bytes) -> bytes:
    """Ed25519, or ECDSA P-256 over SHA-256 as DER, by a private key object on the token."""
    if alg == ED25519:
        return private.sign(data, mechanism=Mechanism.EDDSA)
    return keys.ecdsa_der(private.sign(keys.prehash(data), mechanism=Mechanism.ECDSA))


_PROBE = b"hsmfleet/v1/unwrap-probe"


def _signs_for(private: Any, alg: str, public_key: bytes) -> bool:
    """Whether ``private`` makes signatures that ``public_key`` verifies."""
    return verify_bytes(alg, public_key, _sign(private, alg, _PROBE), _PROBE)


def _derive_kek(private: Any, peer: bytes, use: MechanismFlag) -> Any:
    """A session AES key from ECDH with ``peer`` that can do ``use`` (wrap or unwrap) and nothing
    else, never readable off the token."""
    return private.derive_key(
        KeyType.AES,
        256,
        capabilities=use,
        mechanism_param=(KDF.NULL, None, peer),
        template={Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False},
    )


def _point(public: Any, alg: str) -> bytes:
    """The key's point without the DER OCTET STRING that most tokens wrap it in."""
    raw = bytes(public[Attribute.EC_POINT])
    size = _POINT_BYTES[alg]
    return raw[-size:] if len(raw) == size + 2 and raw[0] == 0x04 else raw


def _der_octets(data: bytes) -> bytes:
    return bytes([0x04, len(data)]) + data
