"""NATS security generation without a server: layouts, nkeys, permissions, configs, bundles."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import nkeys
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from messages import subjects
from messages.quorum import PHASES
from messages.vault import OPERATIONS
from ops import cli
from ops.natsauth import render
from ops.natsauth.bundle import BundleError, open_bundle, write_bundle
from ops.natsauth.nkey import user_key
from ops.natsauth.permissions import (
    ACCOUNT_OF,
    ACCOUNTS,
    LEASE_STREAM,
    SHARES,
    Grant,
    grant,
)
from ops.natsauth.tls import issue
from orchestrator.shell.lease import BUCKET
from transport.parties import LayoutError, Party, load_layout, parse_layout

LAYOUT_JSON = {
    "orchestrators": ["o1", "o2"],
    "nodes": [{"id": "n1", "fleets": ["f1", "f2"]}, {"id": "n2", "fleet": "f1"}, {"id": "n3"}],
    "cosigners": ["c1"],
    "clients": ["app"],
    "auditors": ["audit"],
    "operators": ["ops"],
}
LAYOUT = parse_layout(LAYOUT_JSON)

# A user nkey pair from the NATS documentation (nkey authentication example).
DOC_SEED = "SUACSSL3UAHUDXKFSNVUZRF5UHPMWZ6BFDTJ7M6USDXIEDNPPQYYYCU3VY"
DOC_PUBLIC = "UDXU4RCSJNZOIQHZNWXHXORDPRTGNJAHAHFRGZNEEJCPQTT2M7NLCNF4"


def matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: ``*`` is one token, a final ``>`` one or more."""
    p, s = pattern.split("."), subject.split(".")
    for i, token in enumerate(p):
        if token == ">":
            return len(s) > i
        if i >= len(s) or (token != "*" and token != s[i]):
            return False
    return len(p) == len(s)


def allowed(patterns: tuple[str, ...], subject: str) -> bool:
    return any(matches(p, subject) for p in patterns)


def party(role: str, party_id: str) -> Grant:
    return grant(LAYOUT.party(role, party_id))


# --- layout ------------------------------------------------------------------------------


def test_layout_reads_every_role_in_order():
    assert [p.name for p in LAYOUT.parties] == [
        "orchestrator-o1",
        "orchestrator-o2",
        "node-n1",
        "node-n2",
        "node-n3",
        "cosigner-c1",
        "client-app",
        "auditor-audit",
        "operator-ops",
    ]
    assert LAYOUT.party("node", "n1").fleets == ("f1", "f2")
    assert LAYOUT.party("node", "n2").fleets == ("f1",)
    assert LAYOUT.party("node", "n3").fleets == ()
    assert LAYOUT.party("client", "app").inbox == "_INBOX.client.app"
    assert parse_layout(LAYOUT.to_json()) == LAYOUT
    assert parse_layout({}) == parse_layout({"nodes": []})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "a layout is a JSON object"),
        ({"node": []}, "unknown layout keys"),
        ({"cosigners": "c1"}, "cosigners is a list"),
        ({"cosigners": ["c.1"]}, "cosigner id is not a subject token"),
        ({"clients": [7]}, "client id is not a subject token"),
        ({"orchestrators": ["o1", "o1"]}, "orchestrator id appears twice"),
        ({"nodes": ["n1"]}, "a node is an object"),
        ({"nodes": [{"id": "n1", "fleet": "f1", "fleets": ["f1"]}]}, "either fleet or fleets"),
        ({"nodes": [{"id": "n1", "domain": "x"}]}, "unknown node fields"),
        ({"nodes": [{"id": "n1", "fleets": "f1"}]}, "a node's fleets are a list"),
        ({"nodes": [{"id": "n1", "fleets": ["f1", "f1"]}]}, "a node lists a fleet twice"),
        ({"nodes": [{"id": "n1", "fleets": ["f>"]}]}, "fleet id is not a subject token"),
        ({"nodes": [{"fleets": []}]}, "node id is not a subject token"),
        ({"nodes": [{"id": "n1"}, {"id": "n1"}]}, "node id appears twice"),
    ],
)
def test_bad_layouts_are_refused(data, message):
    with pytest.raises(LayoutError, match=message) as caught:
        parse_layout(data)
    assert caught.value.kind == "nats_layout"


