"""Vault operations through the client, over a real nats-server, against an in-process fleet.

What a guess costs is read from two places: the record the fleet committed (``attempts``, and
``cleared``, the last attempt a finished login proved) and every member's evaluation journal
(the attempts its HSM answered: the only way a client learns whether a guess was right)."""

import asyncio
import os
import subprocess
import sys
import time
from dataclasses import replace

import nats
import pytest
from prometheus_client import REGISTRY as METRICS

from messages import subjects
from messages.envelope import Envelope
from messages.membership import Step
from messages.quorum import Ballot, Justification
from messages.schema import REGISTRY
from messages.signing import Ed25519Signer, TrustStore, key_id
from messages.vault import (
    MAX_SECRET_BYTES,
    RECOVER_FINISH,
    RECOVER_START,
    REGISTER,
    REGISTER_START,
    BudgetExhausted,
    NoRecord,
    RecoverStart,
    RegistrationExists,
    ReplacementTooSoon,
    VaultBusy,
    VaultRequest,
    VaultUnavailable,
    WrongGuess,
    kem_public_key,
    open_answer,
    seal_request,
)
from messages.vault_authorization import AccountAuthority
from messages.vault_policy import VaultError
from node.quorum import replica as replica_module
from node.quorum.member import JOURNAL_FILE
from node.quorum.reconfigure import apply_steps
from node.vault import record as records
from node.vault.journal import EvaluationJournal
from ops.natsserver import NatsServer
from tests.faults.fleets import running_fleet
from transport.bus import Rejected, RequestRejected, request
from transport.gate import Gate
from transport.outbox import IdSource, Outbox

PIN = b"1234"
SECRET = b"backup key of alice"


@pytest.fixture
async def client_nc(nats_server):
    nc = await nats.connect(nats_server.url)
    yield nc
    await nc.close()


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def answered(fleet, user, since=0):
    """The attempts of ``user`` after attempt ``since`` that the HSMs of all ``fleet``'s
    members (running or stopped) answered, as their evaluation journals hold them. (A journal
    prunes the attempts up to the record's ``cleared`` when it answers the next one, so earlier
    attempts may or may not be listed once a login succeeded.)"""
    numbers = []
    for member in fleet.local.members:
        journal = EvaluationJournal(fleet.local.state_dir(member) / JOURNAL_FILE)
        try:
            numbers += journal.answered(fleet.fleet, user)
        finally:
            journal.close()
    return sorted(n for n in numbers if n > since)


async def wrong_guesses(client, user, count):
    """The guesses left after each of ``count`` wrong guesses of ``user``'s PIN."""
    remaining = []
    for _ in range(count):
        with pytest.raises(WrongGuess) as wrong:
            await client.recover(user, b"0000")
        remaining.append(wrong.value.remaining)
    return remaining


async def record_of(fleet, user, member="m1"):
    """``user``'s record as the fleet committed it (read through ``member``'s proposer)."""
    commit = await fleet[member].replica.proposer.read(records.record_key(user))
    return records.decode(commit.value)


async def test_register_then_recover_with_the_right_pin(tmp_path, nats_server, client_nc):
    async with running_fleet(tmp_path, nats_server.url) as fleet:
        client = fleet.client(client_nc)
        assert await client.register("alice", PIN, SECRET) == 1
        recovered = await client.recover("alice", PIN)
        assert (recovered.secret, recovered.attempt, recovered.replaced) == (SECRET, 1, 0)
        assert recovered.generation == 1
        with pytest.raises(NoRecord):
            await client.recover("bob", PIN)
        assert answered(fleet, "bob") == []


async def test_the_largest_secret_a_client_may_store_comes_back(tmp_path, nats_server, client_nc):
    """A secret of the largest size the client takes is stored and released whole (its release
    fits the one answer length); one byte more is refused before anything is sent."""
    async with running_fleet(tmp_path, nats_server.url) as fleet:
        client = fleet.client(client_nc)
        largest = os.urandom(MAX_SECRET_BYTES - 64)
        await client.register("alice", PIN, largest)
        assert (await client.recover("alice", PIN)).secret == largest
        with pytest.raises(VaultError, match="a secret is 1 to"):
            await client.register("bob", PIN, largest + b"x")
        assert await record_of(fleet, "bob") is None


