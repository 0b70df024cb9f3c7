"""The PKCS#11 backend (python-pkcs11): the interface real HSMs offer, tested on SoftHSM2.

Access to the tokens of a PKCS#11 library is serialized by one lock per library in this process,
since SoftHSM2 breaks under parallel use, even of two of its tokens. When a session is lost (the
token closed it, the library was finalized or reloaded, the login dropped) the backend opens a
new session, logs in again and retries the operation once.

What stays on the token, and what passes through the process that holds this backend (the
device process, ``hsmfleet hsm serve``), on a generic token such as SoftHSM2:

- Signing and ECDH keys are generated on the token, sensitive, and unless made ``wrappable``
  never extractable: the token refuses to let them out at all. Signatures are made on the token.
- AES-256-GCM keys are generated on the token (CKM_AES_KEY_GEN) and seal and unseal there
  (CKM_AES_GCM). Their key check value is an HMAC the token will not compute with an AES key, so
  at generation the new key is read out once under a temporary session key, its check value is
  computed in the process and kept as the key's ``CKA_ID``, and a key not made wrappable is then
  made unextractable (the token records that it was not always so).
- OPAQUE setups: the token cannot run OPAQUE. A setup is made in the process and kept on the
  token as a private data object sealed (AES-GCM, bound to its label) under a per-token AES key
  (``hsmfleet:secret-seal``) that is generated on the token at first use and never extractable.
  Every use of a setup (:meth:`Pkcs11Hsm.secret`, its public key, wrapping it) unseals it into
  the process.
- ECDH (:meth:`Pkcs11Hsm.ecdh`, so every HPKE open, unwrapping included): the raw ECDH output
  is derived on the token into a session secret whose value the process reads; the object is
  destroyed at once. The HPKE key schedule and the opened plaintext are in the process.
- Wrapping a key: its material is exported under a temporary session AES key, opened in the
  process and HPKE-sealed there. Unwrapping: the material is opened in the process (through the
  token's ECDH), checked, and created on the token, sensitive and extractable (kept wrappable).
  SoftHSM2 exports no Ed25519 private key: wrapping one is refused with
  :class:`UnsupportedAlgorithm`.

Whoever holds the PIN can do the same: derive ECDH outputs, unseal setups, export wrappable
keys. Tokens that unwrap with ECDH in one step (``CKM_ECDH_AES_KEY_WRAP``, PKCS#11 3.0) or
constrain derivation (``CKA_DERIVE_TEMPLATE``) would keep more inside; SoftHSM2 and
python-pkcs11 offer neither.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections.abc import Callable, Collection
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import pkcs11
import structlog
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap_with_padding
from pkcs11 import KDF, Attribute, CertificateType, KeyType, Mechanism, MechanismFlag, ObjectClass
from pkcs11 import exceptions as p11
from pkcs11.mechanisms import GCMParams
from pkcs11.util.ec import encode_named_curve_parameters

from messages import aead
from messages.signing import ECDH_P256, ECDSA_P256, ED25519
from node.hsm import keys, opaque
from node.hsm.base import (
    AES256_GCM,
    KEY_ALGORITHMS,
    OPAQUE_SETUP,
    BadCertificate,
    Hsm,
    HsmError,
    HsmLoginFailed,
    HsmUnavailable,
    KeyExists,
    KeyNotFound,
    NotWrappable,
    PublicKey,
    UnsealFailed,
    UnsupportedAlgorithm,
    WrappedKey,
)

if TYPE_CHECKING:
    from messages.attestation import Attestation

T = TypeVar("T")
log = structlog.get_logger("hsmfleet.hsm.pkcs11")


_P256 = encode_named_curve_parameters("1.2.840.10045.3.1.7")
_ED25519 = encode_named_curve_parameters("1.3.101.112")
_POINT_BYTES = {ED25519: 32, ECDSA_P256: 65, ECDH_P256: 65}
_NEEDS = {
    ED25519: (Mechanism.EC_EDWARDS_KEY_PAIR_GEN, Mechanism.EDDSA),
    ECDSA_P256: (Mechanism.EC_KEY_PAIR_GEN, Mechanism.ECDSA),
    ECDH_P256: (Mechanism.EC_KEY_PAIR_GEN, Mechanism.ECDH1_DERIVE),
    AES256_GCM: (Mechanism.AES_KEY_GEN, Mechanism.AES_GCM, Mechanism.AES_KEY_WRAP_PAD),
    OPAQUE_SETUP: (Mechanism.AES_KEY_GEN, Mechanism.AES_GCM),
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
_SECRET_SEAL = "hsmfleet:secret-seal"
"""The label of the token's own AES key that seals the OPAQUE setups kept on it."""
_SETUP_APPLICATION = "hsmfleet:" + OPAQUE_SETUP
_WRAPPABLE = ":wrappable"

