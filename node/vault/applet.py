"""The vault applet: the part of each member that runs inside its HSM device.

Everything that must not be in the hands of a node host happens here, with the fleet's vault
keys (made in the key ceremony, held by the HSM backend): opening clients' requests (HPKE to the
``vault-kem`` key), checking the account authority's authorizations, running the server side of
OPAQUE (the ``vault-opaque`` setup), sealing and opening records and login states (the
``vault-storage`` key), and signing this member's acceptances of record values.

Every member checks every change: an acceptance of a ``vault-`` record is signed only by
:meth:`FleetVault.vote`, and only for a value that is a valid successor of a predecessor the
proposer proves committed (a quorum's signed acceptances, verified here) and that is not older
than what this member accepted itself. The successor is recomputed from the client's sealed
request (the witness): no member, orchestrator or operator key can make the fleet accept an
arbitrary record, lower an attempt count without a finished login, or register without the
authority's authorization. A login is answered (the server's response, from which the client
checks its guess) only for an attempt a quorum committed, by the one member it names, once.

The host gives the applet its view of the fleet (members and vote keys, the configurations
before, the vault policy, which key epochs it holds), unsigned. A host that lies about it is a
faulty member at least; worse, commit proofs are verified against that view, so a host that
names members whose keys it holds can have its own HSM answer logins the quorum never counted.
THREAT_MODEL.md (G16) has the bound this leaves and what closes it: configurations verified
inside the HSM under a key pinned there.
"""

# No ``from __future__ import annotations``: body field types stay evaluated (see messages.schema).
import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Generic, TypeVar

import opaque_ke_py as opaque
import structlog

from messages.canonical import canonical, loads_strict
from messages.ceremony import key_label
from messages.commit_proof import CommitProof, pred_proof, verify_proof
from messages.envelope import Envelope, Signature
from messages.errors import HsmfleetError, SchemaViolation
from messages.ids import id_time_ms
from messages.membership import Membership
from messages.quorum import (
    NO_BALLOT,
    NO_VERDICT,
    Accepted,
    Ballot,
    Config,
    Justification,
    PredecessorSuperseded,
    ProofOfAnotherConfiguration,
    Vetting,
    VettingRefusal,
    value_digest,
    vetted,
)
from messages.schema import Body
from messages.vault import (
    KE1_BYTES,
    KE3_BYTES,
    MAX_SECRET_BYTES,
    OK,
    RECOVER_FINISH,
    RECOVER_START,
    REGISTER,
    REGISTER_START,
    REGISTRATION_REQUEST_BYTES,
    REGISTRATION_UPLOAD_BYTES,
    BudgetExhausted,
    LoginExpired,
    LoginRefused,
    MalformedOpaque,
    NoRecord,
    Outcome,
    PinProof,
    Plaintext,
    RecordKeyDestroyed,
    RecoverFinish,
    RecoverStart,
    Register,
    RegisterStart,
    RegistrationExists,
    ReplacementTooSoon,
    ReplayedRequest,
    StaleRegistration,
    UnknownVaultKey,
    UnreadableRequest,
    VaultRequest,
    credential_identifier,
    parse_request,
    request_info,
    seal_answer,
    seal_release,
)
from messages.vault_authorization import RECOVER, REPLACE
from messages.vault_authorization import REGISTER as REGISTER_KIND
from messages.vault_policy import (
    KEM_ROLE,
    OPAQUE_ROLE,
    STORAGE_ROLE,
    VAULT_KEYS,
    VaultError,
    VaultPolicy,
)
from node.hsm.base import Hsm, HsmError, KeyNotFound
from node.vault import record as records
from node.vault.journal import EvaluationJournal
from node.vault.record import (
    Attempt,
    LoginState,
    Registered,
    SealedBlob,
    UserRecord,
    record_aad,
)

log = structlog.get_logger("hsmfleet.vault.applet")
T = TypeVar("T")

REGISTERED = "register"
ATTEMPTED = "attempt"
DESTROYED = "destroy"
SUCCEEDED = "success"
CHANGES = {
    REGISTERED: REGISTER,
    ATTEMPTED: RECOVER_START,
    DESTROYED: RECOVER_START,
    SUCCEEDED: RECOVER_FINISH,
}
"""Each kind of record change, and the client request it is made from."""


class TransitionRefused(VaultError):
    """A proposed record value is not a valid successor of a committed predecessor."""

    kind = "transition_refused"


