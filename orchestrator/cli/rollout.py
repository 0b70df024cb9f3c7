"""``hsmfleet rollout ...``: plan, start, watch and steer fleet rollouts over the API.

- ``rollout plan FILE``: check a plan and show what the rollout would do (nothing is sent);
- ``rollout start FILE [--watch]``: start it (a rollout of the same fleet in progress is
  superseded);
- ``rollout status FLEET [--watch]``: where the rollout is; with ``--watch``, follow it until it
  is active (or, for a fleet's later flows, rotated or retired: exit 0), or aborted, failed or
  superseded (exit 1). Time spent paused does not count against ``--timeout``, as it does not
  count against the rollout's own deadlines;
- ``rollout pause|resume|abort|retry|approve FLEET [--reason TEXT]``;
- ``rollout bundle FLEET [--out FILE]``: the fleet's validation bundle, for clients.

Exit codes: 0 done (plan valid, rollout active); 1 negative (plan refused, rollout aborted or
failed); 2 error (unreadable file, API unreachable); 3 timed out waiting.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from messages.canonical import canonical
from messages.inputs import ROLLOUT_ACTIONS
from messages.plan import PlanError, describe
from orchestrator.cli.orchestrator import (
    DONE,
    NEGATIVE,
    TIMED_OUT,
    ApiError,
    _api_arguments,
    _call,
)
from orchestrator.cli.plan_file import load_plan

ENDED = ("aborted", "failed", "superseded")


def register(verbs: argparse._SubParsersAction) -> None:
    rollout = verbs.add_parser("rollout", help="plan, start, watch and steer fleet rollouts")
    actions = rollout.add_subparsers(dest="rollout_action", metavar="ACTION", required=True)

    plan = actions.add_parser("plan", help="check a plan and show what it would do (dry run)")
    plan.add_argument("file", type=Path)
    plan.add_argument("--json", action="store_true", help="print the plan's JSON form")
    plan.set_defaults(run=plan_command)

    start = actions.add_parser("start", help="start a rollout by a plan")
    start.add_argument("file", type=Path)
    watch_arguments(start)
    _api_arguments(start)
    start.set_defaults(run=start_command)

    status = actions.add_parser("status", help="where a fleet's rollout is")
    status.add_argument("fleet")
    watch_arguments(status)
    _api_arguments(status)
    status.set_defaults(run=status_command)

    for action in ROLLOUT_ACTIONS:
        verb = actions.add_parser(action, help=f"{action} the fleet's rollout")
        verb.add_argument("fleet")
        verb.add_argument("--reason", default="", help="recorded with the action")
        _api_arguments(verb)
        verb.set_defaults(run=operate_command, action=action)

    bundle = actions.add_parser("bundle", help="the fleet's validation bundle")
    bundle.add_argument("fleet")
    bundle.add_argument("--out", type=Path, help="write it here instead of to stdout")
    _api_arguments(bundle)
    bundle.set_defaults(run=bundle_command)


def watch_arguments(parser: argparse.ArgumentParser) -> None:
    """``--watch``, ``--timeout`` and ``--interval`` of a verb that can follow its flow."""
    parser.add_argument("--watch", action="store_true", help="follow it until it ends")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds of running time")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between looks")
    parser.add_argument(
        "--reconnect",
        type=float,
        default=30.0,
        help="seconds to keep trying while the orchestrator cannot be reached (default 30)",
    )


def plan_command(args: argparse.Namespace) -> int:
    try:
        plan = load_plan(args.file)
    except PlanError as exc:
        print(f"plan refused ({exc.kind}): {exc}")
        return NEGATIVE
    if args.json:
        print(json.dumps(json.loads(canonical(plan.to_json())), indent=2))
    else:
        print("\n".join(["plan is valid; the rollout would:", *describe(plan)]))
    return DONE


async def start_command(args: argparse.Namespace) -> int:
    try:
        plan = load_plan(args.file)
    except PlanError as exc:
        print(f"plan refused ({exc.kind}): {exc}")
        return NEGATIVE
    view = await _call(args, "POST", "/v1/rollouts", json=plan.to_json())
    if args.json:
        # One JSON document, or with --watch one per line like the views that follow.
        print(json.dumps(view) if args.watch else json.dumps(view, indent=2), flush=True)
    else:
        print(f"rollout {view['rollout_id']} of {view['fleet']} started (epoch {view['epoch']})")
    if not args.watch:
        return DONE
    return await _watch(args, plan.fleet)


async def status_command(args: argparse.Namespace) -> int:
    if args.watch:
        return await _watch(args, args.fleet)
    view = await _call(args, "GET", f"/v1/rollouts/{args.fleet}")
    print(json.dumps(view, indent=2) if args.json else "\n".join(summary(view)))
    return DONE


async def operate_command(args: argparse.Namespace) -> int:
    body = {"reason": args.reason} if args.reason else {}
    view = await _call(args, "POST", f"/v1/rollouts/{args.fleet}/{args.action}", json=body)
    print(json.dumps(view, indent=2) if args.json else summary(view)[0])
    return DONE


async def bundle_command(args: argparse.Namespace) -> int:
    write_document(args, await _call(args, "GET", f"/v1/fleets/{args.fleet}/bundle"))
    return DONE


def write_document(args: argparse.Namespace, document: Any) -> None:
    """``document`` as indented JSON to ``--out`` (its path then on stderr) or stdout."""
    text = json.dumps(document, indent=2) + "\n"
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.write_text(text)
        print(args.out, file=sys.stderr)


async def _watch(args: argparse.Namespace, fleet: str) -> int:
    """Print each change of the rollout until it ends; the exit code says how."""
    return await follow(
        args,
        f"/v1/rollouts/{fleet}",
        summary,
        finished=lambda view: view["status"] in ("active", "rotated", "retired"),
        failed=lambda view: view["status"] in ENDED,
    )


async def follow(
    args: argparse.Namespace,
    path: str,
    summarize: Callable[[dict[str, Any]], list[str]],
    finished: Callable[[dict[str, Any]], bool],
    failed: Callable[[dict[str, Any]], bool],
) -> int:
    """Print each change of the flow at ``path`` until it is ``finished`` (DONE) or ``failed``
    (NEGATIVE), or ``--timeout`` seconds of running time passed (TIMED_OUT); time spent paused
    does not count."""
    last: list[str] = []
    running_s, seen = 0.0, time.monotonic()
    while True:
        view = await _reconnecting(args, path)
        now = time.monotonic()
        if view["status"] != "paused":
            running_s += now - seen
        seen = now
        lines = summarize(view)
        if lines != last:
            print(json.dumps(view) if args.json else "\n".join(lines), flush=True)
            last = lines
        if finished(view):
            return DONE
        if failed(view):
            return NEGATIVE
        if running_s > args.timeout:
            print(f"still {view['status']} in stage {view['stage']} after {args.timeout}s")
            return TIMED_OUT
        await asyncio.sleep(args.interval)


async def _reconnecting(args: argparse.Namespace, path: str) -> dict[str, Any]:
    """GET ``path``; while the orchestrator cannot be reached or is between holders (a 503:
    standby, log unavailable), say so once and try again every ``--interval`` for up to
    ``--reconnect`` seconds; then, or on any other refusal, raise the :class:`ApiError`."""
    outage: float | None = None
    while True:
        try:
            view: dict[str, Any] = await _call(args, "GET", path)
        except ApiError as exc:
            if exc.detail.get("status") not in (None, 503):
                raise
            now = time.monotonic()
            if outage is None:
                outage = now
                print(f"reconnecting to {args.api}: {exc}", file=sys.stderr, flush=True)
            if now - outage > args.reconnect:
                raise
            await asyncio.sleep(args.interval)
            continue
        if outage is not None:
            print(f"reconnected to {args.api}", file=sys.stderr, flush=True)
        return view


def summary(view: dict[str, Any]) -> list[str]:
    """A rollout in a few lines: stage and status, members, bundles, what it waits for."""
    head = f"{view['fleet']} epoch {view['epoch']}: {view['stage']} [{status_line(view)}]"
    return [head, *progress_lines(view, ("attested", "holds_keys", "joined"))]


def status_line(view: dict[str, Any]) -> str:
    """A flow's status, with the approval it waits for and the reason it stopped, if any."""
    status = view["status"]
    if view.get("awaiting_approval"):
        status += ", waiting for approval (hsmfleet rollout approve)"
    if view.get("reason"):
        status += f": {view['reason']}"
    return status


def progress_lines(view: dict[str, Any], marks: tuple[str, ...]) -> list[str]:
    """Each member's progress (the ``marks`` it has reached), the stage-bundle chain and the
    error being retried."""
    names = {"holds_keys": "keys", "legacy_destroyed": "destroyed"}
    lines = []
    for m in view["members"]:
        reached = dict.fromkeys(names.get(mark, mark) for mark in marks if m[mark])
        state = m["status"] + (f" ({m['reason']})" if m["reason"] else "")
        step = f" doing {m['step']}" if m["step"] else ""
        lines.append(f"  {m['node_id']:<14} {m['domain']:<8} {state:<10} {'+'.join(reached)}{step}")
    if view["bundles"]:
        chain = ", ".join(
            f"{b['serial']} {b['stage']}{'' if b['logged'] else ' (signing)'}"
            for b in view["bundles"]
        )
        lines.append(f"  stage bundles: {chain}")
    if view.get("last_error"):
        lines.append(f"  retrying: {view['last_error']}")
    return lines