_library_locks: dict[str, threading.RLock] = {}
_library_locks_guard = threading.Lock()
_library_starts: dict[str, int] = {}
"""How many times this process started each library over: every session and object handle
opened before a restart is gone (and its numbers may name another token's objects after it)."""
_logins: dict[tuple[str, str], bytes] = {}


def token_lock(module: str, token_label: str) -> threading.RLock:
    """The one lock serializing this process's access to a token: the one of its library, since
    SoftHSM2 crashes when two threads work on two of its tokens at once."""
    del token_label  # every token of a library shares its lock
    with _library_locks_guard:
        return _library_locks.setdefault(module, threading.RLock())


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
        self._started = 0
        self._lib: Any = None
        self._mechanisms: frozenset[Mechanism] = frozenset()
        self._objects: dict[str, Any] = {}
        self._seal_key: Any = None
        self.relogins = 0
        with self._lock:
            self._open()

    # -- the interface -------------------------------------------------------------------------

    def supports(self, alg: str) -> bool:
        return alg in self.algorithms and all(m in self._mechanisms for m in _NEEDS[alg])

    def generate(self, label: str, alg: str, *, wrappable: bool = False) -> PublicKey:
        if not self.supports(alg):
            raise UnsupportedAlgorithm("token cannot make this key", alg=alg)
        if alg == OPAQUE_SETUP:
            setup = opaque.new_setup()
            public = opaque.setup_public(setup)

            def keep_setup(session: Any) -> PublicKey:
                self._free(session, label)
                self._keep_setup(session, label, setup, wrappable)
                return PublicKey(label, alg, public)

            return self._run(keep_setup)
        if alg == AES256_GCM:
            return self._run(lambda session: self._generate_aes(session, label, wrappable))
        return self._run(lambda session: self._generate_pair(session, label, alg, wrappable))

    def public_key(self, label: str) -> PublicKey:
        return self._run(lambda session: self._public(session, label))

    def labels(self) -> list[str]:
        def op(session: Any) -> list[str]:
            privates = session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY})
            found = {o.label for o in privates}
            secrets = session.get_objects(
                {Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.TOKEN: True}
            )
            found |= {o.label for o in secrets if o.label != _SECRET_SEAL}
            data = session.get_objects({Attribute.CLASS: ObjectClass.DATA})
            found |= {o[Attribute.LABEL] for o in data if _is_setup(o)}
            return sorted(found)

        return self._run(op)

    def sign(self, label: str, data: bytes) -> bytes:
        def op(session: Any) -> bytes:
            key = self._key(session, label)
            alg = _alg(key)
            if alg not in (ED25519, ECDSA_P256):
                raise UnsupportedAlgorithm("key cannot sign", label=label, alg=alg)
            return _sign(key, alg, data)

        return self._run(op)

    def wrap(
        self,
        label: str,
        recipient: bytes,
        context: bytes,
        *,
        attestation: Attestation | None = None,
    ) -> WrappedKey:
        keys.p256_public(recipient)

        def export(session: Any) -> tuple[PublicKey, bytes]:
            key = self._key(session, label)
            if not _wrappable(key):
                raise NotWrappable("key never leaves this HSM", label=label)
            public = self._public(session, label)
            return public, self._material(session, key, public.alg)

        public, material = self._run(export)
        return keys.wrap(public.alg, public.public_key, material, recipient, context)

    def unwrap(
        self, transport_label: str, wrapped: WrappedKey, label: str, context: bytes
    ) -> PublicKey:
        if not self.supports(wrapped.alg):
            raise UnsupportedAlgorithm("token cannot hold this key", alg=wrapped.alg)
        opened = keys.unwrap(partial(self.open_hpke, transport_label), wrapped, context)
        self._run(lambda session: self._import(session, label, wrapped.alg, opened))
        return PublicKey(label, wrapped.alg, wrapped.public_key)

    def ecdh(self, label: str, peer_point: bytes) -> bytes:
        keys.p256_public(peer_point)

        def op(session: Any) -> bytes:
            key = self._key(session, label)
            if _alg(key) != ECDH_P256:
                raise UnsupportedAlgorithm("key is not an ECDH key", label=label, alg=_alg(key))
            shared = key.derive_key(
                KeyType.GENERIC_SECRET,
                256,
                mechanism_param=(KDF.NULL, None, peer_point),
                template={Attribute.SENSITIVE: False, Attribute.EXTRACTABLE: True},
            )
            try:
                return bytes(shared[Attribute.VALUE])
            finally:
                shared.destroy()

        return self._run(op)

    def seal(self, label: str, plaintext: bytes, aad: bytes) -> bytes:
        return self._run(lambda session: _gcm_seal(self._aes(session, label), plaintext, aad))

    def unseal(self, label: str, sealed: bytes, aad: bytes) -> bytes:
        return self._run(lambda session: _gcm_open(self._aes(session, label), sealed, aad))

    def secret(self, label: str) -> bytes:
        def op(session: Any) -> bytes:
            key = self._key(session, label)
            if _alg(key) != OPAQUE_SETUP:
                raise UnsupportedAlgorithm("key is not an OPAQUE setup", label=label, alg=_alg(key))
            return self._open_setup(session, key)

        return self._run(op)

    def destroy(self, label: str) -> None:
        def op(session: Any) -> None:
            self._key(session, label)
            for cls in (
                ObjectClass.PRIVATE_KEY,
                ObjectClass.PUBLIC_KEY,
                ObjectClass.SECRET_KEY,
                ObjectClass.DATA,
                ObjectClass.CERTIFICATE,
            ):
                for obj in list(
                    session.get_objects({Attribute.CLASS: cls, Attribute.LABEL: label})
                ):
                    obj.destroy()
            self._objects.pop(label, None)

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
            _library_starts[self.module] = _library_starts.get(self.module, 0) + 1
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
        self._started = _library_starts.get(self.module, 0)
        self._mechanisms = frozenset(token.slot.get_mechanisms())

    def _drop(self) -> None:
        session, self._session = self._session, None
        self._objects.clear()
        self._seal_key = None
        if session is not None:
            with contextlib.suppress(p11.PKCS11Error):
                session.close()

    def _run(self, op: Callable[[Any], T]) -> T:
        """Run ``op`` on the session, logging in again once if the session was lost."""
        with self._lock:
            if self._started != _library_starts.get(self.module, 0):
                self._drop()  # another handle started the library over: this session is gone
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

    def _lookup(self, session: Any, label: str) -> Any:
        """The object that is the key ``label`` (a private key, an AES key or a data object
        holding an OPAQUE setup), or ``None``; the token's own sealing key is no one's."""
        if label == _SECRET_SEAL:
            return None
        key = self._objects.get(label)
        if key is None:
            key = self._find(session, ObjectClass.PRIVATE_KEY, label) or self._find(
                session, ObjectClass.SECRET_KEY, label
            )
            if key is None:
                data = session.get_objects(
                    {Attribute.CLASS: ObjectClass.DATA, Attribute.LABEL: label}
                )
                key = next((o for o in data if _is_setup(o)), None)
            if key is not None:
                self._objects[label] = key
        return key

    def _key(self, session: Any, label: str) -> Any:
        key = self._lookup(session, label)
        if key is None:
            raise KeyNotFound("no key with this label", label=label)
        return key

    def _free(self, session: Any, label: str) -> None:
        if label == _SECRET_SEAL or self._lookup(session, label) is not None:
            raise KeyExists("a key with this label exists", label=label)

    def _aes(self, session: Any, label: str) -> Any:
        key = self._key(session, label)
        if _alg(key) != AES256_GCM:
            raise UnsupportedAlgorithm("key is not an AES-GCM key", label=label, alg=_alg(key))
        return key

    def _public(self, session: Any, label: str) -> PublicKey:
        key = self._key(session, label)
        alg = _alg(key)
        if alg == AES256_GCM:
            return PublicKey(label, alg, bytes(key[Attribute.ID]))
        if alg == OPAQUE_SETUP:
            return PublicKey(label, alg, opaque.setup_public(self._open_setup(session, key)))
        public = self._find(session, ObjectClass.PUBLIC_KEY, label)
        if public is None:
            raise KeyNotFound("key has no public half on the token", label=label)
        return PublicKey(label, alg, _point(public, alg))

    def _generate_pair(self, session: Any, label: str, alg: str, wrappable: bool) -> PublicKey:
        self._free(session, label)
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

    def _generate_aes(self, session: Any, label: str, wrappable: bool) -> PublicKey:
        """A new AES key on the token, read out once for its check value (see the module's
        docstring), then unextractable unless ``wrappable``."""
        self._free(session, label)
        key = _new_aes_key(session, label, extractable=True)
        kept = False
        try:
            check = keys.key_check(_export(session, key))
            key[Attribute.ID] = check
            if not wrappable:
                key[Attribute.EXTRACTABLE] = False
            kept = True
        finally:
            if not kept:
                with contextlib.suppress(p11.PKCS11Error):
                    key.destroy()
        return PublicKey(label, AES256_GCM, check)

    def _material(self, session: Any, key: Any, alg: str) -> bytes:
        """The wrappable ``key``'s material (see :func:`node.hsm.keys.material`)."""
        if alg == OPAQUE_SETUP:
            return self._open_setup(session, key)
        try:
            exported = _export(session, key)
        except p11.KeyNotWrappable as exc:  # SoftHSM2 exports no Ed25519 private keys
            raise UnsupportedAlgorithm(
                "token cannot wrap keys of this algorithm", label=key.label, alg=alg
            ) from exc
        return exported if alg == AES256_GCM else keys.der_prefix(exported)

    def _import(self, session: Any, label: str, alg: str, key: keys.Secret) -> None:
        """Keep an opened key on the token as ``label``, sensitive and wrappable again.

        Made with C_CreateObject: SoftHSM2 unwraps no Ed25519 private key, and the material
        is in this process already, opened from its HPKE message.
        """
        self._free(session, label)
        if isinstance(key, keys.OpaqueSetup):
            self._keep_setup(session, label, key.raw, wrappable=True)
            return
        kept = {
            Attribute.LABEL: label,
            Attribute.TOKEN: True,
            Attribute.SENSITIVE: True,
            Attribute.EXTRACTABLE: True,
            Attribute.PRIVATE: True,
        }
        if isinstance(key, keys.AesKey):
            session.create_object(
                {
                    **kept,
                    Attribute.CLASS: ObjectClass.SECRET_KEY,
                    Attribute.KEY_TYPE: KeyType.AES,
                    Attribute.VALUE: key.raw,
                    Attribute.ID: keys.key_check(key.raw),
                    Attribute.ENCRYPT: True,
                    Attribute.DECRYPT: True,
                }
            )
            return
        ed = isinstance(key, ed25519.Ed25519PrivateKey)
        curve = {
            Attribute.KEY_TYPE: KeyType.EC_EDWARDS if ed else KeyType.EC,
            Attribute.EC_PARAMS: _ED25519 if ed else _P256,
            Attribute.LABEL: label,
            Attribute.TOKEN: True,
        }
        derives = alg == ECDH_P256
        private = session.create_object(
            {
                **kept,
                **curve,
                Attribute.CLASS: ObjectClass.PRIVATE_KEY,
                Attribute.VALUE: _private_value(key),
                Attribute.SIGN: not derives,
                Attribute.DERIVE: derives,
            }
        )
        made = False
        try:
            session.create_object(
                {
                    **curve,
                    Attribute.CLASS: ObjectClass.PUBLIC_KEY,
                    Attribute.EC_POINT: _der_octets(keys.public_bytes(key)),
                    Attribute.VERIFY: not derives,
                    Attribute.DERIVE: derives,
                }
            )
            made = True
        finally:
            if not made:
                with contextlib.suppress(p11.PKCS11Error):
                    private.destroy()

    def _sealing_key(self, session: Any) -> Any:
        """The token's AES key sealing the OPAQUE setups it keeps, made on first use."""
        if self._seal_key is None:
            key = self._find(session, ObjectClass.SECRET_KEY, _SECRET_SEAL)
            if key is None:
                key = _new_aes_key(session, _SECRET_SEAL, extractable=False)
            self._seal_key = key
        return self._seal_key

    def _keep_setup(self, session: Any, label: str, setup: bytes, wrappable: bool) -> None:
        application = _SETUP_APPLICATION + (_WRAPPABLE if wrappable else "")
        sealed = _gcm_seal(self._sealing_key(session), setup, _setup_aad(application, label))
        session.create_object(
            {
                Attribute.CLASS: ObjectClass.DATA,
                Attribute.APPLICATION: application,
                Attribute.LABEL: label,
                Attribute.VALUE: sealed,
                Attribute.TOKEN: True,
                Attribute.PRIVATE: True,
            }
        )

    def _open_setup(self, session: Any, data: Any) -> bytes:
        aad = _setup_aad(data[Attribute.APPLICATION], data[Attribute.LABEL])
        return _gcm_open(self._sealing_key(session), bytes(data[Attribute.VALUE]), aad)


