"""The HSM device boundary (node.hsm.device): its protocol, its server and its client.

Every frame gets a typed answer, refusals are counted, the device-internal primitives are not
reachable, votes are signed only by an applet, keys are wrapped only to attested transport keys,
and callers in several threads, a restarted device and a missing one behave as they should.
"""

import json
import os
import socket
import stat
import struct
import tempfile
import threading
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import pytest

from messages.attestation import AttestRequest
from messages.schema import Body
from messages.signing import ECDH_P256, ECDSA_P256, ED25519, verify_bytes
from node.attest import attest
from node.hsm import base
from node.hsm.base import (
    AES256_GCM,
    OPAQUE_SETUP,
    HsmError,
    HsmUnavailable,
    KeyNotFound,
    UnsupportedAlgorithm,
)
from node.hsm.device import protocol
from node.hsm.device.client import DeviceClient, DeviceHsm, LocalDevice, NotOnDevice
from node.hsm.device.core import (
    GENERATE,
    SIGN,
    RecipientNotAttested,
    ReservedDomain,
    ToSign,
    core_handlers,
)
from node.hsm.device.protocol import (
    MAX_FRAME,
    BadArguments,
    DeviceFailed,
    Empty,
    FrameTooLarge,
    MalformedFrame,
    UnknownOperation,
    UnsupportedProtocol,
    error_class,
    operation,
    register_error,
)
from node.hsm.device.server import DeviceServer, DeviceSocketError
from node.hsm.soft import SoftHsm
from node.identity import establish
from node.vendor import VendorCA, provision
from tests.unit.hsm_devices import served

KEY = bytes(range(32))
VOTE = b"hsmfleet/v1/quorum.accepted\n{}"


@dataclass(frozen=True)
class Echo(Body):
    text: str


@register_error
class EchoRefused(HsmError):
    """An applet's own error, registered the way applets register theirs."""

    kind = "test_echo_refused"


ECHO = operation("test.echo", Echo, Echo)


def echo(request: Echo) -> Echo:
    if request.text == "no":
        raise EchoRefused("the applet refuses", said=request.text)
    if request.text == "crash":
        raise RuntimeError("a bug in the applet")
    return Echo(request.text.upper())


@pytest.fixture
def soft(tmp_path):
    return SoftHsm(tmp_path / "hsm", KEY)


@pytest.fixture
def device(soft):
    with served(soft) as (server, hsm):
        yield server, hsm


def raw_call(server: DeviceServer, *frames: bytes) -> list[dict | None]:
    """Send raw frames on one connection; the answers (None once the device hung up)."""
    answers: list[dict | None] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(5)
        conn.connect(str(server.socket_path))
        for frame in frames:
            try:
                conn.sendall(frame)
                answer = protocol.recv_frame(conn)
            except (BrokenPipeError, ConnectionResetError):
                answer = None
            answers.append(None if answer is None else json.loads(answer))
    return answers


