"""The vault's promise tried as an attacker would, on real processes: nobody without the PIN
(not a member whose key was stolen, not someone who can get the user's authorizations, not an
anonymous client) gets the secret or more guesses than the limit.

Honest members run as their own processes on a real nats-server, each answering logins with its
HSM applet; the attacker runs in the test with what its attack names. What counts is what the
honest HSMs did: the guesses they evaluated (their journals, read once they stopped), the
records they committed (their quorum stores) and the refusals they logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import nats
import pytest

from messages import subjects
from messages.envelope import Envelope
from messages.quorum import (
    ACCEPT,
    COMMITTED,
    Accept,
    Accepted,
    Committed,
    Justification,
    ValueRefused,
    value_digest,
)
from messages.schema import REGISTRY
from messages.signing import Ed25519Signer
from messages.vault import (
    OPERATIONS,
    RECOVER_FINISH,
    REGISTER,
    BudgetExhausted,
    MalformedOpaque,
    RegistrationExists,
    ReplacementTooSoon,
    WrongGuess,
)
from messages.vault_authorization import REPLACE, AccountAuthority
from messages.vault_policy import VaultError
from node.quorum.localfleet import LocalFleet
from node.quorum.member import VOTE_KEY, open_hsm
from node.quorum.proposer import Proposer
from node.quorum.store import SlotStore
from node.quorum.votes import Tally
from node.vault import record as records
from node.vault.applet import REGISTERED, SUCCEEDED, Witness
from node.vault.journal import EvaluationJournal
from transport.gate import Gate
from transport.outbox import Outbox
from transport.vault_client import VaultClient

pytestmark = pytest.mark.faults

LIMIT = 5
PIN = b"2580"
SECRET = b"the victim's backup key"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class Fleet:
    """A local fleet with its honest members running as processes."""

    local: LocalFleet
    processes: dict[str, object] = field(default_factory=dict)

    def client(self, nc, *, ops=("register", "recover", "replace"), signer=None) -> VaultClient:
        """A client whose requests are authorized for ``ops`` (by ``signer``, the fleet's
        authority unless given)."""
        authority = AccountAuthority(signer or self.local.authority)

        def authorize(user: str, op: str, request: str):
            if op not in ops:
                raise PermissionError(f"this client gets no {op} authorization")
            return authority.authorize(self.local.fleet, user, op, request, now_ms())

        return VaultClient(nc, self.local.vault_keys, authorize, timeout=10)

    def stop(self) -> None:
        for process in self.processes.values():
            process.terminate()
        for process in self.processes.values():
            process.wait(15)

    def evaluated(self, user: str) -> int:
        """How many guesses of ``user`` the members' HSMs evaluated (after :meth:`stop`)."""
        total = 0
        for member in self.processes:
            journal = EvaluationJournal(self.local.state_dir(member) / "vault-journal.sqlite3")
            total += journal.total(self.local.fleet, user)
            journal.close()
        return total

    def committed(self, user: str) -> records.UserRecord | None:
        """The user's record as the members' stores hold it at the highest ballot."""
        best = None
        for member in self.processes:
            store = SlotStore(self.local.state_dir(member) / "quorum.sqlite3")
            slot = store.load([records.record_key(user)])[records.record_key(user)]
            store.close()
            if best is None or slot.accepted > best.accepted:
                best = slot
        return None if best is None else records.decode(best.value)

    def logged(self, member: str, event: str, **fields: str) -> int:
        """How many times ``member`` logged ``event`` with ``fields``."""
        path = self.local.state_dir(member) / "member.log"
        count = 0
        for line in path.read_text().splitlines() if path.exists() else ():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("event") == event and all(entry.get(k) == v for k, v in fields.items()):
                count += 1
        return count

    async def restart(self, member: str) -> None:
        """Stop ``member``'s process and start it again on its state; return once it votes."""
        voted = self.logged(member, "member votes")
        process = self.processes.pop(member)
        process.terminate()
        process.wait(15)
        self.processes[member] = self.local.spawn(member)
        deadline = time.monotonic() + 30
        while self.logged(member, "member votes") <= voted:
            assert time.monotonic() < deadline, f"{member} did not vote again"
            await asyncio.sleep(0.1)

    def refusals_logged(self, proposer: str) -> int:
        """How many values proposed by ``proposer`` the members' HSMs refused (their logs)."""
        return sum(
            self.logged(m, "a proposed value refused", proposer=proposer) for m in self.processes
        )


