"""Quorum replication on a real nats-server: members in this process, each on its own connection."""

import asyncio

import nats
import pytest

from messages import Ed25519Signer, subjects
from messages.commit_proof import verify_proof
from messages.envelope import Envelope
from messages.membership import plan_join, plan_leave
from messages.quorum import (
    PREPARE,
    OutcomeUnknown,
    Prepare,
    Promise,
    QuorumUnavailable,
)
from messages.schema import REGISTRY
from node.quorum.member import VOTE_KEY, open_hsm
from node.quorum.reconfigure import apply_steps
from node.quorum.replica import STORE_FILE, StateLost
from tests.faults.fleets import running_fleet
from transport.bus import headers_for
from transport.outbox import Outbox


def put(value: bytes):
    return lambda _old: value


def increment(old: bytes | None) -> bytes:
    return str(int(old or b"0") + 1).encode()


async def test_a_write_commits_with_a_signed_quorum_proof(tmp_path, nats_server):
    async with running_fleet(tmp_path, nats_server.url) as fleet:
        commit = await fleet["m1"].replica.proposer.change("k", put(b"hello"))
        assert commit.value == b"hello"
        membership = fleet["m1"].replica.current()
        verify_proof(commit.proof, membership, b"hello")
        assert len(commit.proof.votes) >= 2
        read = await fleet["m3"].replica.proposer.read("k")
        assert read.value == b"hello"
        assert read.ballot > commit.ballot


async def test_concurrent_writers_on_one_record_lose_no_update(tmp_path, nats_server):
    async with running_fleet(tmp_path, nats_server.url) as fleet:
        outcomes = {"ok": 0, "unknown": 0}

        async def writer(member: str) -> None:
            for _ in range(15):
                try:
                    await fleet[member].replica.proposer.change("counter", increment)
                    outcomes["ok"] += 1
                except OutcomeUnknown:
                    outcomes["unknown"] += 1

        await asyncio.gather(*(writer(m) for m in ("m1", "m2", "m3")))
        final = int((await fleet["m2"].replica.proposer.read("counter")).value)
        assert outcomes["ok"] <= final <= outcomes["ok"] + outcomes["unknown"]
        assert outcomes["ok"] >= 30


async def test_concurrent_writes_share_rounds(tmp_path, nats_server):
    async with running_fleet(tmp_path, nats_server.url) as fleet:
        proposer = fleet["m1"].replica.proposer
        before = proposer.phases
        commits = await asyncio.gather(
            *(proposer.change(f"user-{i}", put(b"%d" % i)) for i in range(300))
        )
        assert [c.value for c in commits] == [b"%d" % i for i in range(300)]
        assert proposer.phases - before <= 300 * 2 // 4, "group commit batches the rounds"
        second = await asyncio.gather(
            *(proposer.change(f"user-{i}", increment) for i in range(0, 300, 30))
        )
        assert [c.value for c in second] == [b"%d" % (i + 1) for i in range(0, 300, 30)]


async def test_losing_a_majority_fails_writes_and_commits_nothing(tmp_path, nats_server):
    async with running_fleet(tmp_path, nats_server.url) as fleet:
        proposer = fleet["m1"].replica.proposer
        await proposer.change("k", put(b"before"))
        await proposer.change("k2", put(b"kept"))
        await fleet.stop("m2")
        await fleet.stop("m3")
        # m1 still holds a promise for "k" from its last write, so it sends the value for
        # acceptance at once: only its own acceptor takes it, and the outcome is unknown.
        with pytest.raises(OutcomeUnknown):
            await proposer.change("k", put(b"maybe"))
        # A read writes back what it found, which changes nothing: it is never left unknown,
        # it is tried again and then fails as having written nothing.
        with pytest.raises(QuorumUnavailable):
            await proposer.read("k2")
        with pytest.raises(QuorumUnavailable, match="nothing was written"):
            await proposer.change("fresh", put(b"lost"))
        await fleet.start("m2")
        await fleet.start("m3")
        assert (await fleet["m2"].replica.proposer.read("fresh")).value is None
        # An unknown outcome is settled by the next quorum that reads the record.
        settled = (await fleet["m2"].replica.proposer.read("k")).value
        assert settled in (b"before", b"maybe")
        await fleet.stop("m1")
        assert (await fleet["m3"].replica.proposer.read("k")).value == settled


