"""The vault applet's operations on the HSM device's protocol (:mod:`node.hsm.device`).

Inside the device process, :func:`applet_handlers` serves a :class:`~node.vault.applet.
VaultApplet` beside the core HSM operations; on the node host, :class:`RemoteApplet` reaches it
through any device transport (the Unix socket, or the handler table in-process) and gives each
fleet's vault the same face :class:`~node.vault.applet.FleetVault` has: the host's vault
service, acceptor and proposer call it without knowing where it runs. Every operation names its
fleet; errors come back as their own classes (registered with the device protocol).
"""

# No ``from __future__ import annotations``: body field types stay evaluated (messages.schema).
from dataclasses import dataclass
from typing import Any

from messages import vault
from messages.envelope import Envelope, Signature
from messages.errors import HsmfleetError
from messages.quorum import (
    BadProof,
    Ballot,
    PredecessorSuperseded,
    ProofOfAnotherConfiguration,
    Vetting,
    VettingRefusal,
)
from messages.schema import Body
from messages.vault import ERRORS, Outcome, VaultRequest
from messages.vault_authorization import AuthorizationExpired, AuthorizationRefused
from messages.vault_policy import VaultError
from node.hsm.device.protocol import Empty, Handler, operation, register_error
from node.vault.applet import (
    FleetSetup,
    RequestInfo,
    TransitionRefused,
    VaultApplet,
    VaultNotConfigured,
)
from node.vault.record import DamagedRecord

for _error in (
    VaultError,
    *ERRORS.values(),
    TransitionRefused,
    VaultNotConfigured,
    DamagedRecord,
    AuthorizationRefused,
    AuthorizationExpired,
    BadProof,
    ProofOfAnotherConfiguration,
    PredecessorSuperseded,
):
    register_error(_error)


@dataclass(frozen=True)
class Fleet(Body):
    fleet: str


@dataclass(frozen=True)
class ToPeek(Body):
    fleet: str
    op: str
    request: VaultRequest


@dataclass(frozen=True)
class ToAnswer(Body):
    fleet: str
    op: str
    request: VaultRequest
    outcome: Outcome


@dataclass(frozen=True)
class ToPropose(Body):
    fleet: str
    change: str
    key: str
    pred: bytes | None
    request: VaultRequest
    evaluator: str


@dataclass(frozen=True)
class Proposal(Body):
    value: bytes
    witness: bytes


@dataclass(frozen=True)
class ToJudge(Body):
    fleet: str
    key: str
    value: bytes | None
    justification: bytes | None


@dataclass(frozen=True)
class Verdict(Body):
    ok: bool


@dataclass(frozen=True)
class ToVote(Body):
    fleet: str
    envelope: dict[str, Any]
    vettings: tuple[Vetting, ...]


@dataclass(frozen=True)
class VoteSignature(Body):
    kid: str
    alg: str
    value: bytes


@dataclass(frozen=True)
class Voted(Body):
    """The signature over the acceptance, or the records refused instead."""

    signature: VoteSignature | None
    refusals: tuple[VettingRefusal, ...]


@dataclass(frozen=True)
class ToUse(Body):
    """A committed record value, its proof, and the client request it is used for."""

    fleet: str
    request: VaultRequest
    value: bytes
    ballot: int
    by: str
    votes: tuple[bytes, ...]


@dataclass(frozen=True)
class Sealed(Body):
    """An answer sealed for a client."""

    sealed: bytes


CONFIGURE = operation("vault.configure", FleetSetup, Empty)
FORGET = operation("vault.forget", Fleet, Empty)
PEEK = operation("vault.peek", ToPeek, RequestInfo)
REGISTER_START = operation("vault.register_start", ToPeek, Sealed)
PROPOSE = operation("vault.propose", ToPropose, Proposal)
JUDGE = operation("vault.judge", ToJudge, Verdict)
VOTE = operation("vault.vote", ToVote, Voted)
EVALUATE = operation("vault.evaluate", ToUse, Sealed)
RELEASE = operation("vault.release", ToUse, Sealed)
ANSWER = operation("vault.answer", ToAnswer, Sealed)


