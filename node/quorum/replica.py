"""One member's part in replication: its acceptor, its proposer, its configuration.

A replica keeps its acceptor state and its current configuration in one SQLite database under
its state directory. On start it serves snapshots at once but votes only after it has caught up
from a majority; it does the same whenever a configuration newly makes it a voter (joining).
Configurations change only by an operator-signed :class:`messages.quorum.Config` with a higher
epoch, answered with a signed :class:`messages.quorum.ConfigAck`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import structlog
from nats.aio.client import Client as NATS
from nats.aio.subscription import Subscription

from messages import subjects
from messages.canonical import canonical, loads_strict
from messages.errors import HsmfleetError
from messages.membership import Membership
from messages.quorum import (
    CONFIG,
    MEMBER_ROLE,
    OPERATOR_ROLE,
    SNAPSHOT,
    BadConfig,
    CatchUpFailed,
    Config,
    ConfigAck,
    QuorumError,
    Snapshot,
)
from messages.signing import Signer, TrustedKey, TrustStore
from node.quorum.acceptor import Acceptor, Vote
from node.quorum.catchup import catch_up
from node.quorum.proposer import Judge, Proposer
from node.quorum.store import SlotStore
from transport.backoff import Backoff
from transport.bus import serve
from transport.gate import Gate, Received
from transport.outbox import Outbox

log = structlog.get_logger("hsmfleet.quorum.replica")


class Vetter(Protocol):
    """The member's HSM applet for vetted records: signs acceptances it checked, and judges
    the values other members report (see :mod:`node.quorum.acceptor` and
    :mod:`node.quorum.proposer`)."""

    vote: Vote
    judge: Judge


STORE_FILE = "quorum.sqlite3"
_CONFIG = "config"
_EARLIER = "earlier-configs"
_READY = "ready"
# Configurations kept after they are replaced, newest last: a vetted value's justification may
# carry a proof made under one (see node/vault/applet.py).
MAX_EARLIER = 64


class StateLost(QuorumError):
    """The member's durable state is missing: it must leave and rejoin the fleet, not vote."""

    kind = "state_lost"


