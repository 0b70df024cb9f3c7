"""A retiring fleet's members refuse new registrations with their own error, while recoveries
(and the guesses they spend) go on: users recover their backup and re-register elsewhere."""

from __future__ import annotations

import nats
import pytest

from messages.vault import RegistrationsClosed, WrongGuess
from tests.faults.fleets import running_fleet

SECRET = b"backup key of alice"


async def test_a_draining_fleet_refuses_registrations_and_still_recovers(tmp_path, nats_server):
    nc = await nats.connect(nats_server.url)
    try:
        async with running_fleet(tmp_path, nats_server.url) as fleet:
            client = fleet.client(nc)
            await client.register("alice", b"1234", SECRET)
            for member in fleet.running.values():
                member.vault.drain()
            with pytest.raises(RegistrationsClosed):
                await client.register("bob", b"1234", SECRET)
            with pytest.raises(RegistrationsClosed):
                await client.register("alice", b"9999", b"new", current_pin=b"1234")
            with pytest.raises(WrongGuess):
                await client.recover("alice", b"0000")
            assert (await client.recover("alice", b"1234")).secret == SECRET
    finally:
        await nc.close()
