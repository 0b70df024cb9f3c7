"""A fleet's vault applets in this process, for testing what they decide: each member a software
HSM holding its identity key and the vault keys of one local key ceremony, its applet
configured; a client that speaks the vault protocol to them (OPAQUE included); and commits
made of the members' own signed acceptances (no NATS: that is the integration tests' job)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import opaque_ke_py as opaque

from messages.ceremony import GenerateFleetKeys, ImportFleetKeys, KeyRole, Recipient
from messages.membership import Membership
from messages.quorum import Accepted, Ballot, Justification, MemberKey, Vetting, value_digest
from messages.signing import ED25519, Ed25519Signer, key_id
from messages.vault import (
    ANSWER_KEY_BYTES,
    Outcome,
    PinProof,
    RecoverFinish,
    RecoverStart,
    Register,
    RegisterStart,
    VaultRequest,
    kem_public_key,
    open_answer,
    seal_request,
)
from messages.vault_authorization import AccountAuthority, Authorization
from messages.vault_policy import KEM_ROLE, OPAQUE_ROLE, VAULT_KEYS, VaultPolicy
from node import ceremony
from node.hsm.soft import SoftHsm
from node.identity import IDENTITY, TRANSPORT
from node.vault.applet import FleetSetup, FleetVault, KeySet, VaultApplet
from node.vault.journal import EvaluationJournal
from transport.outbox import IdSource, Outbox

FLEET = "fleet-1"
ROLLOUT = "r1"


@dataclass
class Clock:
    """A settable clock (milliseconds), shared by the applets and the client."""

    now_ms: int = 1_800_000_000_000

    def __call__(self) -> int:
        return self.now_ms


@dataclass
class Commit:
    """A value a quorum of the applets accepted, with the signed acceptances."""

    key: str
    value: bytes | None
    ballot: Ballot
    votes: tuple[bytes, ...]
    justification: bytes


@dataclass
class Applets:
    """``size`` members ``m1``.. with their applets, one authority, one clock."""

    root: Path
    size: int = 3
    limit: int = 3
    replace_interval_s: int = 3600
    clock: Clock = field(default_factory=Clock)

    def __post_init__(self) -> None:
        self.names = [f"m{i}" for i in range(1, self.size + 1)]
        self.hsms = {m: SoftHsm(self.root / m, bytes(32)) for m in self.names}
        for box in self.hsms.values():
            box.ensure(IDENTITY, ED25519)
            box.ensure(TRANSPORT, "ecdh-p256")
        self.authority_signer = Ed25519Signer.generate()
        self.authority = AccountAuthority(self.authority_signer)
        self.policy = VaultPolicy(
            limit=self.limit,
            authority_alg=ED25519,
            authority_key=self.authority_signer.public_key,
            replace_interval_s=self.replace_interval_s,
        )
        self._ceremony()
        keys = {m: _member_key(m, self.hsms[m]) for m in self.names}
        self.membership = Membership.majority(FLEET, keys)
        self.journals = {m: EvaluationJournal(self.root / f"{m}.journal") for m in self.names}
        self.applets = {
            m: VaultApplet(self.hsms[m], self.journals[m], self.clock) for m in self.names
        }
        self.vaults: dict[str, FleetVault] = {
            m: self.applets[m].configure(self.setup(m)) for m in self.names
        }
        self.ids = IdSource(clock_ms=self.clock)
        self.ballots = 0

    def setup(self, member: str) -> FleetSetup:
        return FleetSetup(
            fleet=FLEET,
            member=member,
            config=self.membership.to_config(),
            policy=self.policy,
            keys=(KeySet(epoch=1, rollout=ROLLOUT),),
        )

    def _ceremony(self) -> None:
        first, *rest = self.names
        roles = tuple(KeyRole(role, alg) for role, alg in VAULT_KEYS.items())
        recipients = tuple(
            Recipient(m, "ecdh-p256", self.hsms[m].public_key(TRANSPORT).public_key) for m in rest
        )
        offer = ceremony.generate(
            self.hsms[first],
            first,
            GenerateFleetKeys(FLEET, 1, ROLLOUT, roles, recipients, self.policy),
        )
        for member in rest:
            wrapped = tuple(w for w in offer.wrapped if w.node == member)
            ceremony.import_keys(
                self.hsms[member],
                member,
                ImportFleetKeys(FLEET, 1, ROLLOUT, wrapped, self.policy),
            )
        published = {k.role: k for k in offer.receipt.keys}
        self.kem = published[KEM_ROLE]
        self.server_key = published[OPAQUE_ROLE].public_key

    # -- the client side -------------------------------------------------------------------

    def authorize(
        self, user: str, op: str, request: str, *, lifetime_ms: int | None = None
    ) -> Authorization:
        if lifetime_ms is not None:
            return AccountAuthority(self.authority_signer, lifetime_ms).authorize(
                FLEET, user, op, request, self.clock()
            )
        return self.authority.authorize(FLEET, user, op, request, self.clock())

    def request(self, op: str, plain: object) -> VaultRequest:
        """``plain`` sealed to the fleet's vault key for ``op``."""
        sealed = seal_request(kem_public_key(self.kem.public_key), FLEET, op, plain)  # type: ignore[arg-type]
        return VaultRequest(key=key_id(self.kem.alg, self.kem.public_key), sealed=sealed)

    def opened(self, sealed: bytes, plain: object) -> Outcome:
        return open_answer(plain.answer_key, plain.id, sealed)  # type: ignore[attr-defined]

    # -- commits ---------------------------------------------------------------------------

    def commit(
        self,
        key: str,
        value: bytes | None,
        justification: bytes,
        voters: list[str] | None = None,
        holding: dict[str, tuple[Ballot, bytes | None]] | None = None,
    ) -> Commit:
        """Have ``voters`` (a majority by default) accept ``value`` for ``key`` under a new
        ballot: each applet checks it and signs its acceptance. Raises the first refusal."""
        self.ballots += 1
        ballot = Ballot(self.ballots, "m1")
        votes = []
        for member in voters or self.names[: self.membership.accept_quorum]:
            held_ballot, held = (holding or {}).get(member, (Ballot(0, ""), None))
            vetting = Vetting(
                index=0,
                value=value,
                justification=justification,
                accepted=held_ballot.n,
                accepted_by=held_ballot.by,
                held=held,
                vetted=True,
            )
            body = Accepted(
                fleet=FLEET,
                proposer="m1",
                keys=(key,),
                ballots=(ballot.n,),
                digests=(value_digest(value),),
                epoch=self.membership.epoch,
            )
            env = Outbox(member).envelope(body)
            verdict = self.vaults[member].vote(env, (vetting,))
            if not hasattr(verdict, "kid"):
                raise Refused(verdict[0].kind, verdict[0].reason)  # type: ignore[index]
            votes.append(env.with_signature(verdict).encode())  # type: ignore[arg-type]
        return Commit(key, value, ballot, tuple(votes), justification)

    def change(
        self,
        member: str,
        change: str,
        key: str,
        pred: Commit | None,
        request: VaultRequest,
        evaluator: str = "",
        voters: list[str] | None = None,
    ) -> Commit:
        """``member`` proposes ``change`` on ``pred`` (None: the empty record) from
        ``request``; a quorum checks and commits it."""
        value, witness = self.vaults[member].propose(
            change, key, None if pred is None else pred.value, request, evaluator
        )
        return self.commit(key, value, justify(pred, witness), voters)


