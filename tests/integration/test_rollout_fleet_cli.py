"""``hsmfleet fleet ...`` over the orchestrator's HTTP API (the app of
:func:`orchestrator.api.app.create_app` with the fleet-flow routes added), on a real nats-server
with five node daemons and two cosigners: a rotation followed with ``--watch`` to the end of
its overlap, a schedule, refusals with exit code 1 and their error kinds, a retirement and its
notice."""

from __future__ import annotations

import json

import pytest
from aiohttp.test_utils import TestServer

from messages.ids import display_time, parse_time
from messages.inputs import StartRollout
from messages.plan import parse_plan
from messages.verify import parse_notice
from ops.cli import build_parser
from orchestrator.api.app import create_app
from orchestrator.api.requests import ORCHESTRATOR
from orchestrator.cli.orchestrator import ApiError, _call
from orchestrator.shell.keys import load_signer
from tests.replay.fleet import OPERATOR_TOKEN, READ_TOKEN, wait_for
from tests.replay.rolloutbed import served_bed


@pytest.fixture
async def api(tmp_path, rollout_template):
    async with served_bed(rollout_template, tmp_path, "fleet-cli") as bed:
        settings = bed.settings
        app = create_app(settings, load_signer(settings.key_file))
        async with TestServer(app) as http:
            orch = app[ORCHESTRATOR]
            await wait_for(lambda: orch.active, what="the lease")
            await wait_for(lambda: len(orch.state.nodes) == 5, what="five announcements")
            yield str(http.make_url("")), orch, bed


async def run(url: str, *argv: str, token: str = OPERATOR_TOKEN) -> int:
    args = build_parser().parse_args([*argv, "--api", url, "--token", token])
    return await args.run(args)


async def activate(orch, bed, fleet: str) -> None:
    await orch.submit(StartRollout(plan=parse_plan(bed.plan(fleet)), requested_by="test"))
    await wait_for(
        lambda: orch.state.book.fleets[fleet].active_epoch is not None,
        timeout=60,
        what=f"{fleet} to activate",
    )


async def test_rotate_schedule_refusals_and_retire_through_the_cli(api, capsys):
    url, orch, bed = api
    assert await run(url, "fleet", "rotate", "fleet-1") == 1  # no such fleet
    assert "status=404" in capsys.readouterr().err
    with pytest.raises(ApiError) as refused:
        await _call(
            build_parser().parse_args(["fleet", "status", "fleet-1", "--api", url]),
            "POST",
            "/v1/fleets/fleet-1/rotate",
        )
    assert refused.value.detail["status"] == 401
    await activate(orch, bed, "fleet-1")

    code = await run(url, "fleet", "rotate", "fleet-1", "--overlap", "2s", "--watch", "--json")
    assert code == 0
    out = capsys.readouterr().out.splitlines()
    views = [json.loads(line) for line in out if line.startswith("{")]  # logs go there too
    assert views[0]["kind"] == "rotation" and views[0]["status"] == "running"
    assert views[-1]["legacy_closed"] and views[-1]["fleet_state"]["active_epoch"] == 2
    assert [b["stage"] for b in views[-1]["bundles"]][-1] == "destroy"
    assert {v["stage"] for v in views} >= {"enroll", "active", "destroy"}  # overlap: 2 s

    assert await run(url, "fleet", "schedule", "fleet-1", "--every", "30", "--overlap", "1d") == 0
    assert "every 30 day(s)" in capsys.readouterr().out
    chain = orch.state.book.fleets["fleet-1"]
    assert (chain.rotate_every_days, chain.rotation_overlap_s) == (30, 86400)
    assert await run(url, "fleet", "schedule", "fleet-1", "--every", "1", "--overlap", "2d") == 1
    assert "overlap must end before" in capsys.readouterr().err
    assert await run(url, "fleet", "replace-member", "fleet-1", "node-9", "node-1") == 1
    assert "not a member" in capsys.readouterr().err
    assert await run(url, "fleet", "retire", "fleet-1") == 1  # no successor, not forced
    assert "status=409" in capsys.readouterr().err
    assert await run(url, "fleet", "rotate", "fleet-1", token=READ_TOKEN) == 1
    capsys.readouterr()

    await activate(orch, bed, "fleet-2")
    argv = ["fleet", "retire", "fleet-1", "--successor", "fleet-2", "--drain", "1s", "--watch"]
    assert await run(url, *argv) == 0
    out = capsys.readouterr().out
    assert "users move to fleet-2" in out and "[retired]" in out
    assert await run(url, "fleet", "retirement", "fleet-1") == 0
    printed = capsys.readouterr().out
    notice = parse_notice(json.loads(printed[printed.index("{\n") :]))
    assert (notice.logged.fleet, notice.logged.successor) == ("fleet-1", "fleet-2")
    # The watch showed the drain's end, to the second, as the logged notice's retired_at.
    drained = display_time(parse_time(notice.logged.retired_at))
    assert f"keys destroyed after {drained}" in out
    assert await run(url, "fleet", "rotate", "fleet-1") == 1  # retired
    assert "retiring" in capsys.readouterr().err