async def test_wrong_guesses_count_down_and_a_right_one_clears_them(
    tmp_path, nats_server, client_nc
):
    async with running_fleet(tmp_path, nats_server.url, limit=5) as fleet:
        client = fleet.client(client_nc)
        await client.register("alice", PIN, SECRET)
        assert await wrong_guesses(client, "alice", 3) == [4, 3, 2]
        assert (await client.recover("alice", PIN)).secret == SECRET
        record = await record_of(fleet, "alice")
        assert (record.attempts, record.cleared, record.failures) == (4, 4, 0)
        with pytest.raises(WrongGuess) as wrong:
            await client.recover("alice", b"0000")
        assert wrong.value.remaining == 4
        assert answered(fleet, "alice", since=4) == [5]


async def test_re_registering_a_live_record_needs_its_pin_or_a_counted_rate_limited_replacement(
    tmp_path, nats_server, client_nc
):
    """Re-registering never buys guesses without the PIN: over a live record a registration
    needs a finished login with the PIN in force (which clears the failures as any right guess
    does) or a replacement the authority allows, which the record counts for the user to see
    and the fleet rate-limits; without either it is refused and spends nothing."""
    async with running_fleet(tmp_path, nats_server.url, limit=4, replace_interval_s=3600) as fleet:
        client = fleet.client(client_nc)
        await client.register("alice", PIN, SECRET)
        for _ in range(2):
            with pytest.raises(WrongGuess):
                await client.recover("alice", b"0000")
        with pytest.raises(RegistrationExists):
            await client.register("alice", b"5678", b"second")
        with pytest.raises(WrongGuess) as wrong:
            await client.register("alice", b"5678", b"second", current_pin=b"0000")
        assert wrong.value.remaining == 1, "neither registration attempt bought a guess"
        record = await record_of(fleet, "alice")
        assert (record.generation, record.attempts, record.failures) == (1, 3, 3)

        assert await client.register("alice", b"5678", b"second", current_pin=PIN) == 2
        record = await record_of(fleet, "alice")
        assert (record.attempts, record.cleared, record.replaced) == (4, 4, 0)
        with pytest.raises(WrongGuess):
            await client.recover("alice", PIN)  # the old PIN is a wrong guess now

        assert await client.register("alice", b"9999", b"third", replace_record=True) == 3
        with pytest.raises(ReplacementTooSoon):
            await client.register("alice", b"0001", b"fourth", replace_record=True)
        recovered = await client.recover("alice", b"9999")
        assert (recovered.secret, recovered.replaced, recovered.generation) == (b"third", 1, 3)
        record = await record_of(fleet, "alice")
        assert (record.attempts, record.cleared, record.replaced) == (6, 6, 1)


async def test_past_its_limit_a_record_is_destroyed_and_only_a_replacement_brings_it_back(
    tmp_path, nats_server, client_nc
):
    """After ``limit`` wrong guesses even the right PIN is refused and nothing more is
    evaluated; once the last login could no longer finish the record is destroyed, and a
    destroyed record takes neither a login nor a registration, only a counted replacement.
    The later client's clock runs past the policy's login lifetime (inside the window members
    take requests in) instead of the test waiting it out."""
    async with running_fleet(tmp_path, nats_server.url, limit=3) as fleet:
        client = fleet.client(client_nc)
        await client.register("alice", PIN, SECRET)
        assert await wrong_guesses(client, "alice", 3) == [2, 1, 0]
        with pytest.raises(BudgetExhausted):
            await client.recover("alice", PIN)
        assert not (await record_of(fleet, "alice")).destroyed, "a login may still finish"

        later = fleet.client(client_nc)
        ttl_ms = fleet.local.policy.login_ttl_s * 1000
        later.ids = IdSource(lambda: now_ms() + ttl_ms + 1000)
        with pytest.raises(BudgetExhausted):
            await later.recover("alice", PIN)
        record = await record_of(fleet, "alice")
        assert record.destroyed and (record.attempts, record.failures) == (3, 3)
        with pytest.raises(BudgetExhausted):
            await later.register("alice", b"5678", b"second", current_pin=PIN)
        with pytest.raises(RegistrationExists):
            await later.register("alice", b"5678", b"second")
        assert answered(fleet, "alice") == [1, 2, 3], "nothing past the limit was evaluated"

        assert await client.register("alice", b"5678", b"second", replace_record=True) == 2
        recovered = await client.recover("alice", b"5678")
        assert (recovered.secret, recovered.replaced, recovered.attempt) == (b"second", 1, 4)


