"""Faults: members as processes are killed, paused, delayed and cut off while clients register
and guess; every user's history must be linearizable, no user gets more than the limit of
guesses evaluated, no attempt is answered twice, and no client learns of a wrong guess that no
HSM evaluated. Losing a majority makes operations fail clearly, and commits nothing."""

import asyncio
import random
import time

import pytest

from messages.vault import NoRecord, VaultUnavailable
from tests.faults.harness import (
    Nemesis,
    ProcessFleet,
    Recorder,
    attacker,
    client_connection,
    owner,
)
from tests.faults.linearizability import UNKNOWN, check
from tests.faults.models import VaultUser
from transport.bus import RequestTimeout

pytestmark = pytest.mark.faults

LIMIT = 10
DURATION = 12.0


@pytest.mark.parametrize(("size", "most", "seed"), [(3, 1, 3), (5, 2, 5)])
async def test_histories_stay_linearizable_and_guesses_bounded_under_faults(
    tmp_path, nats_server, size, most, seed
):
    fleet = ProcessFleet(tmp_path, nats_server.url, size, limit=LIMIT)
    recorder = Recorder()
    owners = [f"owner{i}" for i in range(4)]
    attacked = [f"target{i}" for i in range(4)]
    async with client_connection(nats_server.url) as nc:
        try:
            await fleet.start(nc)
            vaults = [fleet.client(nc) for _ in range(len(owners) + 6)]
            for user in attacked:
                assert await recorder.register(vaults[0], user, 99, 1) == "ok"
            nemesis = Nemesis(fleet, random.Random(seed), most)
            until = time.monotonic() + DURATION
            finals = await asyncio.gather(
                *(owner(recorder, vaults[i], u, i, until) for i, u in enumerate(owners)),
                *(
                    attacker(recorder, vaults[len(owners) + j], attacked, 100 + j, until)
                    for j in range(6)
                ),
                nemesis.run(DURATION),
            )
            await fleet.wait_serving(nc)
            for i, user in enumerate(owners):
                latest = await recorder.recover(vaults[i], user, i, finals[i])
                assert latest is not UNKNOWN, f"{user}: {recorder.last_error[user]}"
        finally:
            await fleet.stop()

    print("faults:", nemesis.applied)  # shown when the test fails
    print("errors:", recorder.errors)
    assert {kind for kind, _ in nemesis.applied} == set(Nemesis.KINDS)
    for user, history in recorder.histories.items():
        result = check(VaultUser(LIMIT), history)
        assert result.ok, f"history of {user} is not linearizable: {history}"
    for user in attacked:
        # Nobody ever proves an attacked user's PIN: attempts are never cleared, so every
        # attempt a journal answered is still listed, numbered as the record counted it.
        evaluated = fleet.answered(user)
        assert len(evaluated) == len(set(evaluated)), f"{user}: an attempt answered twice"
        assert set(evaluated) <= set(range(1, LIMIT + 1)), f"{user}: {evaluated} evaluated"
        wrong = [op for op in recorder.histories[user] if _is_wrong_guess(op.output)]
        assert len(wrong) <= len(evaluated), f"{user}: a wrong guess nobody evaluated"
    for user in owners:
        evaluated = fleet.answered(user)
        assert len(evaluated) == len(set(evaluated)), f"{user}: an attempt answered twice"


def _is_wrong_guess(output) -> bool:
    return isinstance(output, tuple) and output[0] == "wrong_guess"


async def test_losing_a_majority_fails_clearly_and_commits_nothing(tmp_path, nats_server):
    fleet = ProcessFleet(tmp_path, nats_server.url, 3, limit=LIMIT)
    async with client_connection(nats_server.url) as nc:
        try:
            await fleet.start(nc)
            vault = fleet.client(nc, timeout=6.0)
            await vault.register("alice", b"1", b"s")
            fleet.kill("m2")
            fleet.kill("m3")
            # Until the server notices the dead connections, it may still hand a request to
            # a dead member's queue subscription (the client would time out).
            await asyncio.sleep(0.5)
            for user in ("bob", "carol"):
                with pytest.raises(VaultUnavailable):
                    await vault.register(user, b"1", b"s")
            with pytest.raises(VaultUnavailable):
                await vault.recover("alice", b"wrong")
            fleet.restart("m2")
            fleet.restart("m3")
            await fleet.wait_serving(nc)
            for user in ("bob", "carol"):
                with pytest.raises(NoRecord):
                    await vault.recover(user, b"1")
            assert (await vault.recover("alice", b"1")).secret == b"s"

            # Paused, not dead: a request that reaches a hung member times out; one that
            # reaches the live member fails as unavailable and never commits.
            fleet.pause("m2")
            fleet.pause("m3")

            async def register(user: str) -> str:
                try:
                    await vault.register(user, b"1", b"s")
                except VaultUnavailable:
                    return "unavailable"
                except RequestTimeout:
                    return "timeout"
                return "ok"

            users = [f"dave{i}" for i in range(6)]  # at once: each may wait out a timeout
            outcomes = dict(zip(users, await asyncio.gather(*map(register, users)), strict=True))
            fleet.resume("m2")
            fleet.resume("m3")
            await fleet.wait_serving(nc)
            assert "ok" not in outcomes.values()
            for user, outcome in outcomes.items():
                if outcome == "unavailable":
                    with pytest.raises(NoRecord):
                        await vault.recover(user, b"1")
        finally:
            await fleet.stop()
    assert fleet.answered("alice") == [1], "only the guess made with a quorum was evaluated"
