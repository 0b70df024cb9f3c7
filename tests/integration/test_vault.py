"""Vault operations through the client, over a real nats-server, against an in-process fleet."""

import asyncio
import os
import subprocess
import sys

import nats
import pytest
from prometheus_client import REGISTRY as METRICS

from messages import subjects
from messages.bus import Rejected, RequestRejected, request
from messages.envelope import Envelope
from messages.gate import Gate
from messages.outbox import Outbox
from messages.schema import REGISTRY
from messages.signing import TrustStore
from messages.vault import (
    RECOVER,
    REGISTER,
    BudgetExhausted,
    NoRecord,
    RecoverRequest,
    Registration,
    StaleRegistration,
    VaultRequest,
    VaultUnavailable,
    WrongGuess,
    open_answer,
    open_request,
    seal_request,
    session_public_key,
)
from node.quorum.membership import Step
from node.quorum.reconfigure import apply_steps
from node.vault.record import record_key
from ops.natsserver import NatsServer
from tests.faults.fleets import running_fleet

ALICE = Registration(pin=b"1234", secret=b"backup key of alice")


@pytest.fixture
async def client_nc(nats_server):
    nc = await nats.connect(nats_server.url)
    yield nc
    await nc.close()


def evaluations(fleet, user):
    return [e for m in fleet.running.values() for e in m.journal.evaluations() if e.user == user]


async def test_register_then_recover_with_the_right_pin(tmp_path, nats_server, client_nc):
    async with running_fleet(tmp_path, nats_server.url) as fleet:
        client = fleet.client(client_nc)
        await client.register("alice", ALICE)
        assert await client.recover("alice", b"1234") == ALICE.secret
        with pytest.raises(NoRecord):
            await client.recover("bob", b"1234")


async def test_wrong_guesses_count_down_and_a_right_one_clears_them(
    tmp_path, nats_server, client_nc
):
    async with running_fleet(tmp_path, nats_server.url, limit=5) as fleet:
        client = fleet.client(client_nc)
        await client.register("alice", ALICE)
        remaining = []
        for _ in range(3):
            with pytest.raises(WrongGuess) as wrong:
                await client.recover("alice", b"0000")
            remaining.append(wrong.value.remaining)
        assert remaining == [4, 3, 2]
        assert await client.recover("alice", b"1234") == ALICE.secret
        with pytest.raises(WrongGuess) as wrong:
            await client.recover("alice", b"0000")
        assert wrong.value.remaining == 4


async def test_the_budget_is_per_user_and_survives_re_registration(
    tmp_path, nats_server, client_nc
):
    async with running_fleet(tmp_path, nats_server.url, limit=4) as fleet:
        client = fleet.client(client_nc)
        await client.register("alice", ALICE)
        for _ in range(2):
            with pytest.raises(WrongGuess):
                await client.recover("alice", b"0000")
        await client.register("alice", Registration(pin=b"5678", secret=b"second"))
        with pytest.raises(WrongGuess) as wrong:
            await client.recover("alice", b"0000")
        assert wrong.value.remaining == 1, "re-registering bought no guesses"
        with pytest.raises(WrongGuess) as wrong:
            await client.recover("alice", b"0000")
        assert wrong.value.remaining == 0
        with pytest.raises(BudgetExhausted):
            await client.recover("alice", b"5678")
        with pytest.raises(BudgetExhausted):
            await client.register("alice", Registration(pin=b"1", secret=b"third"))
        assert len(evaluations(fleet, "alice")) == 4


async def test_concurrent_guesses_never_exceed_the_limit(tmp_path, nats_server, client_nc):
    async with running_fleet(tmp_path, nats_server.url, limit=10) as fleet:
        clients = [fleet.client(client_nc) for _ in range(3)]
        await clients[0].register("carol", ALICE)

        async def guess(i: int) -> str:
            try:
                await clients[i % 3].recover("carol", b"%04d" % i)
            except (WrongGuess, BudgetExhausted, VaultUnavailable) as exc:
                return exc.kind
            return "ok"

        results = await asyncio.gather(*(guess(i) for i in range(10, 40)))
        assert results.count("wrong_guess") <= 10
        assert results.count("ok") == 0
        assert len(evaluations(fleet, "carol")) <= 10
        seqs = sorted(e.seq for e in evaluations(fleet, "carol"))
        assert len(seqs) == len(set(seqs)), "no attempt was evaluated twice"
        with pytest.raises(BudgetExhausted):
            await clients[0].recover("carol", b"1234")