def _session_lost(exc: Exception, lib: Any) -> bool:
    """Whether ``exc`` means the session is gone, so a new session and login may succeed."""
    return isinstance(exc, _LOST_SESSION) or not lib.initialized


def _alg(key: Any) -> str:
    if isinstance(key, pkcs11.SecretKey):
        return AES256_GCM
    if not isinstance(key, pkcs11.PrivateKey):
        return OPAQUE_SETUP
    if key.key_type == KeyType.EC_EDWARDS:
        return ED25519
    return ECDH_P256 if key[Attribute.DERIVE] else ECDSA_P256


def _is_setup(data: Any) -> bool:
    return str(data[Attribute.APPLICATION]).startswith(_SETUP_APPLICATION)


def _wrappable(key: Any) -> bool:
    if _alg(key) == OPAQUE_SETUP:
        return str(key[Attribute.APPLICATION]).endswith(_WRAPPABLE)
    return bool(key[Attribute.EXTRACTABLE])


def _setup_aad(application: str, label: str) -> bytes:
    """What a kept setup is bound to: its kind, wrappability and label."""
    return f"hsmfleet/v1/kept-secret\n{application}\n{label}".encode()


def _sign(private: Any, alg: str, data: bytes) -> bytes:
    """Ed25519, or ECDSA P-256 over SHA-256 as DER, by a private key object on the token."""
    if alg == ED25519:
        return private.sign(data, mechanism=Mechanism.EDDSA)
    return keys.ecdsa_der(private.sign(keys.prehash(data), mechanism=Mechanism.ECDSA))