class VaultNotConfigured(VaultError):
    """The applet serves no vault of this fleet (the host has not configured it)."""

    kind = "vault_not_configured"


@dataclass(frozen=True)
class KeySet(Body):
    """One key epoch's vault keys: the fleet epoch and the rollout whose labels hold them."""

    epoch: int
    rollout: str


@dataclass(frozen=True)
class FleetSetup(Body):
    """The host's view of a fleet for its applet: this member, the replication configuration,
    the vault policy and the key epochs the HSM holds."""

    fleet: str
    member: str
    config: Config
    policy: VaultPolicy
    keys: tuple[KeySet, ...]
    earlier: tuple[Config, ...] = ()
    """The configurations this member applied before ``config``: a value committed under
    one of them is proven by that configuration's quorum."""


@dataclass(frozen=True)
class Witness(Body):
    """What a change of a record is made from: the client's request as sent, and, for an
    attempt, the member that will answer it."""

    change: str
    request: VaultRequest
    evaluator: str = ""

    def encode(self) -> bytes:
        return canonical(self.to_json())


@dataclass(frozen=True)
class RequestInfo(Body):
    """What a host may know of a client's request to route it: its id, the user, and for a
    ``register``, the registration it completes."""

    id: str
    user: str
    registration: str = ""


@dataclass(frozen=True)
class _Expected:
    """A change recomputed: the new record, and for a registration what its sealed part must
    hold (sealed anew under the record's storage key; ``record.sealed`` is then unset). Any
    other change keeps the predecessor's sealed part as it is (or drops it: destroyed)."""

    record: UserRecord
    contents: Registered | None = None


@dataclass(frozen=True)
class _Keys:
    """The labels of one key epoch's vault keys and their key ids."""

    epoch: int
    kem: str
    storage: str
    server: str
    kem_id: str
    storage_id: str
    server_id: str


