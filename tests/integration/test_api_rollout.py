"""Rollouts over the operator API and the ``hsmfleet rollout`` verbs, on a real server with real
nodes and cosigners: roles, a JSON error for every bad request (nothing changes), the plan's
typed refusals, start / approve / status --watch / abort with their exit codes, the validation
bundle and the stage-bundle chain served for clients and auditors."""

from __future__ import annotations

import inspect
import json

import aiohttp
import pytest
from aiohttp import web

from messages.bundle import StageBundle, check_chain
from messages.canonical import b64
from messages.verifier_state import VerifierState
from messages.verify import verify_bundle
from ops.cli import build_parser
from ops.verifier_files import save_pins
from orchestrator.api.app import create_app
from orchestrator.api.requests import ORCHESTRATOR
from orchestrator.shell.keys import load_signer, save_rotation_chain
from tests.replay.fleet import OPERATOR_TOKEN, READ_TOKEN, wait_for
from tests.replay.rolloutbed import served_bed

OP = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
READ = {"Authorization": f"Bearer {READ_TOKEN}"}


@pytest.fixture
async def api(tmp_path, rollout_template):
    async with served_bed(rollout_template, tmp_path, "api-rollout") as bed:
        settings = bed.settings
        app = create_app(settings, load_signer(settings.key_file))
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        orch = app[ORCHESTRATOR]
        await wait_for(lambda: orch.active and len(orch.state.nodes) == 5, what="nodes")
        base = f"http://{host}:{port}"
        async with aiohttp.ClientSession(base_url=base) as http:
            yield http, orch, bed, base
        await runner.cleanup()


async def call(http, method, path, headers=None, **kw):
    async with http.request(method, path, headers=headers or {}, **kw) as resp:
        return resp.status, await resp.json(content_type=None)


async def hsmfleet(*argv: str) -> int:
    """Run a verb in this process, as ``hsmfleet ARGV`` would."""
    args = build_parser().parse_args(list(argv))
    result = args.run(args)
    return await result if inspect.isawaitable(result) else result


def plan_toml(bed, path, fleet="fleet-1", gate=True) -> None:
    pins = "\n".join(
        f'[[cosigners.pin]]\nid = "{p.id}"\nname = "{p.pin.name}"\n'
        f'public_key = "{b64(p.pin.public_key)}"\n'
        for p in bed.peers
    )
    path.write_text(
        f'fleet = "{fleet}"\n[members]\ncount = 5\nmin_per_domain = 1\n'
        '[keys]\nvault = "ed25519"\n[cosigners]\nthreshold = 2\n'
        f"{pins}[rollout]\nwave_size = 2\napprove_publish = {'true' if gate else 'false'}\n"
    )


async def test_bad_rollout_requests_get_json_errors_and_change_nothing(api):
    http, orch, bed, _ = api
    plan = bed.plan()
    cases = [
        ("POST", "/v1/rollouts", {}, {"json": plan}, 401, "unauthenticated"),
        ("POST", "/v1/rollouts", READ, {"json": plan}, 403, "forbidden"),
        ("POST", "/v1/rollouts", OP, {"data": b"{"}, 400, "bad_request"),
        ("POST", "/v1/rollouts", OP, {"json": {**plan, "colour": 1}}, 422, "plan_unknown_setting"),
        ("POST", "/v1/rollouts", OP, {"json": {**plan, "fleet": "a.b"}}, 422, "plan_fleet"),
        (
            "POST",
            "/v1/rollouts",
            OP,
            {"json": bed.plan(members={"ids": ["node-1", "node-1", "node-2"]})},
            422,
            "plan_members",
        ),
        (
            "POST",
            "/v1/rollouts",
            OP,
            {
                "json": bed.plan(
                    members={"ids": ["node-1", "ghost", "node-2"]}, rollout={"wave_size": 1}
                )
            },
            404,
            "unknown_node",
        ),
        ("GET", "/v1/rollouts/nope", READ, {}, 404, "unknown_rollout"),
        ("POST", "/v1/rollouts/nope/pause", OP, {}, 404, "unknown_rollout"),
        ("POST", "/v1/rollouts/fleet-1/dance", OP, {}, 404, "not_found"),
        ("POST", "/v1/rollouts/fleet-1/pause", READ, {}, 403, "forbidden"),
        ("GET", "/v1/fleets/nope/bundle", READ, {}, 404, "not_found"),
        ("GET", "/v1/fleets/nope/stage-bundles", READ, {}, 404, "not_found"),
    ]
    last = orch.last_seq
    for method, path, headers, kw, status, kind in cases:
        got, body = await call(http, method, path, headers, **kw)
        assert (got, body["error"]) == (status, kind), (path, body)
    assert orch.last_seq == last and not orch.state.book.rollouts