_fleets = itertools.count(1)


@asynccontextmanager
async def fleet_of(root: Path, url: str, honest: list[str], **options):
    """A fleet of three, started together; then only its ``honest`` members keep running."""
    local = LocalFleet.create(root, f"attacked{next(_fleets)}", 3, [url], **options)
    fleet = Fleet(local)
    try:
        for member in local.members:
            fleet.processes[member] = local.spawn(member, new=True)
        nc = await nats.connect(url)
        try:
            await _await_voting(fleet)
            for member in set(local.members) - set(honest):
                process = fleet.processes.pop(member)
                process.terminate()
                process.wait(15)
            yield fleet, nc
        finally:
            await nc.close()
    finally:
        fleet.stop()


async def _await_voting(fleet: Fleet) -> None:
    """Wait until every member says it votes (it caught up)."""
    deadline = time.monotonic() + 30
    while not all(fleet.logged(m, "member votes") for m in fleet.processes):
        assert time.monotonic() < deadline, "the members did not start voting"
        await asyncio.sleep(0.1)


class Rogue:
    """A member whose vote key and NATS access were stolen: it proposes what it likes under
    the member's name and signs whatever acceptance it likes."""

    def __init__(self, fleet: Fleet, nc, member: str) -> None:
        state = fleet.local.state_dir(member)
        self.hsm = open_hsm(state, state / "hsm.key")
        self.signer = self.hsm.signer(VOTE_KEY)
        self.outbox = Outbox(member, self.signer)
        self.proposer = Proposer(member, self.outbox, lambda: fleet.local.membership)
        self.nc = nc
        self.member = member

    async def start(self) -> None:
        await self.proposer.start(self.nc)

    async def stop(self) -> None:
        await self.proposer.stop()
        self.hsm.close()


async def test_a_member_with_a_stolen_key_cannot_reset_a_counter(tmp_path, nats_server):
    """m3's vote key and NATS seed are stolen; m1 and m2 are honest. The attacker, who can
    also get the user's authorizations and sees the bus, spends guesses, then has the rogue
    member propose the counter cleared in every way it can: as an unchanged value, as the
    change the victim's captured registration makes, as the success the victim's captured
    earlier login makes, by rolling the record back to its first value, with a commit proof only
    it signed, as a commit notice only it signed. Each is refused by the honest members for its
    own reason (their HSMs, or their check of the notice's proof), and no more than the limit of
    guesses is ever evaluated."""
    async with fleet_of(tmp_path / "f", nats_server.url, ["m1", "m2"], limit=LIMIT) as (
        fleet,
        nc,
    ):
        captured: list[bytes] = []

        async def keep(msg) -> None:
            captured.append(msg.data)

        spy = await nc.subscribe(subjects.vault(fleet.local.fleet, REGISTER), cb=keep)
        finishes = await nc.subscribe(subjects.vault(fleet.local.fleet, RECOVER_FINISH), cb=keep)
        victim, attacker = fleet.client(nc), fleet.client(nc, ops=("recover",))
        await victim.register("victim", PIN, SECRET)
        assert (await victim.recover("victim", PIN)).secret == SECRET
        await spy.unsubscribe()
        await finishes.unsubscribe()
        for guess in (b"0000", b"1111", b"2222"):
            with pytest.raises(WrongGuess):
                await attacker.recover("victim", guess)

        rogue = Rogue(fleet, nc, "m3")
        await rogue.start()
        key = records.record_key("victim")
        try:
            now = await rogue.proposer.read(key)  # the honest members prove the current value
            record = records.decode(now.value)
            assert record is not None and record.failures == 3
            cleared = records.encode(records.replace_record(record, cleared=record.attempts))
            register_witness = _witness_of(captured[0], REGISTERED)
            finish_witness = _witness_of(captured[1], SUCCEEDED)
            for witness, kind in (
                (None, "transition_refused"),  # an unchanged record must be its predecessor
                (register_witness, "stale_registration"),
                (finish_witness, "replayed_request"),  # that login was counted already
            ):
                with pytest.raises(ValueRefused) as refused:
                    await rogue.proposer.transit(key, lambda _v, _p, w=witness: (cleared, w))
                assert refused.value.detail["kind"] == kind
                assert records.decode((await rogue.proposer.read(key)).value).failures == 3, kind
            first_value = _first_value(now.value)
            rollback = Justification(None, 0, "", (), register_witness)
            held_later = {"predecessor_superseded"}  # each honest member holds a later value
            assert await _accepted_by_honest(rogue, key, first_value, rollback) == held_later
            forged = _proof_signed_by(rogue, key, first_value)
            assert await _accepted_by_honest(rogue, key, cleared, forged) == {"bad_proof"}
            await _announce_signed_by(rogue, key, cleared)
            for member in ("m1", "m2"):
                await _until(lambda m=member: fleet.logged(m, "a commit notice refused"), member)
            assert records.decode((await rogue.proposer.read(key)).value).failures == 3
        finally:
            await rogue.stop()

        for guess in (b"3333", b"4444"):
            with pytest.raises(WrongGuess):
                await attacker.recover("victim", guess)
        with pytest.raises(BudgetExhausted):
            await attacker.recover("victim", PIN)
    assert fleet.evaluated("victim") == LIMIT + 1, "the victim's login, the limit, nothing more"
    assert fleet.committed("victim").failures == LIMIT
    assert fleet.refusals_logged("m3") == 10, "each of the five attacks, by both honest members"


