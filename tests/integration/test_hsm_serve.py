"""``hsmfleet hsm serve`` as an operator runs it: a real device process on a temporary socket,
driven by a :class:`DeviceHsm`; and a node daemon that reaches its HSM only through it."""

import os
import signal
import subprocess
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import pytest

from messages import Ed25519Signer
from messages.signing import ECDSA_P256, ED25519, verify_bytes
from node.hsm.base import KeyNotFound
from node.hsm.device.cli import JOURNAL
from node.hsm.device.client import DeviceClient, DeviceHsm
from node.hsm.sealing import create_operator_key
from node.pins import write_pin
from node.vendor import DEVICE, VENDOR_ROOT, VendorCA
from tests.integration.test_node_cli import HSMFLEET, enroll, run_node, serve, stop, terminate
from tests.integration.test_pkcs11_backend import PIN, softhsm_dir, token_label  # noqa: F401


@pytest.fixture
def socket_path():
    """A socket in a short directory the device creates itself (socket paths are short)."""
    return Path(tempfile.mkdtemp(prefix="hsmserve-")) / "run" / "hsm.sock"


@pytest.fixture
def operator_files(tmp_path):
    """A vendor CA and an operator sealing key in ``tmp_path``."""
    VendorCA.init(tmp_path / "vendor", datetime.now(UTC))
    create_operator_key(tmp_path / "hsm.key")
    return tmp_path


def soft_args(files: Path, socket_path: Path, *extra: str) -> list[str]:
    state = ["--state", str(files / "hsm"), "--sealing-key-file", str(files / "hsm.key")]
    return ["--socket", str(socket_path), *state, *extra]


def test_a_software_device_serves_keeps_its_keys_and_stops_cleanly(operator_files, socket_path):
    args = soft_args(operator_files, socket_path)
    proc, hello = serve(*args, "--vendor", str(operator_files / "vendor"))
    try:
        assert hello == {"socket": str(socket_path), "kind": "soft"}
        assert oct(socket_path.stat().st_mode & 0o777) == oct(0o600)
        hsm = DeviceHsm(DeviceClient(socket_path))
        assert hsm.kind == "soft" and hsm.certificate(DEVICE) and hsm.certificate(VENDOR_ROOT)
        key = hsm.generate("identity", ED25519)
        assert verify_bytes(ED25519, key.public_key, hsm.sign("identity", b"m"), b"m")
        hsm.close()
    finally:
        assert terminate(proc) == 0
    assert not socket_path.exists()
    proc, _ = serve(*args)  # certified at its first start: no vendor needed again
    try:
        hsm = DeviceHsm(DeviceClient(socket_path))
        assert hsm.labels() == [DEVICE, "identity"] and hsm.public_key("identity") == key
        assert verify_bytes(ED25519, key.public_key, hsm.sign("identity", b"n"), b"n")
        with pytest.raises(KeyNotFound):
            hsm.sign("missing", b"x")
        hsm.close()
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    assert not socket_path.exists()


def test_a_pkcs11_device_serves_its_token_and_keeps_its_vault_journal_in_its_state(
    socket_path,
    token_label,  # noqa: F811
    tmp_path,
):
    env = {**os.environ, "HSMFLEET_PKCS11_PIN": PIN}
    token = ["--backend", "pkcs11", "--token", token_label]
    proc, hello = serve("--socket", str(socket_path), *token, "--state", str(tmp_path), env=env)
    try:
        assert hello["kind"] == "pkcs11"
        hsm = DeviceHsm(DeviceClient(socket_path))
        key = hsm.generate("k", ECDSA_P256)
        assert verify_bytes(ECDSA_P256, key.public_key, hsm.sign("k", b"m"), b"m")
        hsm.close()
    finally:
        assert terminate(proc) == 0
    assert (tmp_path / JOURNAL).exists()


def _one_line_error(*args: str, env=None) -> str:
    out = subprocess.run(
        [*HSMFLEET, "hsm", "serve", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env or os.environ,
    )
    assert out.returncode == 2, out.stderr
    assert out.stdout == "" and len(out.stderr.strip().splitlines()) == 1, out.stderr
    return out.stderr


def test_bad_arguments_and_keys_end_it_with_one_line(operator_files, socket_path, tmp_path):
    files = operator_files
    assert "--socket" in _one_line_error("--state", str(files / "hsm"))
    assert "--backend" in _one_line_error("--socket", str(socket_path), "--backend", "tpm")
    assert "--state" in _one_line_error("--socket", str(socket_path))
    no_key = {k: v for k, v in os.environ.items() if k != "HSMFLEET_HSM_KEY"}
    line = _one_line_error("--socket", str(socket_path), "--state", str(files / "hsm"), env=no_key)
    assert "no operator key" in line
    assert "--vendor" in _one_line_error(*soft_args(files, socket_path))
    (tmp_path / "short.key").write_text("abcd\n")
    bad_key = ["--sealing-key-file", str(tmp_path / "short.key")]
    line = _one_line_error("--socket", str(socket_path), "--state", str(files / "hsm"), *bad_key)
    assert "32 bytes" in line
    pkcs11 = ["--backend", "pkcs11", "--state", str(files / "device")]
    assert "--token" in _one_line_error("--socket", str(socket_path), *pkcs11)
    assert not socket_path.exists()


async def test_a_node_daemon_reaches_its_hsm_only_through_the_device(
    nats_server, nc, operator_files, socket_path
):
    tmp_path = operator_files
    orchestrator = Ed25519Signer.generate()
    write_pin(tmp_path / "orch.json", "orchestrator", orchestrator)
    device, _ = serve(*soft_args(tmp_path, socket_path, "--vendor", str(tmp_path / "vendor")))
    try:
        proc, node_id = await run_node(nats_server, tmp_path, "--hsm-socket", str(socket_path))
        try:
            node = await enroll(nc, orchestrator, tmp_path, node_id)
        finally:
            assert await stop(proc) == 0
        assert node.node_id == node_id
        hsm = DeviceHsm(DeviceClient(socket_path))
        assert hsm.public_key("identity").public_key == node.identity_key
        hsm.close()
        assert not (tmp_path / "state" / "hsm").exists()  # no key material beside the node
    finally:
        assert terminate(device) == 0