class Replica:
    """Acceptor, proposer and configuration of one member, on one NATS connection.

    ``new`` says the member starts with no state on purpose (a new fleet or a join); without it
    a missing store is :class:`StateLost`, since an acceptor that forgot its promises must not
    vote again. ``operator`` is the key allowed to sign configuration changes. ``vetter`` is
    the member's HSM applet; without one the member never accepts a vetted record's value.
    """

    def __init__(
        self,
        member: str,
        signer: Signer,
        state_dir: Path,
        membership: Membership,
        *,
        operator: TrustedKey | None = None,
        new: bool = False,
        catch_up_timeout: float = 0.5,
        vetter: Vetter | None = None,
        on_reconfigure: Callable[[Config], None] | None = None,
        **proposer_options: Any,
    ) -> None:
        self.member = member
        self.state_dir = Path(state_dir)
        self.outbox = Outbox(member, signer)
        self.operator = operator
        self.new = new
        self.catch_up_timeout = catch_up_timeout
        self._membership = membership
        self.store: SlotStore | None = None
        self.acceptor: Acceptor | None = None
        self.vetter = vetter
        self.on_reconfigure = on_reconfigure
        """Told the configuration in force when the member starts and each one it applies (its
        HSM applet must know the members; :meth:`earlier` has the ones before)."""
        self._earlier: tuple[Config, ...] = ()
        judge = None if vetter is None else vetter.judge
        self.proposer = Proposer(member, self.outbox, self.current, judge=judge, **proposer_options)
        self._nc: NATS | None = None
        self._subs: list[Subscription] = []
        self._gates: list[Gate] = []
        self._catching_up: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    def current(self) -> Membership:
        """The configuration in force at this member."""
        return self._membership

    @property
    def voting(self) -> bool:
        return self.acceptor is not None and self.acceptor.voting

    async def wait_voting(self, timeout: float) -> None:
        """Return once the member votes; raises ``TimeoutError`` otherwise."""
        await asyncio.wait_for(self._ready.wait(), timeout)

    async def start(self, nc: NATS) -> None:
        """Open the store, serve, and begin catching up."""
        self._nc = nc
        path = self.state_dir / STORE_FILE
        if not path.exists() and not self.new:
            raise StateLost("no quorum state on disk; rejoin the fleet", path=str(path))
        self.store = SlotStore(path)
        stored = self.store.get_meta(_CONFIG)
        if stored is not None:
            kept = Membership.from_config(Config.from_json(loads_strict(stored)))
            if kept.epoch >= self._membership.epoch:
                self._membership = kept
        earlier = self.store.get_meta(_EARLIER)
        if earlier is not None:
            self._earlier = tuple(Config.from_json(c) for c in loads_strict(earlier))
        self._persist_config()
        if self.on_reconfigure is not None:
            self.on_reconfigure(self._membership.to_config())
        complete = self.store.get_meta(_READY)
        vote = None if self.vetter is None else self.vetter.vote
        self.acceptor = Acceptor(self.member, self.store, self.outbox, self.current, vote=vote)
        await self.acceptor.start(nc)
        self.proposer.local = self.acceptor.submit
        await self.proposer.start(nc)
        fleet = self._membership.fleet
        member_gate = Gate(self._membership.trust())
        operator_gate = Gate(self._operator_trust())
        self._gates = [member_gate]
        self._subs.append(
            await serve(
                nc,
                subjects.quorum(fleet, SNAPSHOT),
                member_gate,
                MEMBER_ROLE,
                self._on_snapshot,
                self.outbox,
            )
        )
        self._subs.append(
            await serve(
                nc,
                subjects.quorum(fleet, CONFIG),
                operator_gate,
                OPERATOR_ROLE,
                self._on_config,
                self.outbox,
            )
        )
        self._begin_catch_up(counts_self=complete is not None)

    async def stop(self) -> None:
        if self._catching_up is not None:
            self._catching_up.cancel()
            await asyncio.gather(self._catching_up, return_exceptions=True)
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._subs.clear()
        await self.proposer.stop()
        if self.acceptor is not None:
            await self.acceptor.stop()
        if self.store is not None:
            self.store.close()

    def _operator_trust(self) -> TrustStore:
        store = TrustStore()
        if self.operator is not None:
            store.add(self.operator)
        return store

    def earlier(self) -> tuple[Config, ...]:
        """The configurations this member applied before the current one, oldest first (at
        most :data:`MAX_EARLIER`)."""
        return self._earlier

    def _persist_config(self) -> None:
        self.store.set_meta(_EARLIER, canonical([c.to_json() for c in self._earlier]))
        self.store.set_meta(_CONFIG, canonical(self._membership.to_config().to_json()))

    def _begin_catch_up(self, counts_self: bool) -> None:
        if self._catching_up is not None and not self._catching_up.done():
            return
        self._catching_up = asyncio.create_task(self._catch_up(counts_self))

    async def _catch_up(self, counts_self: bool) -> None:
        """Copy from a majority until it works, then vote. Not a voter: wait for a config."""
        backoff = Backoff(0.1, 2.0)
        while self.member in self._membership.voters:
            try:
                await catch_up(
                    self._nc,
                    self.outbox,
                    self._membership,
                    self.acceptor,
                    counts_self=counts_self,
                    timeout=self.catch_up_timeout,
                )
            except (CatchUpFailed, HsmfleetError) as exc:
                log.warning("catch-up failed; retrying", member=self.member, error=str(exc))
                await backoff.wait()
                continue
            self.store.set_meta(_READY, b"1")
            self.acceptor.voting = True
            self._ready.set()
            log.info("member votes", member=self.member, epoch=self._membership.epoch)
            return

    async def _on_snapshot(self, received: Received) -> Snapshot | None:
        if getattr(received.body, "member", None) != self.member:
            return None  # asked of another member
        return await self.acceptor.snapshot(received)

    async def _on_config(self, received: Received) -> ConfigAck:
        """Apply an operator-signed configuration with a higher epoch; acknowledge it."""
        config = received.body
        if not isinstance(config, Config):
            raise BadConfig("not a configuration", type=received.envelope.type)
        return self.reconfigure(config)

    def reconfigure(self, config: Config) -> ConfigAck:
        """Apply ``config`` if its epoch is higher (the same one again changes nothing); a
        member it newly makes a voter catches up before voting. Raises :class:`BadConfig` for
        another fleet's, an older, or a different configuration of the same epoch."""
        new = Membership.from_config(config)
        current = self._membership
        if new.fleet != current.fleet:
            raise BadConfig("configuration of another fleet", fleet=new.fleet)
        if new.epoch < current.epoch:
            raise BadConfig("configuration is older than the current one", epoch=new.epoch)
        if new.epoch == current.epoch and new.to_config() != current.to_config():
            raise BadConfig("a different configuration has this epoch", epoch=new.epoch)
        if new.epoch > current.epoch:
            kept = (*self._earlier, current.to_config())
            self._earlier = kept[max(0, len(kept) - MAX_EARLIER) :]
            self._membership = new
            self._persist_config()
            for gate in self._gates:
                gate.trust = new.trust()
            if self.on_reconfigure is not None:
                self.on_reconfigure(new.to_config())
            log.info("configuration applied", member=self.member, epoch=new.epoch)
            if self.member not in new.voters:
                self.acceptor.voting = False
            elif not self.acceptor.voting:
                self._begin_catch_up(counts_self=False)
        return ConfigAck(
            fleet=new.fleet, epoch=new.epoch, member=self.member, ready=self.acceptor.voting
        )