async def test_forged_and_replayed_votes_never_make_a_majority(tmp_path, nats_server):
    async with running_fleet(tmp_path, nats_server.url) as fleet:
        spy = await nats.connect(nats_server.url)
        captured: list[bytes] = []

        async def capture(msg):
            env = Envelope.decode(msg.data)
            if env.type == Promise.TYPE and env.source == "m3":
                captured.append(msg.data)

        tap = await spy.subscribe("_INBOX.>", cb=capture)
        fleet["m2"].replica.proposer.thrifty = False  # so that m3 is asked and answers too
        await fleet["m2"].replica.proposer.change("k", put(b"genuine"))
        await tap.unsubscribe()
        assert captured, "the spy saw m3's genuine promise to m2"

        await fleet.stop("m2")
        await fleet.stop("m3")
        m3_signer = open_hsm(
            fleet.local.state_dir("m3"), fleet.local.state_dir("m3") / "hsm.key"
        ).signer(VOTE_KEY)
        m3 = Outbox("m3", m3_signer)
        outsider = Outbox("m3", Ed25519Signer.generate())

        async def forge(msg):
            request = Envelope.decode(msg.data)
            prepare = REGISTRY.parse(request)
            assert isinstance(prepare, Prepare)
            answer = Promise(
                fleet=prepare.fleet,
                epoch=prepare.epoch,
                proposer=request.source,
                keys=prepare.keys,
                ballots=prepare.ballots,
                accepteds=(0,) * len(prepare.keys),
                accepted_bys=("",) * len(prepare.keys),
                values=(None,) * len(prepare.keys),
                justifications=(None,) * len(prepare.keys),
            )
            unknown_key = outsider.envelope(answer, causation=request.id)
            real = m3.envelope(answer, causation=request.id)
            flipped = bytearray(real.sig.value)
            flipped[0] ^= 1
            bad_sig = real.with_signature(
                type(real.sig)(real.sig.kid, real.sig.alg, bytes(flipped))
            )
            for forged in (unknown_key.encode(), bad_sig.encode(), captured[0], captured[0]):
                await spy.publish(msg.reply, forged, headers=headers_for(request))

        forger = await spy.subscribe(subjects.quorum(fleet.fleet, PREPARE), cb=forge)
        proposer = fleet["m1"].replica.proposer
        try:
            with pytest.raises(QuorumUnavailable):
                await proposer.change("k", put(b"forged"))
        finally:
            await forger.unsubscribe()
            await spy.close()
        assert proposer.rejected_votes["vote_non_member"] >= 1
        assert proposer.rejected_votes["vote_bad_signature"] >= 1
        assert proposer.rejected_votes["vote_old_ballot"] >= 1
        assert proposer.rejected_votes["vote_replayed"] >= 1
        await fleet.start("m2")
        assert (await fleet["m2"].replica.proposer.read("k")).value == b"genuine"


async def test_acceptors_ignore_requests_from_non_members(tmp_path, nats_server):
    async with running_fleet(tmp_path, nats_server.url) as fleet:
        stranger = Outbox("m9", Ed25519Signer.generate())
        impostor = Outbox("m2", Ed25519Signer.generate())
        nc = await nats.connect(nats_server.url)
        try:
            for outbox in (stranger, impostor):
                body = Prepare(fleet=fleet.fleet, epoch=1, keys=("k",), ballots=(99,))
                with pytest.raises(nats.errors.TimeoutError):
                    await nc.request(
                        subjects.quorum(fleet.fleet, PREPARE),
                        outbox.envelope(body).encode(),
                        timeout=0.3,
                    )
        finally:
            await nc.close()
        rejects = fleet["m1"].replica.acceptor.rejects
        assert rejects["unknown_signer"] == 2
        await fleet["m1"].replica.proposer.change("k", put(b"still fine"))


