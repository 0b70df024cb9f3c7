"""What a node host ever holds of a vault: ciphertext only.

Members run as their own processes, each beside its HSM's device process (``hsmfleet hsm
serve``), reached through a recording proxy on the device socket. A user registers a
PIN-guarded secret and recovers it twice (one wrong PIN, then the right one). Everything the
hosts had in hand is then searched for the PIN, the secret, the vault's private keys and the
OPAQUE password file (from which a guess could be checked offline, given the OPRF key): every
message on the bus (a spy subscribed to everything), every byte across the device sockets,
every file the member processes wrote (stores, settings, logs). The HSMs' own state directories
are the only place the keys are, sealed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import socket
import socketserver
import threading
import time
from pathlib import Path

import nats
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from messages.vault import WrongGuess
from messages.vault_authorization import AccountAuthority
from messages.vault_policy import KEM_ROLE, OPAQUE_ROLE, STORAGE_ROLE
from node.hsm import keys as hsm_keys
from node.hsm.sealing import load_operator_key
from node.hsm.soft import SoftHsm
from node.quorum.localfleet import LocalFleet, await_device
from node.quorum.store import SlotStore
from node.vault import record as records
from node.vault.record import Registered, SealedBlob, record_aad
from transport.vault_client import VaultClient

pytestmark = pytest.mark.faults

PIN = b"pin-7Q3xZr"
SECRET = b"secret-backup-key-W8kP"


class RecordingProxy(socketserver.ThreadingUnixStreamServer):
    """A Unix socket that forwards each connection to ``target`` and keeps every byte that
    crosses it, both ways."""

    daemon_threads = True

    def __init__(self, path: Path, target: Path) -> None:
        self.target = target
        self.seen = bytearray()
        self.lock = threading.Lock()
        super().__init__(str(path), _Forward)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def keep(self, data: bytes) -> None:
        with self.lock:
            self.seen += data


class _Forward(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        upstream.connect(str(self.server.target))
        pumps = [
            threading.Thread(target=self._pump, args=(self.request, upstream), daemon=True),
            threading.Thread(target=self._pump, args=(upstream, self.request), daemon=True),
        ]
        for pump in pumps:
            pump.start()
        for pump in pumps:
            pump.join()
        upstream.close()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                self.server.keep(chunk)
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)


def forms(secret: bytes) -> list[bytes]:
    """``secret`` as raw bytes and in every text encoding the project writes bytes in."""
    return [
        secret,
        base64.b64encode(secret),
        base64.urlsafe_b64encode(secret).rstrip(b"="),
        secret.hex().encode(),
    ]


_ENCODED = re.compile(rb"[A-Za-z0-9+/_-]{16,}={0,2}")


def unwrapped(data: bytes, depth: int = 3) -> bytes:
    """``data`` followed by whatever its base64 runs decode to, and theirs in turn: a record
    crosses the bus as base64 of JSON that holds base64 itself, and a needle nested there is
    whole in no single encoding of the outer bytes."""
    found = [data]
    layer = [data]
    for _ in range(depth):
        decoded = []
        for chunk in layer:
            for run in _ENCODED.findall(chunk):
                for decode in (base64.b64decode, base64.urlsafe_b64decode):
                    with contextlib.suppress(ValueError):
                        decoded.append(decode(run + b"=" * (-len(run) % 4)))
        found += decoded
        layer = decoded
    return b"\n".join(found)


def vault_secrets(local: LocalFleet, member: str) -> dict[str, bytes]:
    """The vault's private keys as ``member``'s HSM holds them (the test opens the sealed HSM
    state with its sealing key, which no host process has)."""
    state = local.state_dir(member)
    hsm = SoftHsm(state / "hsm", load_operator_key(state / "hsm.key"))
    found = {}
    for label in hsm.labels():
        role = label.rsplit(":", 1)[-1]
        if role in (KEM_ROLE, STORAGE_ROLE, OPAQUE_ROLE):
            private = hsm._keys[label].private
            found[role] = hsm_keys.material(private)
            if isinstance(private, ec.EllipticCurvePrivateKey):
                found[f"{role} scalar"] = private.private_numbers().private_value.to_bytes(
                    32, "big"
                )
    hsm.close()
    return found


def password_file(local: LocalFleet, member: str, storage_key: bytes) -> bytes:
    """The user's OPAQUE password file, opened from ``member``'s store with the storage key."""
    store = SlotStore(local.state_dir(member) / "quorum.sqlite3")
    value = store.load([records.record_key("user")])[records.record_key("user")].value
    store.close()
    record = records.decode(value)
    blob = SealedBlob.decode(record.sealed)
    nonce, body = blob.sealed[:12], blob.sealed[12:]
    plain = AESGCM(storage_key).decrypt(nonce, body, record_aad(local.fleet, record))
    return Registered.from_json(json.loads(plain)).password_file


async def test_hosts_hold_no_pin_secret_key_or_password_file(tmp_path, nats_server):
    local = LocalFleet.create(tmp_path / "f", "boundary1", 3, [nats_server.url], devices=True)
    devices, proxies, members = [], [], []
    for member in local.members:
        state = local.state_dir(member)
        device = local.spawn_device(member, socket=state / "device.sock")
        devices.append(device)
        await asyncio.to_thread(await_device, device)
        proxies.append(RecordingProxy(state / "hsm.sock", state / "device.sock"))
    bus: list[bytes] = []
    spy_nc = await nats.connect(nats_server.url)

    async def keep(msg) -> None:
        bus.append(msg.subject.encode() + b" " + msg.data)

    await spy_nc.subscribe(">", cb=keep)
    await spy_nc.flush()  # subscribed at the server before anything is sent
    nc = await nats.connect(nats_server.url)
    try:
        for member in local.members:
            members.append(local.spawn(member, new=True))
        authority = AccountAuthority(local.authority)

        def authorize(user, op, request):
            return authority.authorize(local.fleet, user, op, request, time.time_ns() // 10**6)

        client = VaultClient(nc, local.vault_keys, authorize, timeout=10)
        deadline = time.monotonic() + 30
        while True:
            try:
                await client.register("user", PIN, SECRET)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
        with pytest.raises(WrongGuess):
            await client.recover("user", b"not-the-pin")
        assert (await client.recover("user", PIN)).secret == SECRET
    finally:
        await nc.close()
        await spy_nc.close()
        for process in (*members, *devices):
            process.terminate()
        for process in (*members, *devices):
            process.wait(15)
        for proxy in proxies:
            proxy.shutdown()
            proxy.server_close()

    secrets = vault_secrets(local, "m1")
    assert set(secrets) >= {KEM_ROLE, STORAGE_ROLE, OPAQUE_ROLE}
    needles = {"PIN": PIN, "secret": SECRET, **secrets}
    needles["password file"] = password_file(local, "m1", secrets[STORAGE_ROLE])
    host_files = [
        path
        for member in local.members
        for path in local.state_dir(member).rglob("*")
        if path.is_file()
        and "hsm" not in path.relative_to(local.state_dir(member)).parts[:1]
        and path.suffix != ".sock"
    ]
    haystacks = {
        "the bus": unwrapped(b"\n".join(bus)),
        "the device sockets": unwrapped(b"".join(bytes(p.seen) for p in proxies)),
        **{str(p.relative_to(tmp_path)): unwrapped(p.read_bytes()) for p in host_files},
    }
    assert len(haystacks["the bus"]) > 10_000 and len(haystacks["the device sockets"]) > 10_000
    assert any("quorum.sqlite3" in name for name in haystacks), "the stores were searched"
    leaks = [
        (what, where)
        for what, secret in needles.items()
        for where, data in haystacks.items()
        if any(form in data for form in forms(secret))
    ]
    assert leaks == []
