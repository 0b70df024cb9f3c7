"""A running cosigner's control socket: the key rotates on request; anything else is refused
and changes nothing; a socket left by a dead process does not stand in the way."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import stat

import pytest

from cosigner.config import ConfigError
from cosigner.control import SOCKET, Control, ControlOutcomeUnknown, ControlRefused, rotate_running
from cosigner.engine import Cosigner
from cosigner.testbed import Testbed


@pytest.fixture
async def served(tmp_path_factory):
    """Cosigner A of a testbed with its control socket open."""
    bed = Testbed.create(tmp_path_factory.mktemp("ctl"))
    a = bed.cosigners[0]
    control = Control(a, bed.directory / a.id)
    assert await control.start()
    yield bed, a, control
    await control.stop()
    await bed.close()


@contextlib.asynccontextmanager
async def listening(state, handle):
    """Something on the control socket of ``state`` that is not a working cosigner."""
    server = await asyncio.start_unix_server(handle, path=state / SOCKET)
    try:
        yield
    finally:
        server.close()


async def ask(control: Control, line: bytes) -> bytes:
    reader, writer = await asyncio.open_unix_connection(control.path)
    writer.write(line)
    await writer.drain()
    answer = await reader.readline()
    writer.close()
    return answer


async def test_the_running_cosigner_rotates_its_key_on_request(served):
    bed, a, control = served
    old = a.notary.signer.public_key
    assert stat.S_IMODE(os.stat(control.path).st_mode) & 0o077 == 0, "owner-only"
    rotation = await rotate_running(bed.directory / a.id)
    assert rotation is not None and rotation.version == 2
    assert rotation.old.public_key == old
    assert a.notary.signer.public_key == rotation.new.public_key != old
    assert a.notary.size == 1  # the statement is in its own log


@pytest.mark.parametrize(
    "line",
    [b'{"command": "destroy-log"}\n', b"[]\n", b"not json\n", b"x" * 10_000 + b"\n"],
)
async def test_anything_but_a_known_command_is_refused_and_changes_nothing(served, line):
    _, a, control = served
    key, size = a.notary.signer.public_key, a.notary.size
    answer = await ask(control, line)
    assert b'"ok":false' in answer and b'"error":' in answer
    assert (a.notary.signer.public_key, a.notary.size) == (key, size)


async def test_without_a_listening_cosigner_the_command_finds_none(tmp_path_factory):
    bed = Testbed.create(tmp_path_factory.mktemp("ctl"))
    state = bed.directory / bed.cosigners[0].id
    try:
        assert await rotate_running(state) is None
        (state / SOCKET).touch()  # left by a process that died: nothing listens
        assert await rotate_running(state) is None
        assert bed.cosigners[0].notary.size == 0
    finally:
        await bed.close()


async def test_a_stale_socket_is_replaced_when_the_cosigner_starts(tmp_path_factory):
    bed = Testbed.create(tmp_path_factory.mktemp("ctl"))
    state = bed.directory / bed.cosigners[0].id
    await bed.close()
    (state / SOCKET).write_bytes(b"")
    cosigner = Cosigner.open(state, bed.clock)
    control = Control(cosigner, state)
    try:
        assert await control.start()
        assert (await rotate_running(state)).version == 2
    finally:
        await control.stop()
        await cosigner.close()
    assert not (state / SOCKET).exists()


async def test_a_refusal_of_the_running_cosigner_reaches_the_asker(served, monkeypatch):
    bed, a, _ = served

    async def refuse() -> None:
        raise ConfigError("this cosigner has no state directory to keep a new key in")

    monkeypatch.setattr(a, "rotate_key", refuse)
    with pytest.raises(ControlRefused, match="no state directory") as refused:
        await rotate_running(bed.directory / a.id)
    assert refused.value.detail == {"kind": "cosigner_config"}


async def test_a_running_cosigner_that_never_answers_is_a_typed_error(
    tmp_path_factory, monkeypatch
):
    state = tmp_path_factory.mktemp("ctl")

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # takes the request, never answers

    monkeypatch.setattr("cosigner.control.ANSWER_S", 0.2)
    async with listening(state, silent):
        with pytest.raises(ControlOutcomeUnknown, match="TimeoutError"):
            await rotate_running(state)


async def test_a_state_path_longer_than_a_socket_address_still_works(tmp_path_factory):
    deep = tmp_path_factory.mktemp("ctl") / ("d" * 80) / ("e" * 80)
    bed = Testbed.create(deep)
    a = bed.cosigners[0]
    state = bed.directory / a.id
    assert len(str(state / SOCKET)) > 108
    control = Control(a, state)
    try:
        assert await control.start()
        assert (state / SOCKET).is_socket()
        assert (await rotate_running(state)).version == 2
    finally:
        await control.stop()
        await bed.close()


async def test_rotations_asked_at_once_are_made_one_after_another(served):
    bed, a, _ = served
    state = bed.directory / a.id
    rotations = await asyncio.gather(*(rotate_running(state) for _ in range(3)))
    assert sorted(r.version for r in rotations) == [2, 3, 4]
    chain = sorted(rotations, key=lambda r: r.version)
    assert all(later.old == earlier.new for earlier, later in itertools.pairwise(chain))
    assert a.notary.signer.public_key == chain[-1].new.public_key


@pytest.mark.parametrize("answer", [b"", b"[]\n", b'{"ok": true}\n', b"not json\n"])
async def test_an_unreadable_answer_leaves_the_outcome_unknown(tmp_path_factory, answer):
    state = tmp_path_factory.mktemp("ctl")

    async def garbled(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.write(answer)
        writer.close()

    async with listening(state, garbled):
        with pytest.raises(ControlOutcomeUnknown, match="unreadable answer"):
            await rotate_running(state)


async def test_a_socket_path_that_cannot_be_made_leaves_the_cosigner_serving(tmp_path_factory):
    bed = Testbed.create(tmp_path_factory.mktemp("ctl"))
    a = bed.cosigners[0]
    state = bed.directory / a.id
    (state / SOCKET).mkdir()  # something in the way
    control = Control(a, state)
    try:
        assert not await control.start()
        assert (state / SOCKET).is_dir()
    finally:
        await control.stop()
        await bed.close()