class FleetVault:
    """One fleet's vault in this HSM."""

    def __init__(
        self,
        backend: Hsm,
        setup: FleetSetup,
        journal: EvaluationJournal,
        clock_ms: Callable[[], int],
    ) -> None:
        self.backend = backend
        self.fleet = setup.fleet
        self.journal = journal
        self.clock_ms = clock_ms
        self._setups: dict[str, object] = {}
        # A request is opened when it is taken, proposed, voted on by this member and answered;
        # a login is finished when proposed, voted on and released: each once, kept a while.
        self._opened: _Kept[Plaintext] = _Kept(KEPT)
        self._finished: _Kept[tuple[LoginState, bytes]] = _Kept(KEPT)
        self.update(setup)

    def update(self, setup: FleetSetup) -> None:
        """Take the host's new view of the fleet (a membership change, a key epoch imported or
        destroyed, a new policy)."""
        epochs = sorted(
            (k for k in (self._held(s) for s in setup.keys) if k is not None),
            key=lambda k: k.epoch,
        )
        if setup.fleet != self.fleet or not epochs:
            raise VaultNotConfigured("the HSM holds no vault keys of this fleet", fleet=self.fleet)
        vote_label = self._vote_label(setup.member, setup.config)
        self.member = setup.member
        self.policy = setup.policy
        self.membership = Membership.from_config(setup.config)
        self.memberships = {
            m.epoch: m
            for m in (Membership.from_config(c) for c in setup.earlier)
            if m.fleet == self.fleet and m.epoch < self.membership.epoch
        }
        self.memberships[self.membership.epoch] = self.membership
        self.epochs = epochs
        self.vote_label = vote_label

    # -- keys ------------------------------------------------------------------------------

    def _held(self, keys: KeySet) -> _Keys | None:
        labels = {role: key_label(self.fleet, keys.rollout, role) for role in _ROLES}
        try:
            public = {role: self.backend.public_key(label) for role, label in labels.items()}
        except KeyNotFound:
            return None
        return _Keys(
            keys.epoch,
            labels[KEM_ROLE],
            labels[STORAGE_ROLE],
            labels[OPAQUE_ROLE],
            *(public[role].kid for role in (KEM_ROLE, STORAGE_ROLE, OPAQUE_ROLE)),
        )

    def _vote_label(self, member: str, config: Config) -> str | None:
        """The label of the key ``config`` names ``member`` with (None: not a member yet)."""
        named = next((m for m in config.members if m.member == member), None)
        if named is None:
            return None
        for label in self.backend.labels():
            key = self.backend.public_key(label)
            if (key.alg, key.public_key) == (named.alg, named.public_key):
                return label
        raise VaultNotConfigured("the HSM holds no vote key this member is named with")

    @property
    def current(self) -> _Keys:
        return self.epochs[-1]

    def _by_id(self, attribute: str, kid: str, what: str) -> _Keys:
        for keys in self.epochs:
            if getattr(keys, attribute) == kid:
                return keys
        raise RecordKeyDestroyed(f"the {what} is sealed under a key this HSM no longer holds")

    def _request_keys(self, request: VaultRequest) -> _Keys:
        """The key epoch whose vault key ``request`` is sealed to."""
        keys = next((k for k in self.epochs if k.kem_id == request.key), None)
        if keys is None:
            raise UnknownVaultKey("the request is sealed to a key this HSM does not hold")
        return keys

    def _verify(self, proof: CommitProof, value: bytes | None) -> None:
        """Raise :class:`BadProof` unless ``proof`` shows ``value`` committed, under the
        configuration its votes were cast in (the current one or one this member applied
        before); :class:`ProofOfAnotherConfiguration` when that configuration is unknown here."""
        try:
            verify_proof(proof, self.membership, value)
        except ProofOfAnotherConfiguration as exc:
            earlier = self.memberships.get(exc.detail.get("epoch"))  # type: ignore[arg-type]
            if earlier is None or earlier is self.membership:
                raise
            verify_proof(proof, earlier, value)

    def _setup(self, label: str) -> object:
        setup = self._setups.get(label)
        if setup is None:
            setup = self._setups[label] = opaque.ServerSetupData.from_bytes(
                self.backend.secret(label)
            )
        return setup

    def _seal(self, plain: bytes, aad: bytes, keys: _Keys | None = None) -> bytes:
        keys = keys or self.current
        return SealedBlob(keys.storage_id, self.backend.seal(keys.storage, plain, aad)).encode()

    def _unseal(self, data: bytes, aad: bytes, what: str) -> bytes:
        blob = SealedBlob.decode(data)
        keys = self._by_id("storage_id", blob.key, what)
        return self.backend.unseal(keys.storage, blob.sealed, aad)

    def contents(self, record: UserRecord) -> Registered:
        """The sealed part of a live ``record``; :class:`records.DamagedRecord` if it does not
        open, :class:`RecordKeyDestroyed` if its key epoch is gone."""
        assert record.sealed is not None
        try:
            plain = self._unseal(record.sealed, record_aad(self.fleet, record), "record")
            return Registered.from_json(loads_strict(plain))
        except (HsmError, ValueError, SchemaViolation) as exc:
            raise records.DamagedRecord(f"the record does not open: {exc}") from None

    def _sealed_record(self, record: UserRecord, contents: Registered) -> UserRecord:
        """``record`` with ``contents`` sealed under the storage key it names."""
        keys = self._by_id("storage_id", record.storage, "record")
        sealed = self._seal(canonical(contents.to_json()), record_aad(self.fleet, record), keys)
        return records.replace_record(record, sealed=sealed)

    # -- requests --------------------------------------------------------------------------

    def open(self, op: str, request: VaultRequest) -> Plaintext:
        """The plaintext of a client's request for ``op``, opened with the vault key it names."""
        kept = (op, request.key, hashlib.sha256(request.sealed).digest())
        plain = self._opened.get(kept)
        if plain is not None:
            return plain
        keys = self._request_keys(request)
        try:
            data = self.backend.open_hpke(keys.kem, request.sealed, request_info(self.fleet, op))
        except HsmError:
            raise UnreadableRequest(
                "the request does not open with the fleet's vault key"
            ) from None
        return self._opened.keep(kept, parse_request(op, data))

    def peek(self, op: str, request: VaultRequest) -> RequestInfo:
        """Who ``request`` is for (it must open); nothing of what is sealed inside."""
        plain = self.open(op, request)
        return RequestInfo(
            id=plain.id, user=plain.user, registration=getattr(plain, "registration", "")
        )

    def judge(self, key: str, value: bytes | None, justification: bytes | None) -> bool:
        """Whether an honest member can have accepted ``value`` for vetted record ``key`` with
        ``justification``: what a proposer asks before it takes a reported value as current
        (a faulty member's report is passed over). Only definite defects say no: a proof of
        another configuration, or a change made through a key epoch this HSM no longer holds, may
        be genuine (:data:`messages.quorum.NO_VERDICT`)."""
        try:
            self._successor(key, _justification(justification), value)
        except HsmfleetError as exc:
            if exc.kind in NO_VERDICT:
                return True  # the acceptors, who may know more, decide when it is written back
            log.warning("a reported value passed over", key=key, kind=exc.kind, reason=str(exc))
            return False
        return True

    def _fresh(self, request_id: str, clock_ms: int | None) -> int:
        """The time inside ``request_id``; with this HSM's clock given (a request taken now),
        refuses one made more than :data:`records.REQUEST_WINDOW_MS` away from it."""
        try:
            at = id_time_ms(request_id)
        except HsmfleetError:
            raise UnreadableRequest("the request id is not a time-ordered id") from None
        if clock_ms is not None and abs(clock_ms - at) > records.REQUEST_WINDOW_MS:
            raise UnreadableRequest("the request is too old or from the future", id=request_id)
        return at

    def _authorized(
        self, plain: Plaintext, ops: tuple[str, ...], request: str, now: int | None
    ) -> None:
        """Refuse ``plain`` unless the account authority authorized it; in force at ``now``
        (None: a change checked after it was taken, when only the statement itself counts)."""
        policy = self.policy
        plain.authorization.check(  # type: ignore[union-attr]
            policy.authority_alg,
            policy.authority_key,
            fleet=self.fleet,
            user=plain.user,
            ops=ops,
            request=request,
            now_ms=now,
        )

    def answer(self, op: str, request: VaultRequest, outcome: Outcome) -> bytes:
        """``outcome`` sealed for the client of ``request`` (under the key inside it)."""
        plain = self.open(op, request)
        if outcome.secret is not None or outcome.login is not None:
            raise VaultError("the host may not put secrets or login states in an answer")
        return seal_answer(plain.answer_key, plain.id, outcome)

    # -- registration ----------------------------------------------------------------------

    def register_start(self, request: VaultRequest) -> bytes:
        """OPAQUE's registration response for a new registration, sealed for the client."""
        now = self.clock_ms()
        plain = self.open(REGISTER_START, request)
        assert isinstance(plain, RegisterStart)
        self._fresh(plain.id, now)
        self._authorized(plain, (REGISTER_KIND, REPLACE), plain.id, now)
        if len(plain.registration_request) != REGISTRATION_REQUEST_BYTES:
            raise MalformedOpaque("a registration request is 32 bytes")
        ident = credential_identifier(self.fleet, plain.user, plain.id)
        server = self._request_keys(request).server  # the epoch of the client's bundle
        try:
            response = opaque.server_registration_start(
                self._setup(server), plain.registration_request, ident
            ).get_message()
        except ValueError:
            raise MalformedOpaque("the registration request does not decode") from None
        return seal_answer(plain.answer_key, plain.id, Outcome(status=OK, response=response))

    # -- changes ---------------------------------------------------------------------------

    def propose(
        self, change: str, key: str, pred: bytes | None, request: VaultRequest, evaluator: str = ""
    ) -> tuple[bytes, bytes]:
        """A change of record ``key`` from its committed value ``pred``: the new value and the
        witness the acceptors recompute it from. Raises the :class:`VaultError` that refuses
        the change (the client's answer)."""
        witness = Witness(change=change, request=request, evaluator=evaluator)
        expected = self._apply(key, records.decode(pred), witness, self.clock_ms())
        new = expected.record
        if expected.contents is not None:
            new = self._sealed_record(new, expected.contents)
        return records.encode(new), witness.encode()

    def check(self, key: str, ballot: Ballot, own: Vetting) -> None:
        """Raise :class:`TransitionRefused` (or the refusal behind it) unless this member may
        accept ``own.value`` for record ``key`` under ``ballot``, holding what ``own`` says."""
        value = own.value
        if own.vetted and own.held == value:
            return  # this applet checked that very value when it first accepted it
        just = _justification(own.justification)
        before = Ballot(just.ballot, just.by)
        if not before < ballot:
            raise TransitionRefused("the predecessor is not older than the proposal")
        mine = Ballot(own.accepted, own.accepted_by)
        if not (mine <= before or (own.vetted and own.held == just.pred)):
            raise PredecessorSuperseded(
                "this member accepted a later value than the predecessor",
                accepted=f"{mine.n}/{mine.by}",
                predecessor=f"{before.n}/{before.by}",
            )
        self._successor(key, just, value)

    def _successor(self, key: str, just: Justification, value: bytes | None) -> None:
        """Raise unless ``value`` is what ``just``'s witness makes of its predecessor, which its
        votes prove committed (the empty record needs none)."""
        if just.votes:
            self._verify(pred_proof(self.fleet, key, just), just.pred)
        elif just.pred is not None or (just.ballot, just.by) != NO_BALLOT:
            raise TransitionRefused("the predecessor carries no commit proof")
        if just.witness is None:
            if value != just.pred:
                raise TransitionRefused("an unchanged record must be its predecessor")
            return
        try:
            witness = Witness.from_json(loads_strict(just.witness))
        except (ValueError, SchemaViolation) as exc:
            raise TransitionRefused(f"the witness does not decode: {exc}") from None
        expected = self._apply(key, records.decode(just.pred), witness, None)
        self._same(expected, records.decode(value))

    def _same(self, expected: _Expected, proposed: UserRecord | None) -> None:
        if proposed is None:
            raise TransitionRefused("a change cannot empty a record")
        if expected.contents is None:
            if proposed != expected.record:
                raise TransitionRefused("the proposed record is not the recomputed successor")
            return
        if replace(proposed, sealed=None) != replace(expected.record, sealed=None):
            raise TransitionRefused("the proposed record is not the recomputed successor")
        if proposed.sealed is None or SealedBlob.decode(proposed.sealed).key != proposed.storage:
            raise TransitionRefused("the record is not sealed under the storage key it names")
        if self.contents(proposed) != expected.contents:
            raise TransitionRefused("the sealed part does not hold what the request registers")

    def _apply(
        self, key: str, pred: UserRecord | None, witness: Witness, clock: int | None
    ) -> _Expected:
        """The successor of ``pred`` that ``witness`` makes; raises the refusal.

        Whether a change is valid depends on the predecessor and the request alone, never on
        the checking member's clock (so a value valid once stays valid, and a value written
        back later is checked like the first time): login states are judged by the client's
        clock (the times inside its requests' ids), replays by the record (registrations only
        go forward, started logins are listed, older starts are refused). ``clock`` is given
        only when this HSM takes a request now (:meth:`propose`): then the request must be
        fresh and its authorization in force."""
        op = CHANGES.get(witness.change)
        if op is None:
            raise TransitionRefused("unknown change", change=witness.change)
        plain = self.open(op, witness.request)
        if records.record_key(plain.user) != key:
            raise TransitionRefused("the request is for another user's record")
        if pred is not None and pred.user != plain.user:
            raise TransitionRefused("the predecessor is another user's record")
        at = self._fresh(plain.id, clock)
        if witness.change == REGISTERED:
            keys = self._request_keys(witness.request)
            return self._registered(pred, plain, keys, at, clock)  # type: ignore[arg-type]
        if witness.change == SUCCEEDED:
            return self._succeeded(pred, plain, at)  # type: ignore[arg-type]
        self._authorized(plain, (RECOVER,), plain.id, clock)
        live = _live(pred)
        if clock is not None:  # taken now: an attempt this HSM could not answer is not spent
            self._by_id("server_id", live.server, "registration")
        if witness.change == DESTROYED:
            return self._destroyed(live, plain)  # type: ignore[arg-type]
        if clock is not None and witness.evaluator not in self.membership.voters:
            # only when taken: membership is the checker's view, not the change's
            raise TransitionRefused("the evaluator is not a member", evaluator=witness.evaluator)
        return self._attempted(live, plain, witness.evaluator)  # type: ignore[arg-type]

    def _registered(
        self, pred: UserRecord | None, plain: Register, keys: _Keys, at: int, clock: int | None
    ) -> _Expected:
        """A registration, under the key epoch of the client's bundle (``keys``): its OPAQUE
        setup answered the registration, its storage key seals the record. A record stays in
        its epoch until it is registered again (clients do so once they recover with a newer
        bundle)."""
        self._authorized(plain, (REGISTER_KIND, REPLACE), plain.registration, clock)
        self._fresh(plain.registration, clock)
        if pred is not None and plain.registration <= pred.registration:
            raise StaleRegistration("an equal or newer registration is in force", user=plain.user)
        if len(plain.upload) != REGISTRATION_UPLOAD_BYTES:
            raise MalformedOpaque("a registration upload is 192 bytes")
        if not 0 < len(plain.secret) <= MAX_SECRET_BYTES:
            raise UnreadableRequest(f"a stored secret is 1 to {MAX_SECRET_BYTES} bytes")
        try:
            password_file = opaque.server_registration_finish(plain.upload).get_password_file()
        except ValueError:
            raise MalformedOpaque("the registration upload does not decode") from None
        new = UserRecord(
            user=plain.user,
            generation=1,
            registration=plain.registration,
            sealed=None,
            storage=keys.storage_id,
            server=keys.server_id,
        )
        if pred is not None:
            new = records.replace_record(
                pred,
                generation=pred.generation + 1,
                registration=plain.registration,
                storage=keys.storage_id,
                server=keys.server_id,
            )
            if plain.proof is not None and not pred.destroyed:
                state = self._proven(pred, plain.proof, at)
                new = records.replace_record(new, cleared=state.attempt)
            elif plain.authorization.op == REPLACE:
                at = id_time_ms(plain.registration)
                if pred.replaced and at - pred.replaced_at < self.policy.replace_interval_s * 1000:
                    raise ReplacementTooSoon(
                        "the record was replaced without its PIN too recently", user=plain.user
                    )
                new = records.replace_record(
                    new, cleared=pred.attempts, replaced=pred.replaced + 1, replaced_at=at
                )
            else:
                raise RegistrationExists(
                    "the user has a registration: prove its PIN or replace it", user=plain.user
                )
        return _Expected(new, Registered(password_file, plain.secret))

    def _attempted(self, pred: UserRecord, plain: RecoverStart, evaluator: str) -> _Expected:
        if pred.started(plain.id) is not None:
            raise ReplayedRequest("this login was started already", user=pred.user)
        newest = max((id_time_ms(a.id) for a in pred.recent), default=0)
        if id_time_ms(plain.id) < newest - records.RECENT_MS:
            raise ReplayedRequest("this login is older than the record remembers", user=pred.user)
        if pred.failures >= self.policy.limit:
            raise BudgetExhausted("the user's guesses are used up", user=pred.user)
        if len(plain.credential_request) != KE1_BYTES:
            raise MalformedOpaque("a first login message is 96 bytes")
        attempt = Attempt(
            plain.id,
            pred.attempts + 1,
            evaluator,
            records.message_digest(plain.credential_request),
        )
        return _Expected(records.with_attempt(pred, attempt))

    def _destroyed(self, pred: UserRecord, plain: RecoverStart) -> _Expected:
        if pred.failures < self.policy.limit:
            raise TransitionRefused("a record is destroyed only past its limit", user=pred.user)
        last = max((id_time_ms(a.id) for a in pred.recent), default=0)
        if id_time_ms(plain.id) < last + self.policy.login_ttl_s * 1000:
            raise BudgetExhausted("the user's guesses are used up", user=pred.user)
        return _Expected(records.replace_record(pred, sealed=None))

    def _succeeded(self, pred: UserRecord | None, plain: RecoverFinish, at: int) -> _Expected:
        live = _live(pred)
        state = self._proven(live, PinProof(plain.login, plain.finalization), at)
        return _Expected(records.replace_record(live, cleared=state.attempt))

    def _login(self, record: UserRecord, proof: PinProof, at: int) -> tuple[LoginState, bytes]:
        """The login state ``proof`` finishes, once its final message verifies against the
        login's OPAQUE server state: the proof of the PIN. Returns the state and the session
        key; raises :class:`LoginRefused`, :class:`LoginExpired` (finished, by the time in its
        request id ``at``, more than the login lifetime after it was started by the time in
        that request's id: one client clock, whatever its offset) or :class:`ReplayedRequest`
        (a login already counted as a success)."""
        if len(proof.finalization) != KE3_BYTES:
            raise MalformedOpaque("a final login message is 64 bytes")
        kept = hashlib.sha256(proof.login + proof.finalization).digest()
        finished = self._finished.get(kept)
        if finished is None:
            finished = self._finish(proof)
        state = finished[0]
        same = (state.fleet, state.user, state.generation, state.registration)
        if same != (self.fleet, record.user, record.generation, record.registration):
            raise LoginRefused("the login is of another registration", user=record.user)
        if state.attempt > record.attempts:
            raise LoginRefused("the login's attempt was never counted", user=record.user)
        if at > state.expires_ms:
            raise LoginExpired("the login is too old to finish", user=record.user)
        self._finished.keep(kept, finished)
        return finished

    def _finish(self, proof: PinProof) -> tuple[LoginState, bytes]:
        """The login state ``proof`` carries, once its final message verifies against it, and
        the session key; raises :class:`LoginRefused`."""
        try:
            plain = self._unseal(proof.login, records.login_aad(self.fleet), "login state")
            state = LoginState.from_json(loads_strict(plain))
        except (HsmError, HsmfleetError, ValueError) as exc:
            raise LoginRefused(f"the login state is not one this fleet sealed: {exc}") from None
        try:
            finished = opaque.server_login_finish(state.server_state, proof.finalization)
        except ValueError:
            raise LoginRefused("the final login message does not verify") from None
        return state, finished.get_session_key()

    def _proven(self, record: UserRecord, proof: PinProof, at: int) -> LoginState:
        """The login ``proof`` finishes, which must not be counted as a success yet."""
        state, _ = self._login(record, proof, at)
        if state.attempt <= record.cleared:
            raise ReplayedRequest("this login was counted as a success already", user=record.user)
        return state

    # -- answering logins ------------------------------------------------------------------

    def _committed(
        self, key: str, value: bytes, ballot: Ballot, votes: tuple[bytes, ...]
    ) -> UserRecord:
        self._verify(CommitProof(self.fleet, key, ballot, value_digest(value), votes), value)
        record = records.decode(value)
        if record is None or records.record_key(record.user) != key:
            raise TransitionRefused("the committed value is not this record")
        return record

    def evaluate(
        self, request: VaultRequest, value: bytes, ballot: Ballot, votes: tuple[bytes, ...]
    ) -> bytes:
        """Answer a committed login attempt: the server's OPAQUE response and the sealed login
        state, for the client of ``request``, once ``value`` (proven committed by ``votes``)
        counts the attempt and names this member to answer it. Journalled before it is made:
        an attempt is answered once."""
        plain = self.open(RECOVER_START, request)
        assert isinstance(plain, RecoverStart)
        record = self._committed(records.record_key(plain.user), value, ballot, votes)
        attempt = record.started(plain.id)
        if attempt is None or attempt.evaluator != self.member:
            raise TransitionRefused("the committed record names no such attempt for this member")
        if attempt.message != records.message_digest(plain.credential_request):
            raise TransitionRefused("the attempt was counted for another login message")
        if attempt.number <= record.cleared:
            raise ReplayedRequest("a later login succeeded; this attempt is moot")
        live = _live(record)
        keys = self._by_id("server_id", live.server, "registration")
        setup = self._setup(keys.server)
        contents = self.contents(live)
        self.journal.claim(self.fleet, live.user, attempt.number, live.cleared)
        ident = credential_identifier(self.fleet, live.user, live.registration)
        try:
            started = opaque.server_login_start(
                setup, contents.password_file, plain.credential_request, ident
            )
        except ValueError:
            raise MalformedOpaque("the first login message does not decode") from None
        state = LoginState(
            fleet=self.fleet,
            user=live.user,
            generation=live.generation,
            registration=live.registration,
            attempt=attempt.number,
            expires_ms=id_time_ms(plain.id) + self.policy.login_ttl_s * 1000,
            server_state=started.get_state(),
        )
        login = self._seal(canonical(state.to_json()), records.login_aad(self.fleet))
        outcome = Outcome(
            status=OK,
            response=started.get_message(),
            login=login,
            attempt=attempt.number,
            remaining=max(0, self.policy.limit - live.failures),
            generation=live.generation,
            replaced=live.replaced,
            legacy=keys.epoch < self._request_keys(request).epoch,
        )
        return seal_answer(plain.answer_key, plain.id, outcome)

    def release(
        self, request: VaultRequest, value: bytes, ballot: Ballot, votes: tuple[bytes, ...]
    ) -> bytes:
        """The stored secret for the client of a finished login, encrypted under its OPAQUE
        session key, once ``value`` (proven committed) counts that login as the PIN proven."""
        plain = self.open(RECOVER_FINISH, request)
        assert isinstance(plain, RecoverFinish)
        record = _live(self._committed(records.record_key(plain.user), value, ballot, votes))
        state, session_key = self._login(
            record, PinProof(plain.login, plain.finalization), id_time_ms(plain.id)
        )
        if record.cleared < state.attempt:
            raise TransitionRefused("the login's success is not committed")
        secret = seal_release(
            session_key, self.fleet, record.user, plain.id, self.contents(record).secret
        )
        outcome = Outcome(status=OK, secret=secret, generation=record.generation)
        return seal_answer(plain.answer_key, plain.id, outcome)

    # -- votes -----------------------------------------------------------------------------

    def vote(
        self, envelope: Envelope, checks: tuple[Vetting, ...]
    ) -> Signature | tuple[VettingRefusal, ...]:
        """Sign ``envelope``, this member's acceptance, if every vault record it grants passes
        :meth:`check`; otherwise the records to refuse instead (nothing signed)."""
        try:
            vote = Accepted.from_json(envelope.body)
        except SchemaViolation as exc:
            raise TransitionRefused(f"not an acceptance: {exc}") from None
        if envelope.type != Accepted.TYPE or vote.fleet != self.fleet:
            raise TransitionRefused("not an acceptance of this fleet's records")
        if vote.epoch != self.membership.epoch or envelope.source != self.member:
            raise TransitionRefused("an acceptance of another configuration or member")
        by_index = {c.index: c for c in checks}
        refused_by_vote = vote.refused()
        refusals = []
        for i, key in enumerate(vote.keys):
            if i in refused_by_vote or not vetted(key):
                continue
            check = by_index.get(i)
            try:
                if check is None or value_digest(check.value) != vote.digests[i]:
                    raise TransitionRefused("the granted value was not shown to the applet")
                self.check(key, Ballot(vote.ballots[i], vote.proposer), check)
            except HsmfleetError as exc:
                refusals.append(VettingRefusal(index=i, kind=exc.kind, reason=str(exc)))
        if refusals:
            return tuple(refusals)
        if self.vote_label is None:
            raise VaultNotConfigured("this member is not in the fleet's configuration")
        key = self.backend.public_key(self.vote_label)
        value = self.backend.sign(self.vote_label, envelope.signing_bytes())
        return Signature(kid=key.kid, alg=key.alg, value=value)