async def test_a_replayed_registration_is_refused(tmp_path, nats_server, client_nc):
    async with running_fleet(tmp_path, nats_server.url) as fleet:
        client = fleet.client(client_nc)
        sent = []
        spy = await client_nc.subscribe(subjects.vault(fleet.fleet, "register"))
        await client.register("alice", ALICE)
        sent.append((await spy.next_msg(timeout=1)).data)
        await spy.unsubscribe()
        await client.register("alice", Registration(pin=b"9999", secret=b"new"))
        answer = await client_nc.request(subjects.vault(fleet.fleet, "register"), sent[0])
        assert _refusal(fleet, sent[0], answer.data) in ("replayed", "stale_registration")
        assert await client.recover("alice", b"9999") == b"new"
        with pytest.raises(StaleRegistration):
            await fleet["m1"].vault.register(_replayed_plain(fleet, sent[0]))


def _replayed_plain(fleet, data, op=REGISTER):
    body = REGISTRY.parse(Envelope.decode(data))
    return open_request(fleet.local.vault_keys.session, fleet.fleet, op, body.sealed)


def _refusal(fleet, request, answer, op=REGISTER):
    """Why the fleet refused a replayed ``request``: the gate's kind (the member that took the
    original saw its id), or the status sealed for the original client."""
    env = Envelope.decode(answer)
    body = REGISTRY.parse(env)
    if isinstance(body, Rejected):
        return body.kind
    plain = _replayed_plain(fleet, request, op)
    return open_answer(plain.answer_key, plain.id, body.sealed).status


async def test_a_replayed_recovery_spends_no_guess(tmp_path, nats_server, client_nc):
    async with running_fleet(tmp_path, nats_server.url, limit=5) as fleet:
        client = fleet.client(client_nc)
        await client.register("alice", ALICE)
        spy = await client_nc.subscribe(subjects.vault(fleet.fleet, RECOVER))
        with pytest.raises(WrongGuess) as wrong:
            await client.recover("alice", b"0000")
        assert wrong.value.remaining == 4
        sent = (await spy.next_msg(timeout=1)).data
        await spy.unsubscribe()
        for _ in range(6):  # the queue group spreads copies over every member
            answer = await client_nc.request(subjects.vault(fleet.fleet, RECOVER), sent, timeout=5)
            assert _refusal(fleet, sent, answer.data, RECOVER) in ("replayed", "replayed_request")
        with pytest.raises(WrongGuess) as wrong:
            await client.recover("alice", b"0000")
        assert wrong.value.remaining == 3, "the copies spent no guess"
        assert len(evaluations(fleet, "alice")) == 2


async def test_a_request_sealed_for_another_envelope_is_refused(tmp_path, nats_server, client_nc):
    async with running_fleet(tmp_path, nats_server.url) as fleet:
        plain = RecoverRequest(
            id=Outbox("x").ids.new(), user="alice", guess=b"1", answer_key=os.urandom(32)
        )
        public = session_public_key(fleet.local.session_public)
        sealed = seal_request(public, fleet.fleet, RECOVER, plain)
        env = Outbox("mallory").envelope(VaultRequest(sealed=sealed))
        with pytest.raises(RequestRejected) as refused:
            await request(
                client_nc, subjects.vault(fleet.fleet, RECOVER), env, Gate(TrustStore()), None
            )
        assert refused.value.detail["kind"] == "unreadable_request"
        assert "another envelope" in str(refused.value)


def counted(fleet, name, **labels):
    """The sum over ``fleet``'s members of the Prometheus sample ``name`` with ``labels``."""
    return sum(
        METRICS.get_sample_value(name, {"fleet": fleet.fleet, "member": m, **labels}) or 0
        for m in fleet.running
    )


async def test_an_unreadable_request_is_refused_in_the_clear(tmp_path, nats_server, client_nc):
    async with running_fleet(tmp_path, nats_server.url) as fleet:
        env = Outbox("mallory").envelope(VaultRequest(sealed=b"not hpke at all"))
        with pytest.raises(RequestRejected) as refused:
            await request(
                client_nc, subjects.vault(fleet.fleet, RECOVER), env, Gate(TrustStore()), None
            )
        assert refused.value.detail["kind"] == "unreadable_request"
        rejected = "hsmfleet_vault_requests_rejected_total"
        assert counted(fleet, rejected, kind="unreadable_request") == 1
        client = fleet.client(client_nc)
        await client.register("alice", ALICE)
        with pytest.raises(WrongGuess):
            await client.recover("alice", b"0000")
        ran = "hsmfleet_vault_operations_total"
        assert counted(fleet, ran, op=REGISTER, outcome="ok") == 1
        assert counted(fleet, ran, op=RECOVER, outcome="wrong_guess") == 1


async def test_without_a_majority_operations_fail_clearly(tmp_path, nats_server, client_nc):
    async with running_fleet(tmp_path, nats_server.url) as fleet:
        client = fleet.client(client_nc, timeout=10)
        await client.register("alice", ALICE)
        await fleet.stop("m2")
        await fleet.stop("m3")
        with pytest.raises(VaultUnavailable):
            await client.register("dave", ALICE)
        with pytest.raises(VaultUnavailable):
            await client.recover("alice", b"0000")
        assert evaluations(fleet, "alice") == [], "no guess was evaluated without a quorum"