def test_layout_files_that_cannot_be_read_are_refused(tmp_path):
    with pytest.raises(LayoutError, match="cannot read the layout file"):
        load_layout(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{nodes: [}")
    with pytest.raises(LayoutError, match="not JSON"):
        load_layout(broken)


def test_unknown_party_is_an_error():
    with pytest.raises(LayoutError, match="no such party"):
        LAYOUT.party("node", "n9")


# --- nkeys -------------------------------------------------------------------------------


def test_user_key_matches_the_documented_vector():
    raw = base64.b32decode(DOC_SEED + "=" * (-len(DOC_SEED) % 8))[2:34]
    key = user_key(lambda n: raw[:n])
    assert (key.seed, key.public) == (DOC_SEED, DOC_PUBLIC)
    assert DOC_SEED not in repr(key)


def test_user_keys_are_fresh_user_seeds():
    a, b = user_key(), user_key()
    assert a.seed.startswith("SU") and a.public.startswith("U")
    assert a.seed != b.seed
    assert nkeys.from_seed(bytearray(a.seed.encode())).public_key.decode() == a.public


# --- permissions -------------------------------------------------------------------------


def test_shares_carry_exactly_the_subjects_of_design_6():
    for verb in subjects.NODE_VERBS:
        assert allowed(("fleet.node.*.cmd.*",), subjects.node_command("n1", verb))
    for op in OPERATIONS:
        assert allowed(("fleet.vault.*.*",), subjects.vault("f1", op))
    assert allowed(("cosign.*.sign",), subjects.cosign("c1"))
    assert allowed(("fleet.node.*.status",), subjects.node_status("n1"))
    assert {s.owner for s in SHARES} | {s.to for s in SHARES} <= set(ACCOUNTS)
    assert not any(matches(s.subject, subjects.event("rollout", "f1")) for s in SHARES)


def test_a_node_reaches_its_own_commands_and_its_fleets_only():
    n1 = party("node", "n1")
    for verb in subjects.NODE_VERBS:
        assert allowed(n1.subscribe, subjects.node_command("n1", verb))
        assert not allowed(n1.subscribe, subjects.node_command("n2", verb))
        assert not allowed(n1.publish, subjects.node_command("n1", verb))
    assert allowed(n1.publish, subjects.node_status("n1"))
    assert not allowed(n1.publish, subjects.node_status("n2"))
    for fleet in ("f1", "f2"):
        for phase in PHASES:
            assert allowed(n1.subscribe, subjects.quorum(fleet, phase))
        for op in OPERATIONS:
            assert allowed(n1.subscribe, subjects.vault(fleet, op))
    assert not allowed(n1.subscribe, subjects.quorum("f3", "prepare"))
    assert not allowed(n1.publish, subjects.quorum("f1", "config"))  # the operator's
    assert not n1.responses


def test_only_orchestrators_write_the_log_and_the_lease():
    writes = [
        subjects.event("rollout", "f1"),
        f"$JS.API.STREAM.CREATE.{subjects.EVENT_STREAM}",
        f"$JS.API.STREAM.CREATE.{LEASE_STREAM}",
        f"$KV.{BUCKET}.active",
    ]
    for p in LAYOUT.parties:
        g = grant(p)
        for subject in writes:
            assert allowed(g.publish, subject) == (p.role == "orchestrator"), (p.name, subject)
        for verb in ("DELETE", "PURGE", "UPDATE", "MSG.DELETE"):
            assert not allowed(g.publish, f"$JS.API.STREAM.{verb}.{subjects.EVENT_STREAM}")
        jetstream = [s for s in g.publish if s.startswith("$JS")]
        assert not jetstream or ACCOUNT_OF[p.role] == "ORCHESTRATORS"
    audit = party("auditor", "audit")
    assert allowed(audit.publish, f"$JS.API.CONSUMER.CREATE.{subjects.EVENT_STREAM}")
    assert not allowed(audit.publish, f"$JS.API.STREAM.INFO.{LEASE_STREAM}")


def test_every_party_subscribes_to_its_own_inbox_only():
    for p in LAYOUT.parties:
        g = grant(p)
        assert allowed(g.subscribe, f"{p.inbox}.abc.1")
        others = [q for q in LAYOUT.parties if q != p]
        assert not any(allowed(g.subscribe, f"{q.inbox}.abc.1") for q in others), p.name
        assert not allowed(g.subscribe, "_INBOX.abc.1")


def test_cosigners_clients_and_operators():
    c1 = party("cosigner", "c1")
    assert c1.publish == () and c1.responses
    assert allowed(c1.subscribe, subjects.cosign("c1"))
    assert not allowed(c1.subscribe, subjects.cosign("c2"))
    app = party("client", "app")
    assert all(allowed(app.publish, subjects.vault("any", op)) for op in OPERATIONS)
    assert not allowed(app.publish, subjects.quorum("f1", "prepare"))
    ops = party("operator", "ops")
    assert allowed(ops.publish, subjects.quorum("f1", "config"))
    assert not allowed(ops.publish, subjects.quorum("f1", "accept"))


# --- configuration text ------------------------------------------------------------------


def test_auth_config_has_one_user_per_party_in_its_account():
    keys = {p.name: user_key().public for p in LAYOUT.parties}
    text = render.auth_config(LAYOUT, keys)
    accounts = json.loads(text.split("accounts: ", 1)[1])
    assert list(accounts) == list(ACCOUNTS)
    users = {u["nkey"]: name for name, a in accounts.items() for u in a["users"]}
    assert users == {keys[p.name]: ACCOUNT_OF[p.role] for p in LAYOUT.parties}
    assert accounts["ORCHESTRATORS"]["jetstream"] == "enabled"
    assert all("jetstream" not in a for name, a in accounts.items() if name != "ORCHESTRATORS")
    cosigner = accounts["COSIGNERS"]["users"][0]["permissions"]
    # An empty allow list would mean "no limit" to the server: it is written as deny-all.
    assert cosigner["publish"] == {"deny": [">"]}
    assert cosigner["allow_responses"] is True
    config = {e["service"]: e for e in accounts["NODES"]["exports"] if "service" in e}
    assert config["fleet.q.*.config"]["response_type"] == "Stream"
    assert config["fleet.node.*.cmd.*"]["accounts"] == ["ORCHESTRATORS"]


def test_server_configs_add_auth_tls_and_route_tls(tmp_path):
    files = render.TlsFiles(ca=tmp_path / "ca.pem", cert=tmp_path / "s.pem", key=tmp_path / "s.key")
    single = render.server_config(cluster=False, client_tls=None, route_tls=files)
    assert "include ./auth.conf" in single
    assert "tls:" not in single and "cluster" not in single
    clustered = render.server_config(cluster=True, client_tls=files, route_tls=files)
    assert clustered.count('"verify": true') == 1
    assert "port: $HSMFLEET_NATS_CLUSTER_PORT" in clustered
    assert clustered.startswith(render.HEADER)


# --- bundles -----------------------------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_bundle_files_are_private_and_consistent(tmp_path):
    bundle = write_bundle(LAYOUT, tmp_path / "bundle", tls=True, names=("localhost", "10.0.0.7"))
    root = bundle.root
    assert mode(root) == mode(root / "keys") == mode(root / "tls") == 0o700
    files = [p for p in root.rglob("*") if p.is_file()]
    assert files and all(mode(p) == 0o600 for p in files)
    auth = (root / "auth.conf").read_text()
    for p in LAYOUT.parties:
        seed = bundle.seed_file(p).read_bytes().strip()
        assert nkeys.from_seed(bytearray(seed)).public_key.decode() in auth
        assert seed.decode() not in auth
    assert open_bundle(root) == bundle
    options = bundle.connect_options("node", "n2")
    assert options["inbox_prefix"] == "_INBOX.node.n2"
    assert options["nkeys_seed"] == str(root / "keys" / "node-n2.nk")
    assert options["tls"].verify_mode.name == "CERT_REQUIRED"
    assert str(root / "tls" / "server.pem") in bundle.config("single").read_text()


def test_server_certificate_is_issued_by_the_ca_for_the_names():
    material = issue(("localhost", "127.0.0.1"))
    ca = x509.load_pem_x509_certificate(material.ca_cert)
    cert = x509.load_pem_x509_certificate(material.server_cert)
    cert.verify_directly_issued_by(ca)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)


def test_a_bundle_never_overwrites_anything(tmp_path):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes").write_text("keep")
    with pytest.raises(BundleError, match="not an empty directory") as caught:
        write_bundle(LAYOUT, taken)
    assert caught.value.kind == "nats_bundle"
    assert [p.name for p in taken.iterdir()] == ["notes"]
    with pytest.raises(BundleError, match="parent directory does not exist"):
        write_bundle(LAYOUT, tmp_path / "no" / "such")
    with pytest.raises(BundleError, match="at least one name"):
        write_bundle(LAYOUT, tmp_path / "nameless", names=())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert write_bundle(LAYOUT, empty).root == empty


def test_what_is_not_a_bundle_is_refused(tmp_path):
    with pytest.raises(BundleError, match="not a security bundle"):
        open_bundle(tmp_path)
    (tmp_path / "bundle.json").write_text("{")
    with pytest.raises(BundleError, match="not JSON"):
        open_bundle(tmp_path)
    (tmp_path / "bundle.json").write_text(json.dumps({"format": 9}))
    with pytest.raises(BundleError, match="unknown bundle format"):
        open_bundle(tmp_path)
    (tmp_path / "bundle.json").write_text(json.dumps({"format": 1, "tls": "yes"}))
    with pytest.raises(BundleError, match="whether clients use TLS"):
        open_bundle(tmp_path)
    (tmp_path / "bundle.json").write_text(json.dumps({"format": 1, "tls": False, "layout": []}))
    with pytest.raises(BundleError, match="layout is invalid"):
        open_bundle(tmp_path)


def test_missing_seed_and_unknown_config_are_errors(tmp_path):
    bundle = write_bundle(LAYOUT, tmp_path / "bundle")
    bundle.seed_file(Party("client", "app")).unlink()
    with pytest.raises(BundleError, match="seed file is missing"):
        bundle.connect_options("client", "app")
    with pytest.raises(LayoutError, match="no such party"):
        bundle.connect_options("client", "nobody")
    with pytest.raises(BundleError, match="no such server config"):
        bundle.config("leaf")


# --- CLI ---------------------------------------------------------------------------------


def test_cli_writes_a_bundle(tmp_path, capsys, keep_logging):
    layout = tmp_path / "layout.json"
    layout.write_text(json.dumps(LAYOUT_JSON))
    out = tmp_path / "out"
    argv = ["nats", "secure", "--layout", str(layout), "--out", str(out)]
    assert cli.main([*argv, "--tls", "--tls-name", "nats.example"]) == 0
    assert f"wrote {len(LAYOUT.parties)} users to {out}" in capsys.readouterr().out
    bundle = open_bundle(out)
    assert bundle.tls and bundle.layout == LAYOUT
    cert = x509.load_pem_x509_certificate((out / "tls" / "server.pem").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost", "nats.example"]


def test_cli_refuses_bad_input_and_writes_nothing(tmp_path, capsys, keep_logging):
    layout = tmp_path / "layout.json"
    layout.write_text(json.dumps({"nodes": [{"id": "n 1"}]}))
    out = tmp_path / "out"
    assert cli.main(["nats", "secure", "--layout", str(layout), "--out", str(out)]) == 2
    assert "node id is not a subject token" in capsys.readouterr().err
    assert not out.exists()
    layout.write_text(json.dumps(LAYOUT_JSON))
    out.mkdir()
    (out / "x").write_text("")
    assert cli.main(["nats", "secure", "--layout", str(layout), "--out", str(out)]) == 2
    assert "not an empty directory" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["x"]