class VaultApplet:
    """The vault applet of one HSM device: every fleet it serves, and its evaluation journal."""

    def __init__(
        self,
        backend: Hsm,
        journal: EvaluationJournal,
        clock_ms: Callable[[], int] | None = None,
    ) -> None:
        self.backend = backend
        self.journal = journal
        self.clock_ms = clock_ms or (lambda: time.time_ns() // 1_000_000)
        self._fleets: dict[str, FleetVault] = {}
        self._lock = threading.Lock()

    def configure(self, setup: FleetSetup) -> FleetVault:
        """Serve the vault of ``setup.fleet`` as the host describes it (the same object again,
        updated, for a fleet served already)."""
        with self._lock:
            vault = self._fleets.get(setup.fleet)
            if vault is None:
                vault = FleetVault(self.backend, setup, self.journal, self.clock_ms)
                self._fleets[setup.fleet] = vault
            else:
                vault.update(setup)
        return vault

    def forget(self, fleet: str) -> None:
        """Serve no vault of ``fleet`` any more (it was left or retired)."""
        with self._lock:
            self._fleets.pop(fleet, None)

    def fleet(self, fleet: str) -> FleetVault:
        vault = self._fleets.get(fleet)
        if vault is None:
            raise VaultNotConfigured("this HSM serves no vault of this fleet", fleet=fleet)
        return vault


_ROLES = tuple(VAULT_KEYS)
KEPT = 512
"""Opened requests and finished logins each kept for reuse, the most recent."""


class _Kept(Generic[T]):
    """The ``size`` values kept last, by key; safe across the threads that call the applet."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._values: OrderedDict[object, T] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: object) -> T | None:
        with self._lock:
            value = self._values.get(key)
            if value is not None:
                self._values.move_to_end(key)
            return value

    def keep(self, key: object, value: T) -> T:
        with self._lock:
            self._values[key] = value
            if len(self._values) > self.size:
                self._values.popitem(last=False)
        return value


def _justification(data: bytes | None) -> Justification:
    try:
        return Justification.decode(data)
    except SchemaViolation as exc:
        raise TransitionRefused(f"the justification does not decode: {exc}") from None


def _live(record: UserRecord | None) -> UserRecord:
    if record is None or record.generation == 0:
        raise NoRecord("the user has no registration")
    if record.destroyed:
        raise BudgetExhausted("the user's guesses are used up", user=record.user)
    return record