@pytest.mark.parametrize("offset_s", [-200, 200])
async def test_a_client_whose_clock_is_off_by_more_than_a_login_lifetime_still_logs_in(
    tmp_path, nats_server, client_nc, offset_s
):
    """A login's lifetime runs on the client's clock (from its start request's id to its
    finish request's id), which members take within five minutes of their own: a clock off
    by more than the lifetime neither spends the guess for nothing nor is refused."""
    async with running_fleet(tmp_path, nats_server.url) as fleet:
        client = fleet.client(client_nc)
        assert fleet.local.policy.login_ttl_s < abs(offset_s)
        client.ids = IdSource(lambda: now_ms() + offset_s * 1000)
        await client.register("alice", PIN, SECRET)
        recovered = await client.recover("alice", PIN)
        assert (recovered.secret, recovered.attempt) == (SECRET, 1)
        record = await record_of(fleet, "alice")
        assert (record.attempts, record.cleared) == (1, 1)


async def test_concurrent_guesses_never_exceed_the_limit_and_every_attempt_spent_is_evaluated(
    tmp_path, nats_server, client_nc
):
    """200 wrong guesses at once, spread over the members by the queue group: at most
    ``limit`` attempts are ever counted, each counted attempt is answered by exactly one HSM
    (the journals together hold exactly the record's attempts: no attempt is spent without
    being evaluated, none evaluated twice), and each answer reached its client as a wrong
    guess; the rest are refused."""
    async with running_fleet(tmp_path, nats_server.url, limit=10, deadline=30.0) as fleet:
        clients = [fleet.client(client_nc, timeout=60) for _ in range(3)]
        await clients[0].register("carol", PIN, SECRET)

        async def guess(i: int) -> str:
            try:
                await clients[i % 3].recover("carol", b"%04d" % i)
            except VaultError as exc:
                return exc.kind
            return "ok"

        results = await asyncio.gather(*(guess(i) for i in range(2000, 2200)))
        record = await record_of(fleet, "carol")
        evaluated = answered(fleet, "carol")
        assert len(evaluated) == len(set(evaluated)), "no attempt was answered twice"
        assert evaluated == list(range(1, record.attempts + 1))
        assert (record.attempts, record.cleared) == (10, 0), "the limit was reached, not passed"
        assert results.count("wrong_guess") == record.attempts
        # a guess that lost a race for the record may be refused unspent (vault_unavailable)
        assert set(results) <= {"wrong_guess", "budget_exhausted", "vault_unavailable"}
        assert results.count("budget_exhausted") > 100
        took = "hsmfleet_vault_operations_total"
        for member in fleet.running:
            assert counted(fleet, took, members=[member], op=RECOVER_START) > 0, member
        with pytest.raises(BudgetExhausted):
            await clients[0].recover("carol", PIN)


def opened(fleet, op, data, member="m1"):
    """The request inside the envelope ``data`` and its plaintext, as ``member``'s applet
    opens it (the test's stand-in for the client that sent it)."""
    body = REGISTRY.parse(Envelope.decode(data))
    return body, fleet[member].vault.applet.open(op, body)


def refusal(fleet, op, data, answer):
    """Why the fleet refused a copy ``data`` of an ``op`` request: the gate's kind (the member
    that took the original saw its id), or the status sealed for the original client."""
    body = REGISTRY.parse(Envelope.decode(answer))
    if isinstance(body, Rejected):
        return body.kind
    _, plain = opened(fleet, op, data)
    outcome = open_answer(plain.answer_key, plain.id, body.sealed)
    assert outcome.secret is None and outcome.response is None
    return outcome.status


async def replayed(fleet, op, data, member):
    """What ``member``'s service makes of a copy of ``data`` past its gate (the copy's first
    time at that member): the outcome's status."""
    body, _ = opened(fleet, op, data, member)
    service = fleet[member].vault
    info = await asyncio.to_thread(service.applet.peek, op, body)
    status, _ = await service.handle(op, body, info)
    return status


async def capture(nc, fleet, op, action):
    """Run ``action`` and return the first ``op`` request it sent."""
    spy = await nc.subscribe(subjects.vault(fleet.fleet, op))
    try:
        await action
        return (await spy.next_msg(timeout=1)).data
    finally:
        await spy.unsubscribe()


