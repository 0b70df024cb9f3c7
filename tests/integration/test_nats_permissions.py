"""NATS security on a real nats-server: each role reaches only its own subjects.

The server runs a config written by ``ops.natsauth``; every party connects with its own nkey.
A refused publish or subscription comes back from the server as ``-ERR 'Permissions Violation
...'``, which nats-py hands to the error callback (lower-cased); the tests assert on that exact
error, and, where a message could have reached someone, that it did not: the receiver gets a
later marker from a legitimate sender and nothing before it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from messages import subjects
from messages.inputs import EnrollNode
from messages.vault_authorization import Authorization
from node.hsm.sealing import new_operator_key
from node.measurement import measure
from node.pins import write_pin
from node.quorum.localfleet import LocalFleet
from node.quorum.member import Member
from node.vendor import VendorCA
from ops.natsauth import connect as natsauth
from ops.natsauth.bundle import Bundle, open_bundle, write_bundle
from ops.natsauth.connect import SecuredServer
from ops.natsauth.nkey import user_key
from ops.natsauth.permissions import LEASE_STREAM
from ops.natsserver import NatsServer, free_port
from orchestrator.core.errors import AppendConflict
from orchestrator.shell.config import Settings
from orchestrator.shell.keys import load_signer
from orchestrator.shell.lease import BUCKET, Lease
from orchestrator.shell.log import Sealed
from orchestrator.shell.service import STATUS_SUBJECTS, Orchestrator
from orchestrator.shell.store import EventStore
from tests.faults.fleets import FAST
from tests.replay.fleet import wait_for, write_config
from transport import credentials
from transport.credentials import CredentialsError
from transport.parties import DEV_LAYOUT, parse_layout
from transport.vault_client import VaultClient

TIMEOUT = 5.0


async def settle(nc: NATS) -> None:
    """Return once the server has processed everything ``nc`` sent so far.

    One ``flush()`` is not enough: nats-py 2.16 writes its PING straight to the socket, ahead of
    commands still queued for its flusher task, so the PONG can come back before an earlier SUB
    or PUB reached the server. The first flush hands that queue to the socket; the second
    flush's PING follows it.
    """
    await nc.flush()
    await nc.flush()


def violation(action: str, subject: str, queue: str = "") -> str:
    """The error nats-py reports when the server refuses a publish or a subscription."""
    text = f'nats: permissions violation for {action} to "{subject}"'
    if queue:
        text += f' using queue "{queue}"'
    return text.lower()


def refused_publishes(*subject_list: str) -> list[str]:
    return [violation("publish", s) for s in subject_list]


@dataclass
class Party:
    """One party's connection and the errors the server sent it."""

    name: str
    nc: NATS = field(default_factory=NATS)
    errors: list[str] = field(default_factory=list)
    _reported: asyncio.Event = field(default_factory=asyncio.Event)

    async def on_error(self, exc: Exception) -> None:
        self.errors.append(str(exc))
        self._reported.set()

    async def reported(self, count: int) -> list[str]:
        """The errors so far, once there are at least ``count``."""
        async with asyncio.timeout(TIMEOUT):
            while len(self.errors) < count:
                self._reported.clear()
                await self._reported.wait()
        return self.errors

    async def refused(self, expected: list[str]) -> None:
        """Assert that the server reported exactly ``expected``."""
        assert await self.reported(len(expected)) == expected

    async def try_publish(self, *subject_list: str, reply: str = "") -> None:
        """Publish on each subject, then wait until the server has processed them."""
        for subject in subject_list:
            await self.nc.publish(subject, b"forged", reply=reply, headers={"Nats-Msg-Id": "x"})
        await settle(self.nc)

    async def try_subscribe(self, *subject_list: str, queue: str = "") -> list[Msg]:
        """Subscribe to each subject; returns the list that any delivered message would join."""
        got: list[Msg] = []

        async def keep(msg: Msg) -> None:
            got.append(msg)

        for subject in subject_list:
            await self.nc.subscribe(subject, queue=queue, cb=keep)
        await settle(self.nc)
        return got

    async def serve(self, subject: str, queue: str = "") -> None:
        """Answer every request on ``subject`` with this party's name."""

        async def answer(msg: Msg) -> None:
            await self.nc.publish(msg.reply, self.name.encode())

        await self.nc.subscribe(subject, queue=queue, cb=answer)
        await settle(self.nc)