async def test_a_rollout_through_the_api_and_the_cli(api, tmp_path, capsys):
    http, orch, bed, base = api
    common = ["--api", base, "--token", OPERATOR_TOKEN]
    plan_toml(bed, tmp_path / "plan.toml")
    assert await hsmfleet("rollout", "start", str(tmp_path / "plan.toml"), *common) == 0
    status, view = await call(http, "GET", "/v1/rollouts/fleet-1", READ)
    assert status == 200 and view["status"] == "running"
    status, body = await call(http, "GET", "/v1/fleets/fleet-1/bundle", READ)
    assert (status, body["error"]) == (404, "not_found")  # nothing published yet
    await wait_for(
        lambda: orch.state.book.of_fleet("fleet-1").awaiting_approval, timeout=60, what="gate"
    )
    status, body = await call(http, "POST", "/v1/rollouts/fleet-1/resume", OP)
    assert status == 200  # resuming a running rollout changes nothing
    assert await hsmfleet("rollout", "approve", "fleet-1", *common) == 0
    code = await hsmfleet("rollout", "status", "fleet-1", "--watch", "--interval", "0.1", *common)
    assert code == 0
    assert "active" in capsys.readouterr().out

    status, bundle = await call(http, "GET", "/v1/fleets/fleet-1/bundle", READ)
    assert status == 200
    rollout = orch.state.book.of_fleet("fleet-1")
    verify_bundle(bundle, bed.pins(), VerifierState(), rollout.artifact.not_before_ms + 1)
    out = tmp_path / "bundle.json"
    assert await hsmfleet("rollout", "bundle", "fleet-1", "--out", str(out), *common) == 0
    assert json.loads(out.read_text()) == bundle
    status, chain = await call(http, "GET", "/v1/fleets/fleet-1/stage-bundles", READ)
    assert status == 200 and chain["logged"] == 5
    assert check_chain([StageBundle.from_json(b) for b in chain["bundles"]]).serial == 5
    # The auditor walks both cosigners' logs and cross-checks the orchestrator's evidence.
    save_pins(tmp_path / "pins.json", bed.pins())
    capsys.readouterr()
    code = await hsmfleet(
        "audit", "--pins", str(tmp_path / "pins.json"), "--orchestrator", base,
        "--token", READ_TOKEN,
    )  # fmt: skip
    report = capsys.readouterr().out
    assert code == 0, report
    assert report.count("the orchestrator's 5 stage bundle(s) match") == 2
    assert "epoch 1: member added node-1 in dc1" in report
    status, body = await call(http, "POST", "/v1/rollouts/fleet-1/abort", OP)
    assert (status, body["error"]) == (409, "rollout_conflict")
    status, body = await call(http, "POST", "/v1/rollouts", OP, json=bed.plan())
    assert (status, body["error"]) == (409, "fleet_active")
    # A cosigner rotates its log key: the bundle served carries the logged rotation, which a
    # client pinned to the old key walks; the orchestrator follows it for later documents.
    rotation = await bed.cosigners[0].cosigner.rotate_key()
    client = orch.cosigning.client(rollout.plan.cosigners)
    notice = client.notice(await client.log(rotation))
    save_rotation_chain(bed.settings, [notice])
    status, served = await call(http, "GET", "/v1/fleets/fleet-1/bundle", READ)
    assert status == 200 and served["rotations"] == [notice.to_json()]
    now = rollout.artifact.not_before_ms + 1
    assert verify_bundle(served, bed.pins(), VerifierState(), now).rotations == (rotation,)
    # Once the fleet is retired, its validation bundle is gone: clients must refuse the fleet.
    retire = {"force": True, "drain_s": 0, "reason": "test"}
    status, body = await call(http, "POST", "/v1/fleets/fleet-1/retire", OP, json=retire)
    assert status == 202, body
    await wait_for(
        lambda: orch.state.book.fleets["fleet-1"].retirement is not None,
        timeout=60,
        what="the retirement",
    )
    status, body = await call(http, "GET", "/v1/fleets/fleet-1/bundle", READ)
    assert (status, body["error"]) == (410, "fleet_retired")
    # The retirement's bundles were logged with the rotated key: the core knows the rotation.
    assert orch.state.signer_keys[rotation.signer][-1].public_key == rotation.new.public_key


async def test_status_watch_exits_non_zero_when_the_rollout_is_aborted(api, tmp_path, capsys):
    http, _, bed, base = api
    common = ["--api", base, "--token", OPERATOR_TOKEN]
    plan_toml(bed, tmp_path / "plan.toml", fleet="fleet-2")
    assert await hsmfleet("rollout", "plan", str(tmp_path / "plan.toml")) == 0
    assert "plan is valid" in capsys.readouterr().out
    capsys.readouterr()
    assert await hsmfleet("rollout", "start", str(tmp_path / "plan.toml"), "--json", *common) == 0
    # The orchestrator runs in this process and logs to the same stdout; the verb's own output
    # is the JSON view alone, no human line before it (so `| jq` works).
    printed = capsys.readouterr().out.splitlines()
    own = [line for line in printed if not line.startswith("20")]  # log lines start with a date
    started = json.loads("\n".join(own))
    assert (started["fleet"], started["status"]) == ("fleet-2", "running")
    assert await hsmfleet("rollout", "pause", "fleet-2", "--reason", "hold on", *common) == 0
    assert await hsmfleet("rollout", "abort", "fleet-2", *common) == 0
    code = await hsmfleet("rollout", "status", "fleet-2", "--watch", "--interval", "0.1", *common)
    assert code == 1
    status, body = await call(http, "POST", "/v1/rollouts/fleet-2/resume", OP)
    assert (status, body["error"]) == (409, "rollout_conflict")


async def test_plan_verb_exit_codes(tmp_path, capsys):
    (tmp_path / "bad.toml").write_text('fleet = "x"\n[members]\ncount = 0\n')
    assert await hsmfleet("rollout", "plan", str(tmp_path / "bad.toml")) == 1
    assert "plan_" in capsys.readouterr().out
    # An unreadable plan is refused like any bad plan, with its kind.
    assert await hsmfleet("rollout", "plan", str(tmp_path / "nope.toml")) == 1
    assert "plan_unreadable" in capsys.readouterr().out