async def test_a_member_that_was_down_catches_up_before_it_votes(tmp_path, nats_server):
    async with running_fleet(tmp_path, nats_server.url) as fleet:
        proposer = fleet["m1"].replica.proposer
        await fleet.stop("m3")
        await asyncio.gather(*(proposer.change(f"r{i}", put(b"v%d" % i)) for i in range(40)))
        await fleet.start("m3")
        store = fleet["m3"].replica.store
        values = store.load([f"r{i}" for i in range(40)])
        assert all(values[f"r{i}"].value == b"v%d" % i for i in range(40))
        await fleet.stop("m1")
        reads = await asyncio.gather(
            *(fleet["m3"].replica.proposer.read(f"r{i}") for i in range(0, 40, 7))
        )
        assert [r.value for r in reads] == [b"v%d" % i for i in range(0, 40, 7)]


async def test_a_member_that_lost_its_state_refuses_to_vote(tmp_path, nats_server):
    async with running_fleet(tmp_path, nats_server.url) as fleet:
        await fleet.stop("m3")
        (fleet.local.state_dir("m3") / STORE_FILE).unlink()
        with pytest.raises(StateLost):
            await fleet.start("m3")


async def test_members_join_and_leave_without_losing_values(tmp_path, nats_server):
    async with running_fleet(tmp_path, nats_server.url) as fleet:
        proposer = fleet["m1"].replica.proposer
        await asyncio.gather(*(proposer.change(f"j{i}", put(b"%d" % i)) for i in range(20)))
        nc = await nats.connect(nats_server.url)
        operator = fleet.local.operator
        try:
            membership = fleet["m1"].replica.current()
            for new in ("m4", "m5"):
                key = fleet.local.prepare_join(new)
                await fleet.start(new, new=True, wait=False)
                membership = await apply_steps(nc, operator, plan_join(membership, new, key))
                await fleet[new].replica.wait_voting(5)
            assert membership.voters == {"m1", "m2", "m3", "m4", "m5"}
            assert membership.prepare_quorum == membership.accept_quorum == 3
            for new in ("m4", "m5"):
                held = fleet[new].replica.store.load([f"j{i}" for i in range(20)])
                assert all(held[f"j{i}"].value == b"%d" % i for i in range(20))
            # The original members but one go away; the joiners carry the values.
            await fleet.stop("m1")
            await fleet.stop("m2")
            reads = await asyncio.gather(
                *(fleet["m4"].replica.proposer.read(f"j{i}") for i in range(20))
            )
            assert [r.value for r in reads] == [b"%d" % i for i in range(20)]
            await fleet.start("m1")
            await fleet.start("m2")
            membership = await apply_steps(nc, operator, plan_leave(membership, "m5"))
            membership = await apply_steps(nc, operator, plan_leave(membership, "m4"))
            assert membership.voters == {"m1", "m2", "m3"}
            assert fleet["m5"].replica.voting is False
            await fleet.stop("m4")
            await fleet.stop("m5")
            await fleet.stop("m3")
            assert (await proposer_of(fleet, "m2").read("j7")).value == b"7"
        finally:
            await nc.close()


def proposer_of(fleet, member):
    return fleet[member].replica.proposer