class Mailbox:
    """Messages that reach a subscription, and a way to wait for a given one."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self._arrived = asyncio.Event()

    async def keep(self, msg: Msg) -> None:
        self.messages.append(msg.data)
        self._arrived.set()

    async def _wait(self, done: Callable[[], bool]) -> None:
        async with asyncio.timeout(TIMEOUT):
            while not done():
                self._arrived.clear()
                await self._arrived.wait()

    async def until(self, data: bytes) -> list[bytes]:
        """Every message up to and including the first ``data``."""
        await self._wait(lambda: data in self.messages)
        return self.messages[: self.messages.index(data) + 1]

    async def count(self, n: int) -> list[bytes]:
        """The first ``n`` messages."""
        await self._wait(lambda: len(self.messages) >= n)
        return self.messages[:n]


async def _open(
    bundle: Bundle, servers: str | list[str], opened: list[NATS], role: str, party_id: str
) -> Party:
    party = Party(name=f"{role}-{party_id}")
    party.nc = await natsauth.connect(
        bundle, role, party_id, servers, error_cb=party.on_error, allow_reconnect=False
    )
    opened.append(party.nc)
    return party


@pytest.fixture
async def join(
    secure_nats_server: SecuredServer,
) -> AsyncIterator[Callable[[str, str], Awaitable[Party]]]:
    """``await join(role, id)``: a connection as that party, closed after the test."""
    opened: list[NATS] = []
    bundle, url = secure_nats_server.bundle, secure_nats_server.url
    yield lambda role, party_id: _open(bundle, url, opened, role, party_id)
    for nc in opened:
        await nc.close()


async def mailbox(party: Party, subject: str) -> Mailbox:
    box = Mailbox()
    await party.nc.subscribe(subject, cb=box.keep)
    await settle(party.nc)
    return box


def sealed(subject: str, data: bytes) -> Sealed:
    return Sealed(subject=subject, data=data, id=os.urandom(8).hex())


# --- orchestrator ------------------------------------------------------------------------


async def test_orchestrator_does_all_it_needs(join):
    orch, n1, c1 = (
        await join("orchestrator", "o1"),
        await join("node", "n1"),
        await join("cosigner", "c1"),
    )
    store = EventStore(orch.nc)
    await store.ensure()
    last = await store.last_seq()
    batch = [sealed(subjects.event("rollout", "f1"), b"decision"), sealed("fleet.evt.x.y", b"e")]
    assert await store.append(batch, last) == last + 2
    with pytest.raises(AppendConflict):
        await store.append([sealed(subjects.event("rollout", "f1"), b"stale")], last)
    read: list[bytes] = []
    assert await store.scan(last + 1, last + 2, lambda _seq, data: read.append(data)) == 2
    assert read == [b"decision", b"e"]
    assert await store.entry(last + 2) == b"e"
    followed = asyncio.Queue()
    sub = await store.follow(last + 1, lambda seq, _data: followed.put_nowait(seq))
    assert [await asyncio.wait_for(followed.get(), TIMEOUT) for _ in range(2)] == [
        last + 1,
        last + 2,
    ]
    await sub.unsubscribe()

    lease = Lease(orch.nc.jetstream(), "o1", ttl=60)
    await lease.open()
    epoch = await lease.try_acquire()
    assert epoch is not None
    await lease.renew()
    await lease.release()

    statuses = await mailbox(orch, STATUS_SUBJECTS)
    await n1.try_publish(subjects.node_status("n1"))
    assert await statuses.until(b"forged") == [b"forged"]

    await n1.serve(subjects.node_command("n1", "attest"))
    answer = await orch.nc.request(subjects.node_command("n1", "attest"), b"nonce", timeout=2)
    assert answer.data == b"node-n1"
    await c1.serve(subjects.cosign("c1"))
    answer = await orch.nc.request(subjects.cosign("c1"), b"document", timeout=2)
    assert answer.data == b"cosigner-c1"
    assert orch.errors == n1.errors == c1.errors == []


async def test_orchestrator_cannot_delete_or_purge_the_log(join):
    orch = await join("orchestrator", "o1")
    forbidden = [
        f"$JS.API.STREAM.{verb}.{subjects.EVENT_STREAM}"
        for verb in ("DELETE", "PURGE", "UPDATE", "MSG.DELETE")
    ] + ["$JS.API.STREAM.CREATE.OTHER", "$JS.API.STREAM.LIST"]
    await orch.try_publish(*forbidden)
    await orch.refused(refused_publishes(*forbidden))


# --- nodes -------------------------------------------------------------------------------


async def test_node_cannot_publish_orchestrator_commands(join):
    orch, n1, n2 = (
        await join("orchestrator", "o1"),
        await join("node", "n1"),
        await join("node", "n2"),
    )
    n2_commands = await mailbox(n2, subjects.node_command("n2", "attest"))
    forged = [subjects.node_command("n1", "attest"), subjects.node_command("n2", "retire")]
    await n1.try_publish(*forged)
    await n1.refused(refused_publishes(*forged))
    await orch.nc.publish(subjects.node_command("n2", "attest"), b"marker")
    assert await n2_commands.until(b"marker") == [b"marker"]


async def test_node_cannot_read_another_nodes_commands(join):
    orch, n1 = await join("orchestrator", "o1"), await join("node", "n1")
    others = [subjects.node_command("n2", "attest"), "fleet.node.*.cmd.*", "fleet.>", ">"]
    snooped = await n1.try_subscribe(*others)
    await n1.refused([violation("subscription", s) for s in others])
    own = await mailbox(n1, subjects.node_command("n1", "attest"))
    await orch.nc.publish(subjects.node_command("n2", "attest"), b"for n2")
    await orch.nc.publish(subjects.node_command("n1", "attest"), b"marker")
    assert await own.until(b"marker") == [b"marker"]
    assert snooped == []


async def test_node_cannot_append_to_the_event_log(join):
    orch, n1 = await join("orchestrator", "o1"), await join("node", "n1")
    store = EventStore(orch.nc)
    await store.ensure()
    before = await store.last_seq()
    stream = subjects.EVENT_STREAM
    forged = [
        subjects.event("rollout", "f1"),
        "fleet.evt.orchestrator.lease",
        f"$JS.API.STREAM.CREATE.{stream}",
        f"$JS.API.STREAM.INFO.{stream}",
        f"$JS.API.STREAM.PURGE.{stream}",
        f"$JS.API.STREAM.DELETE.{stream}",
        f"$JS.API.STREAM.MSG.DELETE.{stream}",
        "$JS.API.INFO",
    ]
    await n1.try_publish(*forged)
    await n1.refused(refused_publishes(*forged))
    with pytest.raises(nats.errors.TimeoutError):
        await n1.nc.jetstream().publish(subjects.event("rollout", "f1"), b"x", timeout=0.5)
    assert (await n1.reported(len(forged) + 1))[-1] == violation(
        "publish", subjects.event("rollout", "f1")
    )
    assert await store.last_seq() == before


async def test_node_cannot_touch_the_lease(join):
    orch, n1 = await join("orchestrator", "o1"), await join("node", "n1")
    await Lease(orch.nc.jetstream(), "o1").open()
    js = orch.nc.jetstream()
    before = (await js.stream_info(LEASE_STREAM)).state.last_seq
    forged = [
        f"$KV.{BUCKET}.active",
        f"$JS.API.STREAM.MSG.GET.{LEASE_STREAM}",
        f"$JS.API.DIRECT.GET.{LEASE_STREAM}.$KV.{BUCKET}.active",
        f"$JS.API.STREAM.PURGE.{LEASE_STREAM}",
        f"$JS.API.CONSUMER.CREATE.{LEASE_STREAM}",
    ]
    await n1.try_publish(*forged)
    await n1.refused(refused_publishes(*forged))
    assert (await js.stream_info(LEASE_STREAM)).state.last_seq == before


async def test_a_peer_cannot_make_a_node_reply_onto_other_subjects(join):
    # With allow_responses a node would publish on any reply subject it is handed; nodes may
    # reply only into inboxes, so a peer choosing the reply subject gets nothing across.
    orch, n1, n2, n3 = [
        await join(role, pid)
        for role, pid in (("orchestrator", "o1"), ("node", "n1"), ("node", "n2"), ("node", "n3"))
    ]
    answered = asyncio.Queue()

    async def vote(msg: Msg) -> None:
        await n2.nc.publish(msg.reply, b"vote from n2")
        await settle(n2.nc)
        answered.put_nowait(msg.reply)

    await n2.nc.subscribe(subjects.quorum("f1", "prepare"), cb=vote)
    await settle(n2.nc)
    reply = await n1.nc.request(subjects.quorum("f1", "prepare"), b"prepare", timeout=2)
    assert reply.data == b"vote from n2"
    await answered.get()

    n3_commands = await mailbox(n3, subjects.node_command("n3", "attest"))
    targets = [subjects.node_command("n3", "attest"), subjects.event("rollout", "f1")]
    for target in targets:
        await n1.try_publish(subjects.quorum("f1", "prepare"), reply=target)
        assert await asyncio.wait_for(answered.get(), TIMEOUT) == target
    await n2.refused(refused_publishes(*targets))
    await orch.nc.publish(subjects.node_command("n3", "attest"), b"marker")
    assert await n3_commands.until(b"marker") == [b"marker"]


async def test_node_reaches_only_its_own_fleet_and_status(join):
    n1, n3 = await join("node", "n1"), await join("node", "n3")
    await n3.try_subscribe(subjects.quorum("f1", "prepare"))
    await n3.try_subscribe(subjects.vault("f1", "register"), queue="vault-f1")
    forged = [
        subjects.quorum("f1", "accept"),
        subjects.quorum("f2", "config"),
        subjects.node_status("n1"),
        subjects.vault("f2", "recover"),
        subjects.cosign("c1"),
    ]
    await n3.try_publish(*forged)
    await n3.refused(
        [
            violation("subscription", subjects.quorum("f1", "prepare")),
            violation("subscription", subjects.vault("f1", "register"), "vault-f1"),
            *refused_publishes(*forged),
        ]
    )
    await n1.try_subscribe(subjects.node_status("n2"), "_INBOX.>", "_INBOX.orchestrator.o1.>")
    snoop = [subjects.node_status("n2"), "_INBOX.>", "_INBOX.orchestrator.o1.>"]
    await n1.refused([violation("subscription", s) for s in snoop])


# --- auditors, cosigners, clients, operators -----------------------------------------------


async def test_auditor_reads_the_log_but_cannot_write(join):
    orch, audit = await join("orchestrator", "o1"), await join("auditor", "audit")
    store = EventStore(orch.nc)
    await store.ensure()
    last = await store.last_seq()
    # ~3 MB: more than an ordered consumer takes without answering flow control.
    batch = [sealed(subjects.event("rollout", "f1"), os.urandom(60_000)) for _ in range(50)]
    last = await store.append(batch, last)
    reader = EventStore(audit.nc)
    assert await reader.last_seq() == last
    read: list[bytes] = []
    count = await asyncio.wait_for(reader.scan(1, last, lambda _s, d: read.append(d)), 30)
    assert count == last
    assert read[-50:] == [s.data for s in batch]
    assert await reader.entry(last) == batch[-1].data
    stream = subjects.EVENT_STREAM
    forged = [
        subjects.event("rollout", "f1"),
        f"$JS.API.STREAM.CREATE.{stream}",
        f"$JS.API.STREAM.PURGE.{stream}",
        f"$JS.API.STREAM.MSG.DELETE.{stream}",
        f"$KV.{BUCKET}.active",
        f"$JS.API.STREAM.INFO.{LEASE_STREAM}",
        subjects.node_command("n1", "attest"),
    ]
    await audit.try_publish(*forged)
    await audit.refused(refused_publishes(*forged))
    assert await store.last_seq() == last


async def test_cosigner_serves_only_its_own_subject(join):
    orch, c1, c2 = (
        await join("orchestrator", "o1"),
        await join("cosigner", "c1"),
        await join("cosigner", "c2"),
    )
    await c1.serve(subjects.cosign("c1"), queue="cosigner-c1")
    assert (await orch.nc.request(subjects.cosign("c1"), b"doc", timeout=2)).data == b"cosigner-c1"
    c2_requests = await mailbox(c2, subjects.cosign("c2"))
    await c1.try_subscribe(subjects.cosign("c2"), "cosign.*.sign")
    forged = [subjects.cosign("c2"), subjects.event("rollout", "f1"), "_INBOX.orchestrator.o1.x"]
    await c1.try_publish(*forged)
    await c1.refused(
        [
            violation("subscription", subjects.cosign("c2")),
            violation("subscription", "cosign.*.sign"),
            *refused_publishes(*forged),
        ]
    )
    await orch.nc.publish(subjects.cosign("c2"), b"marker")
    assert await c2_requests.until(b"marker") == [b"marker"]


async def test_client_reaches_only_vault_operations(join):
    app, n1 = await join("client", "app"), await join("node", "n1")
    await n1.serve(subjects.vault("f1", "register"), queue="vault-f1")
    answer = await app.nc.request(subjects.vault("f1", "register"), b"sealed", timeout=2)
    assert answer.data == b"node-n1"
    snoop = [subjects.vault("f1", "register"), subjects.node_status("n1"), "_INBOX.>"]
    await app.try_subscribe(*snoop)
    forged = [
        subjects.node_command("n1", "attest"),
        subjects.cosign("c1"),
        subjects.quorum("f1", "prepare"),
        subjects.event("rollout", "f1"),
        "$JS.API.INFO",
    ]
    await app.try_publish(*forged)
    await app.refused([violation("subscription", s) for s in snoop] + refused_publishes(*forged))
    assert n1.errors == []


async def test_operator_configuration_reaches_every_member(join):
    ops, n1, n2 = await join("operator", "ops"), await join("node", "n1"), await join("node", "n2")
    for member in (n1, n2):
        await member.serve(subjects.quorum("f1", "config"))
    acks = Mailbox()
    inbox = ops.nc.new_inbox()
    await ops.nc.subscribe(inbox, cb=acks.keep)
    await ops.nc.publish(subjects.quorum("f1", "config"), b"config", reply=inbox)
    assert sorted(await acks.count(2)) == [b"node-n1", b"node-n2"]
    forged = [subjects.quorum("f1", "prepare"), subjects.node_command("n1", "attest")]
    await ops.try_publish(*forged)
    await ops.refused(refused_publishes(*forged))


# --- authentication ----------------------------------------------------------------------


async def test_connections_without_a_known_nkey_are_refused(secure_nats_server, tmp_path):
    server = secure_nats_server
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(server.url, allow_reconnect=False, connect_timeout=2)
    stranger = tmp_path / "stranger.nk"
    stranger.write_text(user_key().seed)
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(
            server.url, nkeys_seed=str(stranger), allow_reconnect=False, connect_timeout=2
        )
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(
            server.url, user="o1", password="o1", allow_reconnect=False, connect_timeout=2
        )


async def test_a_process_with_an_unknown_seed_stops_with_a_typed_error(
    secure_nats_server, tmp_path
):
    stranger = tmp_path / "stranger.nk"
    stranger.write_text(user_key().seed)
    party = credentials.party_options("node", "n1", stranger)
    # As a member connects: nats-py alone would retry a refused first connection for ever.
    with pytest.raises(CredentialsError, match="refused this party's credentials") as caught:
        await asyncio.wait_for(
            credentials.connect(secure_nats_server.url, party, max_reconnect_attempts=-1), TIMEOUT
        )
    assert caught.value.kind == "nats_credentials"


# --- TLS ---------------------------------------------------------------------------------


async def test_tls_clients_use_the_bundle_ca_and_plaintext_is_refused(nats_bundle, tmp_path):
    tls_bundle = write_bundle(nats_bundle.layout, tmp_path / "bundle", tls=True)
    async with SecuredServer(tls_bundle, tmp_path / "state", name="tls") as srv:
        opened: list[NATS] = []
        try:
            orch = await _open(tls_bundle, srv.url, opened, "orchestrator", "o1")
            n1 = await _open(tls_bundle, srv.url, opened, "node", "n1")
            await n1.serve(subjects.node_command("n1", "attest"))
            reply = await orch.nc.request(subjects.node_command("n1", "attest"), b"", timeout=2)
            assert reply.data == b"node-n1"
        finally:
            for nc in opened:
                await nc.close()

        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        info = json.loads((await reader.readline()).removeprefix(b"INFO "))
        assert info["tls_required"] is True
        writer.write(b'CONNECT {"verbose":false}\r\nPING\r\n')
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), TIMEOUT) == b""  # closed, no PONG
        writer.close()

        options = tls_bundle.connect_options("orchestrator", "o1")
        del options["tls"]  # nats-py then verifies against the system CAs, which do not know ours
        with pytest.raises(ssl.SSLCertVerificationError):
            await nats.connect(srv.url, allow_reconnect=False, connect_timeout=2, **options)


# --- cluster -----------------------------------------------------------------------------


@pytest.mark.cluster
async def test_secured_cluster_keeps_roles_apart_across_routes(nats_cluster, tmp_path):
    cluster, cluster_bundle = nats_cluster, nats_cluster.bundle
    opened: list[NATS] = []
    urls = cluster.urls
    try:
        orch = await _open(cluster_bundle, urls[0], opened, "orchestrator", "o1")
        n1 = await _open(cluster_bundle, urls[1], opened, "node", "n1")
        n2 = await _open(cluster_bundle, urls[2], opened, "node", "n2")
        store = EventStore(orch.nc)
        await store.ensure(replicas=3)
        last = await store.append([sealed(subjects.event("rollout", "f1"), b"r3")], 0)
        await Lease(orch.nc.jetstream(), "o1").open(replicas=3)

        await n1.serve(subjects.node_command("n1", "attest"))
        commands = await mailbox(n1, subjects.node_command("n1", "retire"))
        await asyncio.sleep(0.2)  # interest travels to the other servers
        reply = await orch.nc.request(subjects.node_command("n1", "attest"), b"", timeout=2)
        assert reply.data == b"node-n1"

        forged = [subjects.event("rollout", "f1"), subjects.node_command("n1", "retire")]
        await n2.try_publish(*forged)
        await n2.refused(refused_publishes(*forged))
        await n2.try_subscribe(subjects.node_command("n1", "attest"))
        assert (await n2.reported(len(forged) + 1))[-1] == violation(
            "subscription", subjects.node_command("n1", "attest")
        )

        # A server without the CA's certificate cannot route into the cluster.
        rogue = NatsServer(
            tmp_path / "rogue",
            name="rogue",
            config="cluster",
            cluster_port=free_port(),
            routes=[f"nats://127.0.0.1:{s.cluster_port}" for s in cluster.servers],
        )
        async with rogue:
            await wait_for_log(cluster.servers[0].log_file, "TLS route handshake error")
            intruder = await nats.connect(rogue.url, allow_reconnect=False)
            await intruder.publish(subjects.node_command("n1", "retire"), b"rogue")
            await intruder.publish(subjects.event("rollout", "f1"), b"rogue")
            await settle(intruder)
            await intruder.close()
        await orch.nc.publish(subjects.node_command("n1", "retire"), b"marker")
        assert await commands.until(b"marker") == [b"marker"]
        assert await store.last_seq() == last
        assert orch.errors == n1.errors == []
    finally:
        for nc in opened:
            await nc.close()


async def wait_for_log(path: Path, text: str) -> None:
    """Return once the server log at ``path`` holds ``text``; fail after about 15 s."""
    for _ in range(300):
        if text in await asyncio.to_thread(path.read_text, errors="replace"):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{path.name} never logged {text!r}")


# --- the roles' processes ----------------------------------------------------------------

HSMFLEET = [sys.executable, "-m", "ops.cli"]
CLIENT_ID = "app"


async def hsmfleet(*args: str) -> tuple[int, str]:
    """Run ``hsmfleet ARGS`` to its end; returns the exit code and what it wrote to stderr."""
    proc = await asyncio.create_subprocess_exec(
        *HSMFLEET, *args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, err.decode()


@contextlib.asynccontextmanager
async def hsm_device(files: Path) -> AsyncIterator[Path]:
    """``hsmfleet hsm serve`` running the software HSM in ``files/hsm`` (sealed under
    ``files/hsm.key``, certified by the vendor CA in ``files/vendor``): its socket."""
    socket = Path(tempfile.mkdtemp(prefix="hsmserve-")) / "hsm.sock"
    proc = await asyncio.create_subprocess_exec(
        *HSMFLEET, "hsm", "serve", "--socket", str(socket), "--state", str(files / "hsm"),
        "--sealing-key-file", str(files / "hsm.key"), "--vendor", str(files / "vendor"),
        stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert await asyncio.wait_for(proc.stdout.readline(), 30), "the HSM device did not start"
        yield socket
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0


async def test_node_daemon_and_orchestrator_enroll_each_with_its_own_seed(nats_bundle, tmp_path):
    keys, software = nats_bundle.root / "keys", measure()
    VendorCA.init(tmp_path / "vendor", datetime.now(UTC))
    (tmp_path / "hsm.key").write_text(new_operator_key() + "\n")
    stranger = tmp_path / "stranger.nk"
    stranger.write_text(user_key().seed)
    # Its own server: the session's secured server holds test entries no orchestrator replays.
    async with (
        SecuredServer(nats_bundle, tmp_path / "nats", name="enroll") as server,
        hsm_device(tmp_path) as socket,
    ):
        config = write_config(
            tmp_path / "orch",
            server.url,
            tmp_path / "vendor" / "root.pem",
            software,
            holder="o2",
            nats_seed=str(keys / "orchestrator-o2.nk"),
        )
        signer = load_signer(tmp_path / "orch" / "orchestrator.key")
        write_pin(tmp_path / "pins.json", "orchestrator", signer)
        node = ["node", "run", "--hsm-socket", str(socket), "--state", str(tmp_path / "n1")]
        node += ["--domain", "dc1", "--nats", server.url, "--node-id", "n1", "--heartbeat", "0.5"]
        node += ["--orchestrator-key", str(tmp_path / "pins.json"), "--measurement", software]
        for seed, error in (
            (tmp_path / "missing.nk", "cannot read the NATS seed file"),
            (stranger, "the NATS servers refused this party's credentials"),
        ):
            code, err = await hsmfleet(*node, "--nats-seed", str(seed))
            assert code == 2 and f"hsmfleet: {error}" in err

        settings = Settings.load(config)
        nc = await settings.connect()
        orch = Orchestrator(nc, settings, signer)
        running = asyncio.create_task(orch.run())
        daemon = await asyncio.create_subprocess_exec(
            *HSMFLEET, *node, *nats_bundle.arguments("node", "n1"),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            assert (await asyncio.wait_for(daemon.stdout.readline(), 30)).strip() == b"n1"
            await wait_for(lambda: "n1" in orch.state.nodes, what="n1 to announce itself")
            await orch.submit(EnrollNode(node_id="n1", requested_by="test"))
            await wait_for(lambda: orch.state.nodes["n1"].status == "enrolled", what="enrolment")
            # An auditor exports the log with its own seed; without one it is refused.
            export = ["log", "export", "--nats", server.url]
            code, err = await hsmfleet(*export, "--nats-seed", str(keys / "auditor-audit.nk"))
            assert code == 0 and "exported" in err and "exported 0 " not in err
            code, err = await hsmfleet(*export)
            assert code == 2 and "refused" in err
        finally:
            daemon.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(daemon.wait(), 30) == 0
            orch.stop()
            await asyncio.wait_for(running, 10)
            await nc.close()
        assert "Violation" not in server.log_file.read_text()


async def test_fleet_members_and_a_vault_client_each_with_its_own_seed(tmp_path):
    fleet = "vf"
    members = ("m1", "m2", "m3")
    layout = parse_layout(
        {"nodes": [{"id": m, "fleet": fleet} for m in members], "clients": [CLIENT_ID]}
    )
    bundle = write_bundle(layout, tmp_path / "bundle")
    async with SecuredServer(bundle, tmp_path / "nats", name="members") as server:
        local = LocalFleet.create(tmp_path / "fleet", fleet, len(members), [server.url], **FAST)

        def authorize(user: str, op: str, request: str) -> Authorization:
            return local.authorize(user, op, request, time.time_ns() // 1_000_000)

        running = [
            Member(
                dataclasses.replace(
                    local.settings(m), nats_seed=str(bundle.seed_file(layout.party("node", m)))
                ),
                new=True,
            )
            for m in members
        ]
        nc = None
        try:
            await asyncio.gather(*(m.start() for m in running))
            await asyncio.gather(*(m.replica.wait_voting(10) for m in running))
            nc = await natsauth.connect(bundle, "client", CLIENT_ID, server.url)
            client = VaultClient(nc, local.vault_keys, authorize)
            await client.register("alice", b"1234", b"backup key")
            assert (await client.recover("alice", b"1234")).secret == b"backup key"
        finally:
            if nc is not None:
                await nc.close()
            for member in running:
                await member.stop()
        assert "Violation" not in server.log_file.read_text()


# --- the commands ------------------------------------------------------------------------


async def test_nats_secure_then_up_secure_as_processes(nats_bundle, tmp_path):
    layout = tmp_path / "layout.json"
    layout.write_text(json.dumps(nats_bundle.layout.to_json()))
    out = tmp_path / "bundle"
    made = await asyncio.create_subprocess_exec(
        *HSMFLEET,
        "nats",
        "secure",
        "--layout",
        str(layout),
        "--out",
        str(out),
        "--tls",
        stderr=subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(made.communicate(), 60)
    assert made.returncode == 0, err
    proc = await asyncio.create_subprocess_exec(
        *HSMFLEET,
        "nats",
        "up",
        "--secure",
        str(out),
        "--port",
        "0",
        "--state",
        str(tmp_path / "state"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        url = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode().strip()
        bundle = open_bundle(out)
        nc = await natsauth.connect(bundle, "orchestrator", "o1", url, allow_reconnect=False)
        assert (await nc.jetstream().account_info()).limits is not None
        await nc.close()
        with pytest.raises(ssl.SSLCertVerificationError):
            await nats.connect(url, allow_reconnect=False, connect_timeout=2)
    finally:
        proc.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(proc.wait(), 20)
    assert code == 0


@contextlib.asynccontextmanager
async def nats_up(*args: str) -> AsyncIterator[tuple[str, str]]:
    """``hsmfleet nats up ARGS`` running: its URL and the line it prints next."""
    proc = await asyncio.create_subprocess_exec(
        *HSMFLEET, "nats", "up", "--port", "0", *args, stdout=subprocess.PIPE
    )
    try:
        url = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode().strip()
        yield url, (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
    finally:
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 20) == 0


async def test_nats_up_is_secured_by_default_and_says_so_when_not(tmp_path):
    state = tmp_path / "state"
    async with nats_up("--state", str(state)) as (url, said):
        assert said.startswith("secured: nkey users and permissions per role (new bundle")
        bundle = open_bundle(state / "auth")
        assert bundle.layout == DEV_LAYOUT and not bundle.tls
        node = await natsauth.connect(bundle, "node", "node-1", url, allow_reconnect=False)
        await node.close()
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            await nats.connect(url, allow_reconnect=False, connect_timeout=2)
    async with nats_up("--state", str(tmp_path / "open"), "--insecure") as (url, said):
        assert said.startswith("WARNING: INSECURE NATS SERVER (--insecure)")
        anyone = await nats.connect(url, allow_reconnect=False)
        await anyone.close()
