"""What each role may publish and subscribe to, and what the role accounts share.

Every role has its own account, and every party its own user with allow lists: whatever a
list does not name is denied. Accounts see each other only through what they export:

- NODES exports node commands (a service, to ORCHESTRATORS), node status (a stream, to
  ORCHESTRATORS), vault operations (a service, to CLIENTS) and quorum configuration (a service
  answered by every member, to OPERATORS);
- COSIGNERS exports signing requests (a service, to ORCHESTRATORS).

Only ORCHESTRATORS has JetStream, so the event stream ``FLEET_EVENTS`` and the lease bucket exist
there alone, and nothing another account publishes can land in them. Within ORCHESTRATORS,
orchestrators may create and append to both; auditors may only read the event stream.

Replies. Each party receives answers on its own inbox prefix ``_INBOX.<role>.<id>`` (see
:attr:`transport.parties.Party.inbox`); answers to another account's request travel on the
``_R_.>`` subjects that the server maps them through. Nodes do not get ``allow_responses``:
nats-server lets a responder with it publish to any reply subject it was handed, even one its
deny list names, so a client or a peer could choose the reply subject and make a node publish
there. Nodes may reply only into peers' inboxes and ``_R_.>``. Cosigners are asked only by
orchestrators, through the service import whose reply subjects the server makes up, so
``allow_responses`` is exact for them.
"""

from __future__ import annotations

from dataclasses import dataclass

from messages.quorum import ACCEPT, COMMITTED, CONFIG, PHASES, PREPARE, SNAPSHOT
from messages.subjects import EVENT_STREAM, EVENT_SUBJECTS
from messages.vault import OPERATIONS
from orchestrator.shell.lease import BUCKET as LEASE_BUCKET
from transport.parties import (
    AUDITOR,
    CLIENT,
    COSIGNER,
    NODE,
    OPERATOR,
    ORCHESTRATOR,
    Party,
)

ORCHESTRATORS = "ORCHESTRATORS"
NODES = "NODES"
COSIGNERS = "COSIGNERS"
CLIENTS = "CLIENTS"
OPERATORS = "OPERATORS"
ACCOUNTS = (ORCHESTRATORS, NODES, COSIGNERS, CLIENTS, OPERATORS)
ACCOUNT_OF = {
    ORCHESTRATOR: ORCHESTRATORS,
    AUDITOR: ORCHESTRATORS,
    NODE: NODES,
    COSIGNER: COSIGNERS,
    CLIENT: CLIENTS,
    OPERATOR: OPERATORS,
}
JETSTREAM_ACCOUNT = ORCHESTRATORS

NODE_COMMANDS = "fleet.node.*.cmd.*"
NODE_STATUS = "fleet.node.*.status"
VAULT = "fleet.vault.*.*"
QUORUM_CONFIG = f"fleet.q.*.{CONFIG}"
COSIGN = "cosign.*.sign"
SERVICE_REPLIES = "_R_.>"
LEASE_STREAM = f"KV_{LEASE_BUCKET}"


@dataclass(frozen=True)
class Grant:
    """One user's allow lists, and whether it may answer whatever reply subject it is handed."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    responses: bool = False


@dataclass(frozen=True)
class Share:
    """Subjects the ``owner`` account exports and the ``to`` account imports, unchanged.

    A ``service`` carries requests into ``owner`` and their answers back (``responses``:
    ``Singleton`` for one answer, ``Stream`` when every subscriber answers); a ``stream``
    carries messages published in ``owner`` to subscribers in ``to``.
    """

    kind: str
    subject: str
    owner: str
    to: str
    responses: str = "Singleton"


SHARES = (
    Share("service", NODE_COMMANDS, NODES, ORCHESTRATORS),
    Share("stream", NODE_STATUS, NODES, ORCHESTRATORS),
    Share("service", COSIGN, COSIGNERS, ORCHESTRATORS),
    Share("service", VAULT, NODES, CLIENTS),
    Share("service", QUORUM_CONFIG, NODES, OPERATORS, responses="Stream"),
)


def stream_reads(stream: str) -> tuple[str, ...]:
    """JetStream API subjects to read ``stream``: account and stream info, single messages,
    ephemeral consumers (both forms of the create subject) and their flow control replies."""
    return (
        "$JS.API.INFO",
        f"$JS.API.STREAM.INFO.{stream}",
        f"$JS.API.STREAM.MSG.GET.{stream}",
        f"$JS.API.CONSUMER.CREATE.{stream}",
        f"$JS.API.CONSUMER.CREATE.{stream}.>",
        f"$JS.FC.{stream}.>",
    )


def stream_writes(stream: str, subjects: str) -> tuple[str, ...]:
    """Reading ``stream``, creating it, and appending on its ``subjects``."""
    return (*stream_reads(stream), f"$JS.API.STREAM.CREATE.{stream}", subjects)


def _orchestrator(party: Party) -> Grant:
    return Grant(
        publish=(
            *stream_writes(EVENT_STREAM, EVENT_SUBJECTS),
            *stream_writes(LEASE_STREAM, f"$KV.{LEASE_BUCKET}.>"),
            NODE_COMMANDS,
            COSIGN,
        ),
        subscribe=(NODE_STATUS, f"{party.inbox}.>"),
    )


def _auditor(party: Party) -> Grant:
    return Grant(publish=stream_reads(EVENT_STREAM), subscribe=(f"{party.inbox}.>",))


def _node(party: Party) -> Grant:
    own = f"fleet.node.{party.id}"
    fleets = party.fleets
    asks = (PREPARE, ACCEPT, COMMITTED, SNAPSHOT)
    proposes = tuple(f"fleet.q.{f}.{phase}" for f in fleets for phase in asks)
    votes = tuple(f"fleet.q.{f}.{phase}" for f in fleets for phase in PHASES)
    vault = tuple(f"fleet.vault.{f}.{op}" for f in fleets for op in OPERATIONS)
    return Grant(
        publish=(f"{own}.status", *proposes, f"_INBOX.{NODE}.*.>", SERVICE_REPLIES),
        subscribe=(f"{own}.cmd.*", *votes, *vault, f"{party.inbox}.>"),
    )


def _cosigner(party: Party) -> Grant:
    return Grant(
        publish=(), subscribe=(f"cosign.{party.id}.sign", f"{party.inbox}.>"), responses=True
    )


def _client(party: Party) -> Grant:
    vault = tuple(f"fleet.vault.*.{op}" for op in OPERATIONS)
    return Grant(publish=vault, subscribe=(f"{party.inbox}.>",))


def _operator(party: Party) -> Grant:
    return Grant(publish=(QUORUM_CONFIG,), subscribe=(f"{party.inbox}.>",))


_GRANTS = {
    ORCHESTRATOR: _orchestrator,
    AUDITOR: _auditor,
    NODE: _node,
    COSIGNER: _cosigner,
    CLIENT: _client,
    OPERATOR: _operator,
}


def grant(party: Party) -> Grant:
    """The permissions of ``party``'s user."""
    return _GRANTS[party.role](party)


def imports(account: str) -> tuple[Share, ...]:
    """What ``account`` imports."""
    return tuple(s for s in SHARES if s.to == account)


def exports(account: str) -> tuple[Share, ...]:
    """What ``account`` exports."""
    return tuple(s for s in SHARES if s.owner == account)