class Refused(Exception):
    """An applet refused to accept a value (``kind``, ``reason``)."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(f"{kind}: {reason}")
        self.kind = kind


def justify(pred: Commit | None, witness: bytes | None) -> bytes:
    """The justification of a change of ``pred`` made from ``witness``."""
    if pred is None:
        return Justification(pred=None, ballot=0, by="", votes=(), witness=witness).encode()
    return Justification(
        pred=pred.value, ballot=pred.ballot.n, by=pred.ballot.by, votes=pred.votes, witness=witness
    ).encode()


def _member_key(member: str, box: SoftHsm) -> MemberKey:
    key = box.public_key(IDENTITY)
    return MemberKey(member=member, alg=key.alg, public_key=key.public_key)


@dataclass
class Login:
    """A client's OPAQUE login in progress."""

    state: bytes
    request: VaultRequest
    plain: RecoverStart


def answer_key() -> bytes:
    return os.urandom(ANSWER_KEY_BYTES)


def register_requests(
    bed: Applets,
    user: str,
    pin: bytes,
    secret: bytes,
    op: str = "register",
    proof: PinProof | None = None,
) -> tuple[VaultRequest, VaultRequest, RegisterStart]:
    """The two requests of a registration (start and upload), run against member m1's applet
    for the registration response."""
    reg_id = bed.ids.new()
    authorization = bed.authorize(user, op, reg_id)
    start = opaque.client_registration_start(pin)
    start_plain = RegisterStart(
        id=reg_id,
        user=user,
        answer_key=answer_key(),
        authorization=authorization,
        registration_request=start.get_message(),
    )
    start_request = bed.request("register-start", start_plain)
    response = bed.opened(bed.vaults["m1"].register_start(start_request), start_plain).response
    finish = opaque.client_registration_finish(pin, start.get_state(), response)
    plain = Register(
        id=bed.ids.new(),
        user=user,
        answer_key=answer_key(),
        authorization=authorization,
        registration=reg_id,
        upload=finish.get_message(),
        secret=secret,
        proof=proof,
    )
    return start_request, bed.request("register", plain), start_plain


def login_request(
    bed: Applets, user: str, pin: bytes, *, authorization: Authorization | None = None
) -> Login:
    start_id = bed.ids.new()
    started = opaque.client_login_start(pin)
    plain = RecoverStart(
        id=start_id,
        user=user,
        answer_key=answer_key(),
        authorization=authorization or bed.authorize(user, "recover", start_id),
        credential_request=started.get_message(),
    )
    return Login(started.get_state(), bed.request("recover-start", plain), plain)


def finish_request(
    bed: Applets, user: str, login: bytes, finalization: bytes
) -> tuple[VaultRequest, RecoverFinish]:
    plain = RecoverFinish(
        id=bed.ids.new(),
        user=user,
        answer_key=answer_key(),
        login=login,
        finalization=finalization,
    )
    return bed.request("recover-finish", plain), plain


def opaque_finish(pin: bytes, login: Login, response: bytes) -> object:
    """The client's end of a login (raises ``ValueError`` for a wrong PIN)."""
    return opaque.client_login_finish(pin, login.state, response)