def _first_value(current: bytes) -> bytes:
    """The record as its registration committed it (attempts and recent cleared away)."""
    record = records.decode(current)
    assert record is not None
    return records.encode(records.replace_record(record, attempts=0, cleared=0, recent=()))


def _witness_of(request: bytes, change: str) -> bytes:
    """The witness ``change`` is made from: the client's request as sent."""
    body = REGISTRY.parse(Envelope.decode(request))
    return Witness(change=change, request=body).encode()


async def _until(condition, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


async def _announce_signed_by(rogue: Rogue, key: str, value: bytes) -> None:
    """Tell every member that ``value`` committed, with a vote only the rogue signed."""
    membership = rogue.proposer.membership()
    forged = _proof_signed_by(rogue, key, value)
    notice = Committed(
        fleet=membership.fleet,
        epoch=membership.epoch,
        proposer=rogue.member,
        keys=(key,),
        ballots=(forged.ballot,),
        values=(value,),
        votes=forged.votes,
    )
    env = rogue.outbox.envelope(notice)
    await rogue.nc.publish(subjects.quorum(membership.fleet, COMMITTED), env.encode())


def _proof_signed_by(rogue: Rogue, key: str, value: bytes) -> Justification:
    """A justification whose predecessor ``value`` only the rogue signed as accepted."""
    vote = Accepted(
        fleet=rogue.proposer.membership().fleet,
        proposer=rogue.member,
        keys=(key,),
        ballots=(1_000_000,),
        digests=(value_digest(value),),
        epoch=rogue.proposer.membership().epoch,
    )
    signed = rogue.outbox.envelope(vote).encode()
    return Justification(value, 1_000_000, rogue.member, (signed,), None)


async def _accepted_by_honest(
    rogue: Rogue, key: str, value: bytes, justification: Justification
) -> set[str]:
    """Send the honest members an accept of ``value`` with exactly ``justification`` (no
    proposer logic in between); once every one refused it, why they did."""
    membership = rogue.proposer.membership()
    body = Accept(
        fleet=membership.fleet,
        epoch=membership.epoch,
        keys=(key,),
        ballots=(1 << 40,),
        next_ballots=(0,),
        values=(value,),
        justifications=(justification.encode(),),
    )
    env = rogue.outbox.envelope(body)
    tally = Tally(Gate(membership.trust()), env, body, membership)
    inbox = rogue.nc.new_inbox()
    sub = await rogue.nc.subscribe(inbox)
    try:
        await rogue.nc.publish(subjects.quorum(membership.fleet, ACCEPT), env.encode(), reply=inbox)
        async with asyncio.timeout(5):
            while len(tally.votes) < 2:
                tally.add((await sub.next_msg()).data)
    finally:
        await sub.unsubscribe()
    assert tally.grants[0] == 0, "an honest member accepted it"
    return {refusal.kind for refusal in tally.refusals_of(0).values()}


async def test_registering_recovering_and_registering_again_gains_no_guesses(tmp_path, nats_server):
    """Davies et al.'s cycle: someone who can get the user's register and recover
    authorizations registers over the user's record with a PIN of its own, proves it to clear
    the failures, and waits for the user to register the same PIN again. Registering over a
    live record needs its PIN or a replacement, so the cycle never starts; a replacement (an
    authority that grants them) is rate-limited and shows at the user's next recovery."""
    async with fleet_of(
        tmp_path / "f", nats_server.url, ["m1", "m2", "m3"], limit=LIMIT, replace_interval_s=3600
    ) as (fleet, nc):
        victim = fleet.client(nc)
        attacker = fleet.client(nc, ops=("register", "recover"))
        await victim.register("victim", PIN, SECRET)
        for guess in (b"0000", b"1111"):
            with pytest.raises(WrongGuess):
                await attacker.recover("victim", guess)
        with pytest.raises(RegistrationExists):
            await attacker.register("victim", b"9999", b"attacker's")
        # Granted no replacement, it passes its register authorization off as one.
        passing_off = VaultClient(
            nc,
            fleet.local.vault_keys,
            lambda user, _op, request: attacker.authorize(user, "register", request),
            timeout=10,
        )
        with pytest.raises(RegistrationExists):
            await passing_off.register("victim", b"9999", b"attacker's", replace_record=True)
        recovered = await victim.recover("victim", PIN)
        assert (recovered.secret, recovered.replaced) == (SECRET, 0)

        # With replacements granted, the first is counted and the next one refused.
        replacer = fleet.client(nc, ops=(REPLACE, "register", "recover"))
        await replacer.register("victim", b"9999", b"attacker's", replace_record=True)
        with pytest.raises(ReplacementTooSoon):
            await replacer.register("victim", PIN, SECRET, replace_record=True)
        own = await replacer.recover("victim", b"9999")
        assert own.replaced == 1, "the user sees the replacement at its next recovery"
    assert fleet.evaluated("victim") == 4, "two wrong guesses, and one login by each holder"


async def test_requests_without_the_users_authorization_are_refused_and_spend_nothing(
    tmp_path, nats_server
):
    async with fleet_of(tmp_path / "f", nats_server.url, ["m1", "m2", "m3"], limit=LIMIT) as (
        fleet,
        nc,
    ):
        await fleet.client(nc).register("victim", PIN, SECRET)
        anonymous = fleet.client(nc, signer=Ed25519Signer.generate())
        for _ in range(LIMIT * 2):
            with pytest.raises(VaultError) as refused:
                await anonymous.recover("victim", b"0000")
            assert refused.value.kind == "unauthorized"
        with pytest.raises(VaultError) as refused:
            await anonymous.register("victim", b"0000", b"mine")
        assert refused.value.kind == "unauthorized"
        recovered = await fleet.client(nc).recover("victim", PIN)
        assert (recovered.secret, recovered.attempt) == (SECRET, 1), "the budget is untouched"
    assert fleet.evaluated("victim") == 1


async def test_captured_requests_replayed_everywhere_and_after_a_restart_gain_nothing(
    tmp_path, nats_server
):
    """Someone who sees the bus (a NATS server, the network) keeps every vault request of a
    registration, a successful recovery and a wrong guess, restarts a member (its replay
    memory is gone), then sends each copy again and again, newest first and oldest first, so
    the queue group hands copies to every member, including ones that never saw the original.
    No copy counts an attempt, clears a failure, registers, or gets a guess evaluated."""
    async with fleet_of(tmp_path / "f", nats_server.url, ["m1", "m2", "m3"], limit=LIMIT) as (
        fleet,
        nc,
    ):
        captured: list[tuple[str, bytes]] = []

        async def keep(msg) -> None:
            captured.append((msg.subject, msg.data))

        spy = await nc.subscribe(f"fleet.vault.{fleet.local.fleet}.*", cb=keep)
        victim, attacker = fleet.client(nc), fleet.client(nc, ops=("recover",))
        await victim.register("victim", PIN, SECRET)
        assert (await victim.recover("victim", PIN)).secret == SECRET
        with pytest.raises(WrongGuess):
            await attacker.recover("victim", b"0000")
        await spy.unsubscribe()
        assert {subject.rsplit(".", 1)[1] for subject, _ in captured} == set(OPERATIONS)
        before = fleet.committed("victim")

        await fleet.restart("m1")
        for copies in (captured, captured[::-1]) * 5:
            for subject, data in copies:
                with contextlib.suppress(nats.errors.TimeoutError):
                    await nc.request(subject, data, timeout=2)
        after = fleet.committed("victim")
        assert (after.generation, after.registration) == (before.generation, before.registration)
        assert (after.attempts, after.cleared) == (before.attempts, before.cleared) == (2, 1)
        recovered = await victim.recover("victim", PIN)
        assert (recovered.secret, recovered.attempt) == (SECRET, 3)
    assert fleet.evaluated("victim") == 3, "the two logins and the wrong guess, and no copy"


async def test_a_client_sends_no_registration_to_a_fleet_with_another_opaque_key(
    tmp_path, nats_server
):
    """Whoever answers a client's registration with an OPAQUE server key other than its
    bundle's (a man in the middle, another fleet) gets no registration upload, so no password
    file to guess the PIN against offline."""
    async with fleet_of(tmp_path / "f", nats_server.url, ["m1", "m2", "m3"]) as (fleet, nc):
        keys = fleet.local.vault_keys
        other = os.urandom(32)
        misled = VaultClient(
            nc,
            replace(keys, server=replace(keys.server, public_key=other)),
            fleet.client(nc).authorize,
            timeout=10,
        )
        uploads = await nc.subscribe(subjects.vault(fleet.local.fleet, REGISTER))
        with pytest.raises(MalformedOpaque, match="another OPAQUE server key"):
            await misled.register("victim", PIN, SECRET)
        with pytest.raises(nats.errors.TimeoutError):
            await uploads.next_msg(timeout=1)
        assert fleet.committed("victim") is None


async def test_concurrent_wrong_guesses_across_members_stay_within_the_limit(tmp_path, nats_server):
    """200 wrong guesses at once, spread over the members by the queue group, then more one
    at a time until the fleet says the budget is spent: exactly the limit is evaluated, and
    every attempt the fleet counted is one whose guess was evaluated (none spent without an
    answer)."""
    async with fleet_of(tmp_path / "f", nats_server.url, ["m1", "m2", "m3"], limit=10) as (
        fleet,
        nc,
    ):
        await fleet.client(nc).register("victim", PIN, SECRET)
        connections = [await nats.connect(nats_server.url) for _ in range(4)]
        clients = [fleet.client(c, ops=("recover",)) for c in connections]

        async def guess(i: int) -> str:
            try:
                await clients[i % len(clients)].recover("victim", b"%04d" % (1000 + i))
            except VaultError as exc:
                return exc.kind
            return "ok"

        try:
            outcomes = await asyncio.gather(*(guess(i) for i in range(200)))
            after = [await guess(i) for i in range(200, 212)]
        finally:
            for connection in connections:
                await connection.close()
        assert set(outcomes) <= {"wrong_guess", "budget_exhausted", "vault_unavailable"}
        assert after[-1] == "budget_exhausted" and "ok" not in after
        outcomes += after
    evaluated = fleet.evaluated("victim")
    assert evaluated == 10, "the limit, reached and not passed"
    assert evaluated == fleet.committed("victim").attempts, "every attempt spent was answered"
    assert outcomes.count("wrong_guess") == evaluated
    assert outcomes.count("ok") == 0