async def test_a_replayed_registration_is_refused(tmp_path, nats_server, client_nc):
    async with running_fleet(tmp_path, nats_server.url) as fleet:
        client = fleet.client(client_nc)
        sent = await capture(client_nc, fleet, REGISTER, client.register("alice", PIN, SECRET))
        proving = await capture(
            client_nc, fleet, REGISTER, client.register("alice", b"9999", b"new", current_pin=PIN)
        )
        with pytest.raises(WrongGuess):
            await client.recover("alice", b"0000")
        for copy in (sent, proving):  # the first, and the one whose login cleared failures
            answer = await client_nc.request(subjects.vault(fleet.fleet, REGISTER), copy, timeout=5)
            assert refusal(fleet, REGISTER, copy, answer.data) in ("replayed", "stale_registration")
            for member in fleet.running:
                assert await replayed(fleet, REGISTER, copy, member) == "stale_registration"
        record = await record_of(fleet, "alice")
        assert (record.generation, record.failures) == (2, 1), "nothing undone, nothing cleared"
        assert (await client.recover("alice", b"9999")).secret == b"new"


async def test_a_replayed_recovery_start_spends_no_guess(tmp_path, nats_server, client_nc):
    async with running_fleet(tmp_path, nats_server.url, limit=5) as fleet:
        client = fleet.client(client_nc)
        await client.register("alice", PIN, SECRET)
        spy = await client_nc.subscribe(subjects.vault(fleet.fleet, RECOVER_START))
        with pytest.raises(WrongGuess) as wrong:
            await client.recover("alice", b"0000")
        assert wrong.value.remaining == 4
        sent = (await spy.next_msg(timeout=1)).data
        await spy.unsubscribe()
        subject = subjects.vault(fleet.fleet, RECOVER_START)
        for _ in range(6):  # the queue group spreads copies over every member
            answer = await client_nc.request(subject, sent, timeout=5)
            assert refusal(fleet, RECOVER_START, sent, answer.data) in (
                "replayed",
                "replayed_request",
            )
        for member in fleet.running:
            assert await replayed(fleet, RECOVER_START, sent, member) == "replayed_request"
        with pytest.raises(WrongGuess) as wrong:
            await client.recover("alice", b"0000")
        assert wrong.value.remaining == 3, "the copies spent no guess"
        assert answered(fleet, "alice") == [1, 2]


async def test_a_replayed_finished_login_is_refused_and_releases_nothing(
    tmp_path, nats_server, client_nc
):
    async with running_fleet(tmp_path, nats_server.url) as fleet:
        client = fleet.client(client_nc)
        await client.register("alice", PIN, SECRET)
        sent = await capture(client_nc, fleet, RECOVER_FINISH, client.recover("alice", PIN))
        before = await record_of(fleet, "alice")
        subject = subjects.vault(fleet.fleet, RECOVER_FINISH)
        for _ in range(6):
            answer = await client_nc.request(subject, sent, timeout=5)
            assert refusal(fleet, RECOVER_FINISH, sent, answer.data) in (
                "replayed",
                "replayed_request",
            )
        for member in fleet.running:
            assert await replayed(fleet, RECOVER_FINISH, sent, member) == "replayed_request"
        after = await record_of(fleet, "alice")
        assert (after.attempts, after.cleared) == (before.attempts, before.cleared) == (1, 1)


async def test_a_request_sealed_for_another_envelope_is_refused(tmp_path, nats_server, client_nc):
    async with running_fleet(tmp_path, nats_server.url) as fleet:
        ids = IdSource()
        start_id = ids.new()
        plain = RecoverStart(
            id=start_id,
            user="alice",
            answer_key=os.urandom(32),
            authorization=fleet.authorize("alice", "recover", start_id),
            credential_request=bytes(96),
        )
        kem = fleet.local.vault_keys.kem
        sealed = seal_request(kem_public_key(kem.public_key), fleet.fleet, RECOVER_START, plain)
        body = VaultRequest(key=key_id(kem.alg, kem.public_key), sealed=sealed)
        env = Outbox("mallory").envelope(body)  # under an id of its own
        with pytest.raises(RequestRejected) as refused:
            await request(
                client_nc, subjects.vault(fleet.fleet, RECOVER_START), env, Gate(TrustStore()), None
            )
        assert refused.value.detail["kind"] == "unreadable_request"
        assert "another envelope" in str(refused.value)
        assert answered(fleet, "alice") == []


