"""The orchestrator's configuration and key files: every bad input is a typed error."""

from __future__ import annotations

import argparse
import json

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from messages.errors import HsmfleetError
from orchestrator.cli.orchestrator import keygen_command
from orchestrator.shell.config import ConfigError, Settings
from orchestrator.shell.keys import KeyFileError, generate, load_signer, load_trust
from tests.replay.kit import MEASUREMENT, Vendor

BASE = {
    "holder": "orch-a",
    "key_file": "orchestrator.key",
    "vendor_roots": ["root.pem"],
    "allowed_measurements": [MEASUREMENT],
}


def write(tmp_path, raw) -> Settings:
    path = tmp_path / "orchestrator.json"
    path.write_text(raw if isinstance(raw, str) else json.dumps(raw))
    return Settings.load(path)


def test_good_configuration_yields_the_policy(tmp_path):
    vendor = Vendor()
    (tmp_path / "root.pem").write_bytes(vendor.root.public_bytes(Encoding.PEM))
    settings = write(tmp_path, {**BASE, "tokens": {"t1": "operator"}, "listen": "127.0.0.1:9"})
    assert settings.key_file == tmp_path / "orchestrator.key"
    assert settings.host_port == ("127.0.0.1", 9)
    policy = settings.policy()
    assert policy.vendor_roots == (vendor.root_der,)
    assert policy.allowed_measurements == (MEASUREMENT,) and policy.nonce_ttl_ms == 30_000


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ("{not json", "cannot read"),
        ("[]", "config must be an object"),
        ({**BASE, "auto_enrol": True}, "unknown settings"),
        ({k: v for k, v in BASE.items() if k != "holder"}, "config.holder is missing"),
        ({**BASE, "tokens": {"t": "admin"}}, "config.tokens.t must be one of ['read', 'operator']"),
        ({**BASE, "tokens": ["t"]}, "config.tokens must be an object"),
        ({**BASE, "holder": "orch a"}, "not a valid subject token"),
        ({**BASE, "allowed_measurements": "abc"}, "config.allowed_measurements must be a list"),
        ({**BASE, "vendor_roots": [1]}, "config.vendor_roots[0] must be a string"),
        ({**BASE, "lease_ttl_s": "fast"}, "config.lease_ttl_s must be a number"),
        ({**BASE, "replicas": 2.5}, "config.replicas must be an integer"),
        ({**BASE, "auto_enroll": 1}, "config.auto_enroll must be a boolean"),
        ({**BASE, "nats_seed": 7}, "config.nats_seed fits none of its types"),
    ],
)
def test_bad_configuration_is_refused_naming_its_key(tmp_path, raw, words):
    """Each bad value is refused with the key it sits under, before anything is built."""
    with pytest.raises(ConfigError) as exc:
        write(tmp_path, raw)
    assert words in str(exc.value)


def test_unreadable_vendor_root_is_refused(tmp_path):
    settings = write(tmp_path, BASE)
    with pytest.raises(ConfigError, match="cannot read a vendor root"):
        settings.policy()
    (tmp_path / "root.pem").write_text(
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    )
    with pytest.raises(ConfigError, match=r"not X\.509"):
        settings.policy()


def test_listen_must_name_a_port(tmp_path):
    with pytest.raises(ConfigError, match="HOST:PORT"):
        _ = write(tmp_path, {**BASE, "listen": "localhost"}).host_port


def test_key_files(tmp_path):
    signer = generate(tmp_path / "k", tmp_path / "k.pub")
    assert load_signer(tmp_path / "k").public_key == signer.public_key
    assert len(load_trust(tmp_path / "k.pub")) == 1
    with pytest.raises(FileExistsError):
        generate(tmp_path / "k", tmp_path / "k.pub")
    (tmp_path / "short").write_text("abcd")
    for path in (tmp_path / "short", tmp_path / "missing"):
        with pytest.raises(KeyFileError):
            load_signer(path)


def test_keygen_verb_writes_a_key_once(tmp_path, capsys):
    args = argparse.Namespace(dir=tmp_path / "keys")
    assert keygen_command(args) == 0
    public = capsys.readouterr().out.strip()
    assert (tmp_path / "keys" / "orchestrator.pub").read_text().strip() == public
    with pytest.raises(HsmfleetError, match="refusing to overwrite"):
        keygen_command(args)