def _gcm_seal(key: Any, plaintext: bytes, aad: bytes) -> bytes:
    """AES-GCM on the token, in the format of :func:`messages.aead.seal`."""
    nonce = os.urandom(aead.NONCE_BYTES)
    return nonce + key.encrypt(
        plaintext, mechanism=Mechanism.AES_GCM, mechanism_param=GCMParams(nonce, aad)
    )


_DOES_NOT_OPEN = (
    p11.GeneralError,
    p11.EncryptedDataInvalid,
    p11.EncryptedDataLenRange,
    p11.FunctionFailed,
)


def _gcm_open(key: Any, sealed: bytes, aad: bytes) -> bytes:
    """Open :func:`_gcm_seal`'s output on the token; raises :class:`UnsealFailed`."""
    if len(sealed) < aead.NONCE_BYTES + aead.TAG_BYTES:
        raise UnsealFailed("sealed data is truncated", bytes=len(sealed))
    nonce, ciphertext = sealed[: aead.NONCE_BYTES], sealed[aead.NONCE_BYTES :]
    try:
        return bytes(
            key.decrypt(
                ciphertext, mechanism=Mechanism.AES_GCM, mechanism_param=GCMParams(nonce, aad)
            )
        )
    except _DOES_NOT_OPEN as exc:
        # SoftHSM2 answers a tag that does not verify with CKR_GENERAL_ERROR; a lost session
        # or key handle is left to _run, which logs in again and retries.
        raise UnsealFailed(f"sealed data does not open: {type(exc).__name__}") from exc