async def test_configuration_changes_need_the_operator_and_a_newer_epoch(tmp_path, nats_server):
    from transport.bus import RequestRejected, request
    from transport.gate import Gate

    async with running_fleet(tmp_path, nats_server.url) as fleet:
        current = fleet["m1"].replica.current()
        nc = await nats.connect(nats_server.url)
        subject = subjects.quorum(fleet.fleet, "config")
        gate = Gate(current.trust())
        try:
            forged = Outbox("operator", Ed25519Signer.generate())
            with pytest.raises(RequestRejected, match="not trusted"):
                await request(
                    nc, subject, forged.envelope(current.next().to_config()), gate, "member"
                )
            operator = Outbox("operator", fleet.local.operator)
            newer = current.next(prepare_quorum=3)
            await request(nc, subject, operator.envelope(newer.to_config()), gate, "member")
            assert fleet["m1"].replica.current() == newer
            with pytest.raises(RequestRejected, match="older"):
                await request(nc, subject, operator.envelope(current.to_config()), gate, "member")
            clash = current.next(accept_quorum=3)
            with pytest.raises(RequestRejected, match="different configuration"):
                await request(nc, subject, operator.envelope(clash.to_config()), gate, "member")
        finally:
            await nc.close()
        await fleet.stop("m1")
        await fleet.start("m1", wait=False)
        assert fleet["m1"].replica.current() == newer, "the configuration is kept on disk"


async def test_stopping_a_proposer_fails_its_changes_instead_of_hanging(tmp_path, nats_server):
    async with running_fleet(tmp_path, nats_server.url) as fleet:
        await fleet.stop("m2")
        await fleet.stop("m3")
        pending = asyncio.create_task(fleet["m1"].replica.proposer.change("k", put(b"x")))
        await asyncio.sleep(0.1)
        await fleet.stop("m1")
        with pytest.raises((OutcomeUnknown, QuorumUnavailable)):
            await asyncio.wait_for(pending, 5)


async def test_requests_of_an_older_configuration_are_refused(tmp_path, nats_server):
    from messages.quorum import SNAPSHOT, SnapshotRequest
    from transport.bus import RequestRejected, request
    from transport.gate import Gate

    async with running_fleet(tmp_path, nats_server.url) as fleet:
        await fleet.stop("m3")
        m3_signer = open_hsm(
            fleet.local.state_dir("m3"), fleet.local.state_dir("m3") / "hsm.key"
        ).signer(VOTE_KEY)
        m3 = Outbox("m3", m3_signer)
        current = fleet["m1"].replica.current()
        newer = current.next()
        gate = Gate(current.trust())
        nc = await nats.connect(nats_server.url)
        try:
            operator = Outbox("operator", fleet.local.operator)
            config = subjects.quorum(fleet.fleet, "config")
            await request(nc, config, operator.envelope(newer.to_config()), gate, "member")
            for _ in range(100):  # the first answer came; the other member may still apply it
                if {fleet[m].replica.current().epoch for m in ("m1", "m2")} == {2}:
                    break
                await asyncio.sleep(0.02)
            assert {fleet[m].replica.current().epoch for m in ("m1", "m2")} == {2}
            prepare = subjects.quorum(fleet.fleet, PREPARE)
            stale = Prepare(fleet=fleet.fleet, epoch=1, keys=("k",), ballots=(50,))
            with pytest.raises(nats.errors.TimeoutError):
                await nc.request(prepare, m3.envelope(stale).encode(), timeout=0.3)
            assert fleet["m1"].replica.acceptor.rejects["stale_epoch"] == 1
            fresh = Prepare(fleet=fleet.fleet, epoch=2, keys=("k",), ballots=(51,))
            answer = await nc.request(prepare, m3.envelope(fresh).encode(), timeout=2)
            promise = REGISTRY.parse(Envelope.decode(answer.data))
            assert isinstance(promise, Promise) and promise.epoch == 2 and not promise.refusals
            ahead = SnapshotRequest(fleet=fleet.fleet, epoch=3, member="m1", after="", limit=5)
            with pytest.raises(RequestRejected, match="older configuration"):
                await request(
                    nc, subjects.quorum(fleet.fleet, SNAPSHOT), m3.envelope(ahead), gate, "member"
                )
        finally:
            await nc.close()