def framed(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def request(op: str, args: dict, request_id: int = 7, v: int = 1) -> bytes:
    return framed(json.dumps({"v": v, "id": request_id, "op": op, "args": args}).encode())


def test_the_socket_is_owner_only_in_an_owner_only_directory(device):
    server, _ = device
    assert stat.S_IMODE(server.socket_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(server.socket_path.parent.stat().st_mode) == 0o700
    assert stat.S_ISSOCK(server.socket_path.stat().st_mode)


def test_hello_names_the_protocol_backend_and_operations(device):
    _, hsm = device
    assert hsm.kind == "soft"
    assert hsm.operations == {
        "hello",
        "supports",
        "generate",
        "public_key",
        "labels",
        "certificate",
        "sign",
        "wrap",
        "unwrap",
        "destroy",
        "healthy",
    }


def test_a_request_answers_with_its_id(device):
    server, _ = device
    [answer] = raw_call(server, request("labels", {}, request_id=41))
    assert answer == {"id": 41, "ok": True, "result": {"labels": []}}


@pytest.mark.parametrize(
    ("frame", "kind", "answer_id"),
    [
        (framed(b"{not json"), MalformedFrame.kind, None),
        (framed(b"\xff\xfe"), MalformedFrame.kind, None),
        (framed(b"[1, 2]"), MalformedFrame.kind, None),
        (framed(b""), MalformedFrame.kind, None),
        (framed(b'{"v": 1, "id": 3, "op": "labels"}'), MalformedFrame.kind, 3),
        (framed(b'{"v": 1, "id": 3, "op": "labels", "args": {}, "x": 1}'), MalformedFrame.kind, 3),
        (framed(b'{"v": 1, "id": "3", "op": "labels", "args": {}}'), MalformedFrame.kind, None),
        (
            framed(b'{"v": 1, "id": 3, "id": 4, "op": "labels", "args": {}}'),
            MalformedFrame.kind,
            None,
        ),
        (request("labels", {}, v=2), UnsupportedProtocol.kind, 7),
        (request("rsa_decrypt", {}), UnknownOperation.kind, 7),
        (request("sign", {"label": "k"}), BadArguments.kind, 7),
        (request("sign", {"label": "k", "data": 5}), BadArguments.kind, 7),
        (request("sign", {"label": "k", "data": "not base64!"}), BadArguments.kind, 7),
        (request("sign", {"label": "k", "data": "", "surplus": 1}), BadArguments.kind, 7),
        (request("labels", []), MalformedFrame.kind, 7),
    ],
)
def test_bad_frames_get_typed_answers_are_counted_and_keep_the_connection(
    device, frame, kind, answer_id
):
    server, _ = device
    bad, good = raw_call(server, frame, request("labels", {}, request_id=8))
    assert (bad["ok"], bad["kind"], bad["id"]) == (False, kind, answer_id)
    assert isinstance(bad["message"], str) and isinstance(bad["detail"], dict)
    assert good == {"id": 8, "ok": True, "result": {"labels": []}}
    assert server.refused == {kind: 1}


def test_nested_fields_its_schema_does_not_declare_are_refused(device):
    server, _ = device
    wrapped = {"alg": ED25519, "public_key": "", "ephemeral": "", "ciphertext": "", "surplus": 1}
    args = {"transport_label": "t", "wrapped": wrapped, "label": "k", "context": ""}
    [answer] = raw_call(server, request("unwrap", args))
    assert answer["kind"] == BadArguments.kind and "surplus" in answer["message"]


def test_an_oversize_frame_is_answered_then_the_connection_closed(device):
    server, _ = device
    answer, after = raw_call(server, struct.pack(">I", MAX_FRAME + 1), request("labels", {}))
    assert (answer["kind"], answer["id"]) == (FrameTooLarge.kind, None)
    assert after is None
    assert server.refused == {FrameTooLarge.kind: 1}
    with pytest.raises(FrameTooLarge):
        protocol.send_frame(socket.socket(socket.AF_UNIX), bytes(MAX_FRAME + 1))


@pytest.mark.parametrize(
    "op", ["ecdh", "seal", "unseal", "secret", "open_hpke", "store_certificate"]
)
def test_device_internal_primitives_are_not_reachable(soft, op):
    soft.generate("aes", AES256_GCM)
    soft.generate("transport", ECDH_P256)
    soft.generate("login", OPAQUE_SETUP)
    with served(soft) as (server, _):
        [answer] = raw_call(server, request(op, {"label": "aes"}))
    assert answer["kind"] == UnknownOperation.kind
    assert server.refused == {UnknownOperation.kind: 1}


def test_the_device_hsm_refuses_device_internal_primitives_without_asking(device):
    server, hsm = device
    hsm.generate("transport", ECDH_P256)
    for call in (
        lambda: hsm.ecdh("transport", b"\x04"),
        lambda: hsm.seal("aes", b"x", b""),
        lambda: hsm.unseal("aes", b"x", b""),
        lambda: hsm.secret("login"),
        lambda: hsm.open_hpke("transport", b"x", b""),
        lambda: hsm.store_certificate("device", b"x"),
    ):
        with pytest.raises(NotOnDevice):
            call()
    assert server.refused == {}


def test_votes_are_signed_only_by_the_applet(device, soft):
    server, hsm = device
    key = hsm.generate("identity", ED25519)
    with pytest.raises(ReservedDomain) as info:
        hsm.sign("identity", VOTE)
    assert info.value.kind == "hsm_reserved_domain"
    assert server.refused == {"hsm_reserved_domain": 1}
    assert verify_bytes(ED25519, key.public_key, hsm.sign("identity", b"x" + VOTE), b"x" + VOTE)
    # The rule is the device's: the backend in its own process signs anything.
    assert verify_bytes(ED25519, key.public_key, soft.sign("identity", VOTE), VOTE)


def test_backend_refusals_come_back_as_their_typed_errors(device):
    server, hsm = device
    hsm.generate("t", ECDH_P256)
    with pytest.raises(KeyNotFound, match="no key with this label") as info:
        hsm.sign("missing", b"x")
    assert info.value.detail == {"label": "missing"}
    with pytest.raises(UnsupportedAlgorithm):
        hsm.sign("t", b"x")
    with pytest.raises(UnsupportedAlgorithm):
        hsm.generate("rsa", "rsa-2048")
    assert server.refused == {"hsm_key_not_found": 1, "hsm_unsupported_algorithm": 2}


def test_every_hsm_error_kind_maps_back_to_its_class():
    errors = [v for v in vars(base).values() if isinstance(v, type) and issubclass(v, HsmError)]
    assert len(errors) > 10
    for cls in errors:
        assert error_class(cls.kind) is cls
    assert error_class(ReservedDomain.kind) is ReservedDomain
    with pytest.raises(TypeError):
        register_error(type("Clash", (HsmError,), {"kind": KeyNotFound.kind}))


def _vendor_and_member(tmp_path, name="member"):
    vendor = VendorCA.init(tmp_path / f"vendor-{name}", datetime.now(UTC))
    member = SoftHsm(tmp_path / name, KEY)
    provision(member, vendor, datetime.now(UTC))
    node = establish(member, tmp_path / f"{name}-state", name)
    attestation = attest(node, member, "measured", AttestRequest(os.urandom(32), 0))
    return vendor, node, attestation


def test_wrap_needs_an_attestation_chained_to_the_devices_vendor_root(tmp_path, soft):
    vendor, node, attestation = _vendor_and_member(tmp_path)
    _, _, foreign = _vendor_and_member(tmp_path, "foreign")
    soft.generate("fleet", ECDSA_P256, wrappable=True)
    recipient = node.transport.public_key
    with served(soft) as (server, hsm):
        with pytest.raises(RecipientNotAttested, match="no vendor root"):
            hsm.wrap("fleet", recipient, b"ctx", attestation=attestation)
        provision(soft, vendor, datetime.now(UTC))
        with pytest.raises(RecipientNotAttested, match="attested transport key"):
            hsm.wrap("fleet", recipient, b"ctx")
        with pytest.raises(RecipientNotAttested) as info:
            hsm.wrap("fleet", foreign.transport_key, b"ctx", attestation=foreign)
        assert info.value.detail["reason"] == "unknown_root"
        forged = replace(attestation, signature=attestation.signature[:-2] + b"\x00\x00")
        with pytest.raises(RecipientNotAttested):
            hsm.wrap("fleet", recipient, b"ctx", attestation=forged)
        other = soft.generate("other-transport", ECDH_P256).public_key
        with pytest.raises(RecipientNotAttested, match="another transport key"):
            hsm.wrap("fleet", other, b"ctx", attestation=attestation)
        wrapped = hsm.wrap("fleet", recipient, b"ctx", attestation=attestation)
        assert server.refused == {RecipientNotAttested.kind: 5}
    member = SoftHsm(tmp_path / "member", KEY)
    assert member.unwrap("transport", wrapped, "fleet", b"ctx") == replace(
        soft.public_key("fleet"), label="fleet"
    )


def test_an_applet_registers_its_operation_handler_and_error(soft):
    handlers = {**core_handlers(soft), ECHO.name: echo}
    for transport in ("socket", "local"):
        if transport == "local":
            device = LocalDevice(handlers)
        else:
            server = DeviceServer(f"{tempfile.mkdtemp(prefix='hsmdev-')}/hsm.sock", handlers)
            server.start()
            device = DeviceClient(server.socket_path, timeout=5)
        try:
            assert device.call(ECHO.name, Echo("hi")) == Echo("HI")
            assert "test.echo" in DeviceHsm(device).operations
            with pytest.raises(EchoRefused) as info:
                device.call(ECHO.name, Echo("no"))
            assert info.value.detail == {"said": "no"}
            if transport == "socket":
                with pytest.raises(DeviceFailed):
                    device.call(ECHO.name, Echo("crash"))
                assert device.call(ECHO.name, Echo("again")) == Echo("AGAIN")
                assert server.refused == {"test_echo_refused": 1, "device_failed": 1}
        finally:
            device.close()
            if transport == "socket":
                server.stop()


def test_a_local_device_runs_the_same_handlers_with_the_same_refusals(soft):
    hsm = DeviceHsm(LocalDevice(core_handlers(soft)))
    assert hsm.kind == "soft" and "sign" in hsm.operations
    key = hsm.generate("identity", ED25519)
    assert verify_bytes(ED25519, key.public_key, hsm.sign("identity", b"m"), b"m")
    with pytest.raises(ReservedDomain):
        hsm.sign("identity", VOTE)
    with pytest.raises(UnknownOperation):
        hsm.device.call("ecdh", Empty())
    with pytest.raises(BadArguments):
        hsm.device.call(SIGN.name, Empty())
    with pytest.raises(TypeError):
        LocalDevice({"ecdh": lambda _: Empty()})


def test_callers_in_several_threads_are_served_at_once(device):
    _, hsm = device
    key = hsm.generate("k", ECDSA_P256)
    results, errors = [], []

    def work(n):
        try:
            for i in range(20):
                msg = f"{n}-{i}".encode()
                results.append(verify_bytes(ECDSA_P256, key.public_key, hsm.sign("k", msg), msg))
        except Exception as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert errors == [] and results == [True] * 120


def test_a_restarted_device_is_reached_again_and_a_missing_one_is_unavailable(soft):
    with served(soft) as (server, hsm):
        hsm.generate("k", ED25519)
        server.stop()
        assert not server.socket_path.exists()
        with pytest.raises(HsmUnavailable, match="not there"):
            hsm.labels()
        assert not hsm.healthy()
        server.start()
        assert hsm.labels() == ["k"] and hsm.healthy()


def test_a_device_that_does_not_answer_in_time_is_unavailable():
    path = f"{tempfile.mkdtemp(prefix='hsmdev-')}/mute.sock"
    mute = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    mute.bind(path)
    mute.listen()
    try:
        client = DeviceClient(path, timeout=0.3)
        with pytest.raises(HsmUnavailable, match="does not answer"):
            client.call(GENERATE.name, GENERATE.request("k", ED25519, False))
        client.close()
    finally:
        mute.close()


def test_the_server_refuses_a_socket_in_use_and_a_path_that_is_not_a_socket(device, tmp_path):
    server, _ = device
    with pytest.raises(DeviceSocketError, match="another device"):
        DeviceServer(server.socket_path, server.handlers).start()
    taken = tmp_path / "file"
    taken.write_text("x")
    with pytest.raises(DeviceSocketError, match="taken"):
        DeviceServer(taken, server.handlers).start()
    assert taken.read_text() == "x"


def test_a_stale_socket_left_by_a_dead_device_is_replaced(soft):
    with served(soft) as (server, hsm):
        path = server.socket_path
        server.stop()
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(str(path))
        stale.close()  # a socket file nobody listens on
        server.start()
        assert hsm.labels() == []


def test_a_request_body_of_the_wrong_type_is_refused_before_it_is_sent(device):
    server, hsm = device
    with pytest.raises(BadArguments):
        hsm.device.call(SIGN.name, Empty())
    with pytest.raises(UnknownOperation):
        hsm.device.call("no-such-op", Empty())
    assert server.refused == {}
    with pytest.raises(KeyNotFound):
        hsm.device.call(SIGN.name, ToSign("k", b"x"))