def counted(fleet, name, members=None, **labels):
    """The sum over ``members`` (default: the running ones) of ``fleet`` of the Prometheus
    sample ``name`` with ``labels``, summed over the labels not given."""
    members = fleet.running if members is None else members
    total = 0.0
    for metric in METRICS.collect():
        for sample in metric.samples:
            wanted = {"fleet": fleet.fleet, **labels}
            if sample.name != name or sample.labels.get("member") not in members:
                continue
            if all(sample.labels.get(k) == v for k, v in wanted.items()):
                total += sample.value
    return total


async def test_an_unreadable_request_is_refused_in_the_clear_and_counted(
    tmp_path, nats_server, client_nc
):
    async with running_fleet(tmp_path, nats_server.url) as fleet:
        kem = fleet.local.vault_keys.kem
        kid = key_id(kem.alg, kem.public_key)
        subject = subjects.vault(fleet.fleet, RECOVER_START)
        for body, kind in (
            (VaultRequest(key=kid, sealed=b"not hpke at all"), "unreadable_request"),
            (VaultRequest(key="another-key", sealed=b"sealed to it"), "unknown_vault_key"),
        ):
            env = Outbox("mallory").envelope(body)
            with pytest.raises(RequestRejected) as refused:
                await request(client_nc, subject, env, Gate(TrustStore()), None)
            assert refused.value.detail["kind"] == kind
        rejected = "hsmfleet_vault_requests_rejected_total"
        assert counted(fleet, rejected, kind="unreadable_request") == 1
        assert counted(fleet, rejected, kind="unknown_vault_key") == 1
        ran = "hsmfleet_vault_operations_total"
        assert counted(fleet, ran) == 0, "neither ran"

        client = fleet.client(client_nc)
        await client.register("alice", PIN, SECRET)
        with pytest.raises(WrongGuess):
            await client.recover("alice", b"0000")
        await client.recover("alice", PIN)
        assert counted(fleet, ran, op=REGISTER_START, outcome="ok") == 1
        assert counted(fleet, ran, op=REGISTER, outcome="ok") == 1
        assert counted(fleet, ran, op=RECOVER_START, outcome="ok") == 2, "a wrong guess too"
        assert counted(fleet, ran, op=RECOVER_FINISH, outcome="ok") == 1
        assert counted(fleet, ran) == 5
        assert counted(fleet, rejected) == 2


def _authorities(fleet):
    """Account authorizations that must not pass, by name, with the kind each is refused as."""
    local = fleet.local

    def unsigned(user, op, req):
        return replace(fleet.authorize(user, op, req), sig=b"")

    def forged(user, op, req):
        authority = AccountAuthority(Ed25519Signer.generate())
        return authority.authorize(fleet.fleet, user, op, req, now_ms())

    def another_user(user, op, req):
        return local.authorize("mallory", op, req, now_ms())

    def another_fleet(user, op, req):
        return AccountAuthority(local.authority).authorize("elsewhere", user, op, req, now_ms())

    def another_request(user, op, req):
        return local.authorize(user, op, IdSource().new(), now_ms())

    def another_operation(user, op, req):
        return local.authorize(user, "recover" if op != "recover" else "register", req, now_ms())

    def expired(user, op, req):
        return local.authorize(user, op, req, now_ms() - 10 * 60 * 1000)

    return {
        "unsigned": (unsigned, "unauthorized"),
        "forged": (forged, "unauthorized"),
        "another user's": (another_user, "unauthorized"),
        "another fleet's": (another_fleet, "unauthorized"),
        "another request's": (another_request, "unauthorized"),
        "another operation's": (another_operation, "unauthorized"),
        "expired": (expired, "authorization_expired"),
    }


async def test_requests_without_a_valid_authorization_are_refused_and_spend_nothing(
    tmp_path, nats_server, client_nc
):
    async with running_fleet(tmp_path, nats_server.url) as fleet:
        await fleet.client(client_nc).register("alice", PIN, SECRET)
        for name, (authorize, kind) in _authorities(fleet).items():
            client = replace_authorize(fleet.client(client_nc), authorize)
            for call in (
                client.recover("alice", PIN),
                client.register("bob", PIN, SECRET),
                client.register("alice", b"5678", b"taken over", replace_record=True),
            ):
                with pytest.raises(VaultError) as refused:
                    await call
                assert refused.value.kind == kind, name
        record = await record_of(fleet, "alice")
        assert (record.generation, record.attempts, record.replaced) == (1, 0, 0)
        assert await record_of(fleet, "bob") is None
        assert answered(fleet, "alice") == []
        recovered = await fleet.client(client_nc).recover("alice", PIN)
        assert (recovered.secret, recovered.attempt) == (SECRET, 1)