def applet_handlers(applet: VaultApplet) -> dict[str, Handler]:
    """The handlers of the vault operations over ``applet`` (inside the device)."""

    def configure(setup: FleetSetup) -> Empty:
        applet.configure(setup)
        return Empty()

    def forget(args: Fleet) -> Empty:
        applet.forget(args.fleet)
        return Empty()

    def propose(args: ToPropose) -> Proposal:
        value, witness = applet.fleet(args.fleet).propose(
            args.change, args.key, args.pred, args.request, args.evaluator
        )
        return Proposal(value=value, witness=witness)

    def vote(args: ToVote) -> Voted:
        verdict = applet.fleet(args.fleet).vote(Envelope.from_json(args.envelope), args.vettings)
        if isinstance(verdict, Signature):
            signature = VoteSignature(kid=verdict.kid, alg=verdict.alg, value=verdict.value)
            return Voted(signature=signature, refusals=())
        return Voted(signature=None, refusals=verdict)

    def use(name: str) -> Handler:
        def handler(args: ToUse) -> Sealed:
            method = getattr(applet.fleet(args.fleet), name)
            ballot = Ballot(args.ballot, args.by)
            return Sealed(method(args.request, args.value, ballot, args.votes))

        return handler

    return {
        CONFIGURE.name: configure,
        FORGET.name: forget,
        PEEK.name: lambda args: applet.fleet(args.fleet).peek(args.op, args.request),
        REGISTER_START.name: lambda args: Sealed(
            applet.fleet(args.fleet).register_start(args.request)
        ),
        PROPOSE.name: propose,
        JUDGE.name: lambda args: Verdict(
            applet.fleet(args.fleet).judge(args.key, args.value, args.justification)
        ),
        VOTE.name: vote,
        EVALUATE.name: use("evaluate"),
        RELEASE.name: use("release"),
        ANSWER.name: lambda args: Sealed(
            applet.fleet(args.fleet).answer(args.op, args.request, args.outcome)
        ),
    }


class RemoteApplet:
    """A device's vault applet, reached through a device ``transport``."""

    def __init__(self, transport: Any) -> None:
        self.transport = transport

    def configure(self, setup: FleetSetup) -> "RemoteFleetVault":
        """Describe ``setup.fleet`` to the applet; its vault as the host reaches it."""
        self.transport.call(CONFIGURE.name, setup)
        return RemoteFleetVault(self.transport, setup.fleet)

    def forget(self, fleet: str) -> None:
        self.transport.call(FORGET.name, Fleet(fleet=fleet))


class RemoteFleetVault:
    """One fleet's vault in a device's applet: the face of :class:`~node.vault.applet.
    FleetVault` the host uses (its vault service, and its replica's vetter)."""

    def __init__(self, transport: Any, fleet: str) -> None:
        self.transport = transport
        self.fleet = fleet

    def peek(self, op: str, request: VaultRequest) -> RequestInfo:
        return self.transport.call(PEEK.name, ToPeek(self.fleet, op, request))

    def register_start(self, request: VaultRequest) -> bytes:
        return self.transport.call(
            REGISTER_START.name, ToPeek(self.fleet, vault.REGISTER_START, request)
        ).sealed

    def propose(
        self, change: str, key: str, pred: bytes | None, request: VaultRequest, evaluator: str = ""
    ) -> tuple[bytes, bytes]:
        args = ToPropose(self.fleet, change, key, pred, request, evaluator)
        proposal = self.transport.call(PROPOSE.name, args)
        return proposal.value, proposal.witness

    def judge(self, key: str, value: bytes | None, justification: bytes | None) -> bool:
        try:
            return self.transport.call(
                JUDGE.name, ToJudge(self.fleet, key, value, justification)
            ).ok
        except HsmfleetError:
            return True  # the device cannot tell: the value is tried, and the members decide

    def vote(
        self, envelope: Envelope, vettings: tuple[Vetting, ...]
    ) -> Signature | tuple[VettingRefusal, ...]:
        voted = self.transport.call(
            VOTE.name, ToVote(self.fleet, envelope.unsigned_json(), vettings)
        )
        if voted.signature is None:
            return voted.refusals
        sig = voted.signature
        return Signature(kid=sig.kid, alg=sig.alg, value=sig.value)

    def evaluate(
        self, request: VaultRequest, value: bytes, ballot: Ballot, votes: tuple[bytes, ...]
    ) -> bytes:
        args = ToUse(self.fleet, request, value, ballot.n, ballot.by, votes)
        return self.transport.call(EVALUATE.name, args).sealed

    def release(
        self, request: VaultRequest, value: bytes, ballot: Ballot, votes: tuple[bytes, ...]
    ) -> bytes:
        args = ToUse(self.fleet, request, value, ballot.n, ballot.by, votes)
        return self.transport.call(RELEASE.name, args).sealed

    def answer(self, op: str, request: VaultRequest, outcome: Outcome) -> bytes:
        return self.transport.call(ANSWER.name, ToAnswer(self.fleet, op, request, outcome)).sealed
