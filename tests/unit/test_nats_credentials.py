"""A party's NATS credentials as a process is given them (``transport.credentials``), the
settings that carry them, and the bundle ``hsmfleet nats up`` keeps between runs."""

from __future__ import annotations

import json
import os
import socket
import time

import nkeys
import pytest
from structlog.testing import capture_logs

from messages.quorum import Config
from messages.signing import ED25519
from messages.vault_policy import VaultPolicy
from node.quorum.member import MemberSettings
from node.vault.applet import KeySet
from ops.natsauth.bundle import BundleError, ensure_bundle, write_bundle
from orchestrator.shell.config import Settings
from transport.credentials import CredentialsError, NatsUnreachable, connect, party_options
from transport.parties import DEV_LAYOUT, parse_layout

LAYOUT = parse_layout({"orchestrators": ["o1"], "nodes": [{"id": "n1", "fleet": "f1"}]})


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return write_bundle(LAYOUT, tmp_path_factory.mktemp("creds") / "bundle", tls=True)


def test_a_party_connects_with_its_seed_its_inbox_and_the_ca(bundle):
    seed = bundle.root / "keys" / "node-n1.nk"
    options = party_options("node", "n1", seed, bundle.ca_file)
    assert options["name"] == "node-n1"
    assert options["nkeys_seed"] == str(seed)
    assert options["inbox_prefix"] == "_INBOX.node.n1"
    assert options["tls"].verify_mode.name == "CERT_REQUIRED"
    assert "tls" not in party_options("node", "n1", seed)
    assert party_options("node", "n1", None) == {"name": "node-n1"}
    assert bundle.connect_options("node", "n1").keys() == options.keys()
    assert bundle.arguments("node", "n1") == [
        "--nats-seed",
        str(seed),
        "--nats-ca",
        str(bundle.ca_file),
    ]


def _refused(match, *args):
    with pytest.raises(CredentialsError, match=match) as caught:
        party_options(*args)
    assert caught.value.kind == "nats_credentials"


def test_what_is_not_a_party_seed_is_refused(bundle, tmp_path):
    seed = bundle.root / "keys" / "node-n1.nk"
    _refused("unknown NATS role", "admin", "n1", seed)
    _refused("not a NATS party id", "node", "n1.>", seed)
    _refused("cannot read the NATS seed file", "node", "n1", tmp_path / "missing.nk")
    _refused("cannot read the NATS seed file", "node", "n1", tmp_path)
    garbage = tmp_path / "garbage.nk"
    garbage.write_text("not a seed\n")
    _refused("holds no nkey seed", "node", "n1", garbage)
    binary = tmp_path / "binary.nk"
    binary.write_bytes(b"\xff\xfe" + os.urandom(30))
    _refused("cannot read the NATS seed file", "node", "n1", binary)
    account = tmp_path / "account.nk"
    account.write_bytes(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_ACCOUNT))
    _refused("holds no user nkey seed", "node", "n1", account)
    _refused("CA file is given without", "node", "n1", None, bundle.ca_file)
    _refused("cannot read the NATS CA file", "node", "n1", seed, tmp_path / "missing.pem")
    _refused("cannot read the NATS CA file", "node", "n1", seed, garbage)


def test_the_orchestrator_settings_name_its_seed_next_to_the_config(tmp_path):
    raw = {
        "holder": "o1",
        "key_file": "orchestrator.key",
        "vendor_roots": [],
        "allowed_measurements": [],
        "nats_seed": "keys/orchestrator-o1.nk",
        "nats_ca": "/etc/hsmfleet/ca.pem",
    }
    path = tmp_path / "orchestrator.json"
    path.write_text(json.dumps(raw))
    settings = Settings.load(path)
    assert settings.nats_seed == tmp_path / "keys" / "orchestrator-o1.nk"
    assert str(settings.nats_ca) == "/etc/hsmfleet/ca.pem"


async def test_an_orchestrator_with_an_unreadable_seed_does_not_connect(tmp_path):
    raw = {"holder": "o1", "key_file": "k", "vendor_roots": [], "allowed_measurements": []}
    settings = Settings.from_json({**raw, "nats_seed": "missing.nk"}, tmp_path)
    with pytest.raises(CredentialsError, match="cannot read the NATS seed file"):
        await settings.connect()


def test_member_settings_carry_the_seed_and_ca(tmp_path):
    config = Config(
        fleet="f1",
        epoch=1,
        members=(),
        prepare_set=(),
        accept_set=(),
        prepare_quorum=1,
        accept_quorum=1,
    )
    settings = MemberSettings(
        fleet="f1",
        member="n1",
        nats=("nats://127.0.0.1:4222",),
        state_dir="s",
        hsm_key_file="k",
        config=config,
        vault=VaultPolicy(
            limit=10, authority_alg=ED25519, authority_key=bytes(32), replace_interval_s=0
        ),
        keys=(KeySet(epoch=1, rollout="r1"),),
        nats_seed="n1.nk",
        nats_ca="ca.pem",
    )
    settings.save(tmp_path / "member.json")
    assert MemberSettings.load(tmp_path / "member.json") == settings
    plain = MemberSettings.from_json({**settings.to_json(), "nats_seed": None, "nats_ca": None})
    assert (plain.nats_seed, plain.nats_ca) == (None, None)


def test_nats_up_keeps_its_bundle_and_never_regenerates_another(tmp_path):
    root = tmp_path / "auth"
    first, made = ensure_bundle(root, DEV_LAYOUT)
    assert made
    seed = (root / "keys" / "node-node-1.nk").read_bytes()
    again, made = ensure_bundle(root, DEV_LAYOUT)
    assert (again, made) == (first, False)
    assert (root / "keys" / "node-node-1.nk").read_bytes() == seed
    with pytest.raises(BundleError, match="another layout or TLS choice"):
        ensure_bundle(root, LAYOUT)
    with pytest.raises(BundleError, match="another layout or TLS choice"):
        ensure_bundle(root, DEV_LAYOUT, tls=True)
    assert (root / "keys" / "node-node-1.nk").read_bytes() == seed


async def test_a_dead_server_is_a_typed_error_in_bounded_time_with_progress_on_the_way():
    """Against nothing listening, a first connection says it is retrying and gives up with
    one typed error instead of waiting for ever."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nobody listens on it once the socket is closed
    started = time.monotonic()
    with capture_logs() as logged, pytest.raises(NatsUnreachable) as info:
        await connect(f"nats://127.0.0.1:{port}", {}, first_connect_s=1.5)
    assert 1.5 <= time.monotonic() - started < 10
    assert info.value.kind == "nats_unreachable" and "1.5s" in str(info.value)
    assert any(e["event"] == "NATS not reachable yet; retrying" for e in logged)