def test_the_client_needs_nothing_from_node():
    code = (
        "import sys, messages.vault_client; "
        "assert not [m for m in sys.modules if m == 'node' or m.startswith('node.')]"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


async def test_a_member_with_too_many_requests_in_progress_refuses_more(
    tmp_path, nats_server, client_nc
):
    async with running_fleet(tmp_path, nats_server.url) as fleet:
        for member in fleet.running.values():
            member.vault.max_pending = 0
        with pytest.raises(RequestRejected) as refused:
            await fleet.client(client_nc).register("alice", ALICE)
        assert refused.value.detail["kind"] == "vault_busy"
        assert sum(m.vault.rejects["vault_busy"] for m in fleet.running.values()) == 1
        for member in fleet.running.values():
            member.vault.max_pending = 10
        await fleet.client(client_nc).register("alice", ALICE)


async def test_a_member_stopped_mid_request_still_answers_what_it_took(
    tmp_path, nats_server, client_nc
):
    async with running_fleet(tmp_path, nats_server.url) as fleet:
        client = fleet.client(client_nc)
        users = [f"user-{i}" for i in range(24)]
        calls = [asyncio.create_task(client.register(u, ALICE)) for u in users]
        stopping = fleet["m1"].vault
        # Checked on every turn of the loop: all the requests may be answered within one poll.
        async with asyncio.timeout(10):
            while stopping.in_progress == 0:  # noqa: ASYNC110
                await asyncio.sleep(0)
        await fleet.stop("m1")  # m2 and m3 remain a majority
        await asyncio.gather(*calls)
        assert stopping.in_progress == 0
        for user in users:
            assert await client.recover(user, b"1234") == ALICE.secret


def after_each_commit(fleet, then):
    """Have ``then(member, commit, count)`` run after each commit of every member's proposer
    (``commit``: the proposer's own change; ``count``: commits so far), before the vault
    service sees it: a real reconfiguration or a real change, at an exact point."""
    count = 0
    for member in fleet.running.values():
        commit = member.vault.proposer.change

        async def change(key, fn, member=member, commit=commit, **options):
            nonlocal count
            committed = await commit(key, fn, **options)
            count += 1
            await then(member, commit, count)
            return committed

        member.vault.proposer.change = change


def reconfigure(nc, fleet, member):
    newer = member.replica.current().next()
    return apply_steps(nc, fleet.local.operator, [Step(newer)])


async def test_a_recovery_whose_group_changes_before_evaluation_is_proven_again(
    tmp_path, nats_server, client_nc
):
    """The group moves to a new configuration right after the attempt commits: the attempt's
    proof is then of another configuration, and a read under the new one proves it again."""
    async with running_fleet(tmp_path, nats_server.url) as fleet:
        client = fleet.client(client_nc)
        await client.register("alice", ALICE)

        async def once(member, commit, count):
            if count == 1:
                await reconfigure(client_nc, fleet, member)

        after_each_commit(fleet, once)
        assert await client.recover("alice", b"1234") == ALICE.secret
        assert {m.replica.current().epoch for m in fleet.running.values()} == {2}
        assert len(evaluations(fleet, "alice")) == 1


@pytest.mark.parametrize(
    ("interference", "says", "epoch"),
    [
        # the attempt and two renewals, each followed by a new configuration
        ("keeps changing", "kept changing", 4),
        # one new configuration, and the record changed again before the renewal read
        ("overtaken", "overtook", 2),
    ],
)
async def test_a_recovery_that_cannot_be_proven_again_spends_the_attempt_and_says_so(
    tmp_path, nats_server, client_nc, interference, says, epoch
):
    async with running_fleet(tmp_path, nats_server.url) as fleet:
        client = fleet.client(client_nc)
        await client.register("alice", ALICE)

        async def interfere(member, commit, count):
            if interference == "keeps changing" or count == 1:
                await reconfigure(client_nc, fleet, member)
            if interference == "overtaken" and count == 1:
                await commit(record_key("alice"), lambda value: value + b" and later")

        after_each_commit(fleet, interfere)
        with pytest.raises(VaultUnavailable, match=rf"{says}.*attempt_spent=True"):
            await client.recover("alice", b"1234")
        assert {m.replica.current().epoch for m in fleet.running.values()} == {epoch}
        assert evaluations(fleet, "alice") == [], "no guess was looked at"


async def test_a_member_stops_within_its_grace_while_the_server_hangs(tmp_path):
    """Draining needs the server; a hung one must not hold a stopping member past its grace
    (nats-py's own flush would wait 10 s per subscription)."""
    async with (
        NatsServer(tmp_path / "hung", name="hung") as server,
        running_fleet(tmp_path / "fleet", server.url) as fleet,
    ):
        vault = fleet["m1"].vault
        server.pause()
        try:
            await asyncio.wait_for(vault.stop(grace_s=0.5), 5)
        finally:
            server.resume()