def replace_authorize(client, authorize):
    client.authorize = authorize
    return client


async def test_without_a_majority_operations_fail_clearly(tmp_path, nats_server, client_nc):
    async with running_fleet(tmp_path, nats_server.url) as fleet:
        client = fleet.client(client_nc, timeout=10)
        await client.register("alice", PIN, SECRET)
        await fleet.stop("m2")
        await fleet.stop("m3")
        with pytest.raises(VaultUnavailable):
            await client.register("dave", PIN, SECRET)
        with pytest.raises(VaultUnavailable):
            await client.recover("alice", b"0000")
        assert answered(fleet, "alice") == [], "no guess was evaluated without a quorum"


def test_the_client_needs_nothing_from_node():
    code = (
        "import sys, transport.vault_client; "
        "assert not [m for m in sys.modules if m == 'node' or m.startswith('node.')]"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


async def test_a_member_with_too_many_requests_in_progress_refuses_more(
    tmp_path, nats_server, client_nc
):
    async with running_fleet(tmp_path, nats_server.url) as fleet:
        for member in fleet.running.values():
            member.vault.max_pending = 0
        with pytest.raises(VaultBusy):  # refused before it is opened, typed all the same
            await fleet.client(client_nc).register("alice", PIN, SECRET)
        assert sum(m.vault.rejects["vault_busy"] for m in fleet.running.values()) == 1
        for member in fleet.running.values():
            member.vault.max_pending = 10
        await fleet.client(client_nc).register("alice", PIN, SECRET)


async def test_a_member_stopped_mid_request_still_answers_what_it_took(
    tmp_path, nats_server, client_nc
):
    async with running_fleet(tmp_path, nats_server.url) as fleet:
        client = fleet.client(client_nc, timeout=20)
        users = [f"user-{i}" for i in range(24)]
        calls = [asyncio.create_task(client.register(u, PIN, SECRET)) for u in users]
        stopping = fleet["m1"].vault
        # Checked on every turn of the loop: all the requests may be answered within one poll.
        async with asyncio.timeout(10):
            while stopping.in_progress == 0:  # noqa: ASYNC110
                await asyncio.sleep(0)
        await fleet.stop("m1")  # m2 and m3 remain a majority
        assert await asyncio.gather(*calls) == [1] * len(users)
        assert stopping.in_progress == 0
        for user in users:
            assert (await client.recover(user, PIN)).secret == SECRET


def after_each_commit(fleet, then):
    """Have ``then(member, transit, count)`` run after each commit of every member's vault
    proposer, whether a record change (``transit``) or the read that renews a commit proof
    (``count``: commits so far), before the vault service sees it: a real reconfiguration or a
    real change, at an exact point. ``transit`` is the member's own, unhooked. Returns what
    takes the hooks off."""
    count = 0
    proposers = [member.vault.proposer for member in fleet.running.values()]

    def unhook():
        for proposer in proposers:
            del proposer.transit, proposer.read

    for member in fleet.running.values():
        proposer = member.vault.proposer
        transit, read = proposer.transit, proposer.read

        async def hooked(committing, *args, member=member, transit=transit, **options):
            nonlocal count
            committed = await committing(*args, **options)
            count += 1
            await then(member, transit, count)
            return committed

        proposer.transit = lambda *a, _t=transit, _h=hooked, **o: _h(_t, *a, **o)
        proposer.read = lambda *a, _r=read, _h=hooked, **o: _h(_r, *a, **o)
    return unhook


def reconfigure(nc, fleet, member):
    newer = member.replica.current().next()
    return apply_steps(nc, fleet.local.operator, [Step(newer)])


async def test_a_recovery_whose_group_keeps_changing_is_proven_by_the_configurations_it_ran_in(
    tmp_path, nats_server, client_nc
):
    """The group moves to a new configuration after every commit: each proof is then of an
    earlier configuration, which every member keeps, so the login is answered and finished."""
    async with running_fleet(tmp_path, nats_server.url) as fleet:
        client = fleet.client(client_nc)
        await client.register("alice", PIN, SECRET)

        async def each(member, transit, count):
            await reconfigure(client_nc, fleet, member)

        after_each_commit(fleet, each)
        assert (await client.recover("alice", PIN)).secret == SECRET
        assert min(m.replica.current().epoch for m in fleet.running.values()) >= 3
        assert answered(fleet, "alice") == [1]


@pytest.mark.parametrize("interference", ["once", "twice"])
async def test_a_member_that_kept_no_earlier_configuration_proves_the_attempt_again(
    tmp_path, nats_server, client_nc, monkeypatch, interference
):
    """Without the configuration a proof was made in, the evaluator has the value read (written
    back) under the current one, which proves it again."""
    monkeypatch.setattr(replica_module, "MAX_EARLIER", 0)
    async with running_fleet(tmp_path, nats_server.url) as fleet:
        client = fleet.client(client_nc)
        await client.register("alice", PIN, SECRET)

        async def once(member, transit, count):
            if count == 1 or (interference == "twice" and count == 2):
                await reconfigure(client_nc, fleet, member)

        after_each_commit(fleet, once)
        assert (await client.recover("alice", PIN)).secret == SECRET
        assert answered(fleet, "alice") == [1]


@pytest.mark.parametrize(
    ("interference", "says", "epoch", "evaluated"),
    [
        # the attempt and two renewals, each followed by a new configuration
        ("keeps changing", "kept changing", 4, []),
        # one new configuration, and another guess committed before the renewal read
        ("overtaken", "overtook", 2, [2]),
    ],
)
async def test_a_recovery_that_cannot_be_proven_again_spends_the_attempt_and_says_so(
    tmp_path, nats_server, client_nc, monkeypatch, interference, says, epoch, evaluated
):
    monkeypatch.setattr(replica_module, "MAX_EARLIER", 0)  # as above
    async with running_fleet(tmp_path, nats_server.url) as fleet:
        client = fleet.client(client_nc)
        other = fleet.client(client_nc)
        await client.register("alice", PIN, SECRET)

        async def interfere(member, transit, count):
            if interference == "keeps changing" or count == 1:
                await reconfigure(client_nc, fleet, member)
            if interference == "overtaken" and count == 1:
                with pytest.raises(WrongGuess):
                    await other.recover("alice", b"0000")

        unhook = after_each_commit(fleet, interfere)
        with pytest.raises(VaultUnavailable, match=rf"{says}.*attempt_spent=True"):
            await client.recover("alice", PIN)
        unhook()
        assert {m.replica.current().epoch for m in fleet.running.values()} == {epoch}
        assert answered(fleet, "alice") == evaluated, "the attempt itself was never looked at"
        assert (await record_of(fleet, "alice")).attempts == 1 + len(evaluated)


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


def announced(fleet, key):
    """Whether every member holds record ``key``'s latest value (those the accept did not
    reach took it from the commit notice) with the proof of its commit as justification."""
    slots = [m.replica.store.load([key])[key] for m in fleet.running.values()]
    if len({slot.accepted for slot in slots}) != 1:
        return False
    for slot in slots:
        if slot.justification is None:
            return False
        proof = Justification.decode(slot.justification)
        if (proof.witness, proof.pred, Ballot(proof.ballot, proof.by)) != (
            None,
            slot.value,
            slot.accepted,
        ):
            return False
    return True


async def test_a_committed_record_is_proven_wherever_it_is_held(tmp_path, nats_server, client_nc):
    """Once a change commits its proposer tells every member: each holds the value (a member
    the thrifty accept skipped takes it from the notice) with the quorum's votes as its
    justification. Any member's proposer then takes them as the proof of the current value and
    changes the record with no write-back first (and the value stays provable after the key
    epoch of its request is destroyed)."""
    async with running_fleet(tmp_path, nats_server.url) as fleet:
        await fleet.client(client_nc).register("alice", PIN, SECRET)
        key = records.record_key("alice")
        for member in fleet.running.values():
            for _ in range(200):
                if announced(fleet, key):
                    break
                await asyncio.sleep(0.02)
            else:
                pytest.fail("the commit was not announced to every member")
            proposer = member.replica.proposer
            await proposer.transit(key, lambda value, _proof: (value, None))
            assert proposer.written_back == 0, member.settings.member