def _new_aes_key(session: Any, label: str, *, extractable: bool) -> Any:
    """A new sensitive AES-256 key stored on the token, for AES-GCM."""
    return session.generate_key(
        KeyType.AES,
        256,
        label=label,
        store=True,
        capabilities=MechanismFlag.ENCRYPT | MechanismFlag.DECRYPT,
        template={
            Attribute.SENSITIVE: True,
            Attribute.EXTRACTABLE: extractable,
            Attribute.PRIVATE: True,
        },
    )


def _export(session: Any, key: Any) -> bytes:
    """The value of the extractable ``key``, wrapped on the token under a session AES key made
    for this one export and opened here: a private key's PKCS#8 DER (possibly padded), a secret
    key's raw bytes."""
    value = os.urandom(32)
    kek = session.create_object(
        {
            Attribute.CLASS: ObjectClass.SECRET_KEY,
            Attribute.KEY_TYPE: KeyType.AES,
            Attribute.VALUE: value,
            Attribute.TOKEN: False,
            Attribute.WRAP: True,
            Attribute.UNWRAP: False,
            Attribute.ENCRYPT: False,
            Attribute.DECRYPT: False,
            Attribute.SENSITIVE: True,
            Attribute.EXTRACTABLE: False,
        }
    )
    try:
        wrapped = kek.wrap_key(key, mechanism=Mechanism.AES_KEY_WRAP_PAD)
    finally:
        kek.destroy()
    try:
        return aes_key_unwrap_with_padding(value, wrapped)
    except InvalidUnwrap as exc:
        raise HsmError("token exported a key that does not unwrap") from exc


def _private_value(key: keys.PrivateKey) -> bytes:
    """``CKA_VALUE`` of a private key: an Ed25519 seed, a P-256 scalar."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.private_bytes_raw()
    return key.private_numbers().private_value.to_bytes(32, "big")


def _point(public: Any, alg: str) -> bytes:
    """The key's point without the DER OCTET STRING that most tokens wrap it in."""
    raw = bytes(public[Attribute.EC_POINT])
    size = _POINT_BYTES[alg]
    return raw[-size:] if len(raw) == size + 2 and raw[0] == 0x04 else raw


def _der_octets(data: bytes) -> bytes:
    return bytes([0x04, len(data)]) + data
