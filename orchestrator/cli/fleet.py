"""``hsmfleet fleet ...``: rotate a fleet's keys, schedule rotations, replace a member, retire a
fleet, and follow each, over the orchestrator's API (:mod:`orchestrator.api.fleets`).

- ``fleet rotate FLEET [--overlap DURATION] [--reason TEXT] [--watch]``;
- ``fleet schedule FLEET --every DAYS [--overlap DURATION]`` (``--every 0`` stops it);
- ``fleet replace-member FLEET NODE REPLACEMENT [--watch]``;
- ``fleet retire FLEET (--successor FLEET | --force) [--drain DURATION] [--reason TEXT]
  [--watch]``;
- ``fleet status FLEET [--watch]``: the fleet's latest flow; ``--watch`` follows it to its end;
- ``fleet retirement FLEET [--out FILE]``: the logged retirement notice, for verifiers.

Durations are seconds, or a number with ``s``, ``m``, ``h`` or ``d``. ``--watch`` prints each
change (one JSON line per change with ``--json``) until the flow is done: a rotation once its
old keys are destroyed everywhere, a replacement once active, a retirement once logged.

Exit codes: 0 done; 1 negative (the orchestrator refused the command, or the flow failed or was
aborted); 2 error (API unreachable or failing); 3 timed out waiting.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from messages.ids import display_time
from orchestrator.cli.orchestrator import DONE, NEGATIVE, ApiError, _api_arguments, _call
from orchestrator.cli.rollout import (
    follow,
    progress_lines,
    status_line,
    watch_arguments,
    write_document,
)

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
FAILED = ("aborted", "failed", "superseded")


def duration(text: str) -> int:
    """Seconds in ``text``: ``90``, ``90s``, ``15m``, ``12h``, ``7d``."""
    unit = UNITS.get(text[-1:])
    number = text[:-1] if unit is not None else text
    try:
        value = int(number) * (unit or 1)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a duration: {text!r} (say 90, 90s, 15m, 12h, 7d)"
        ) from None
    if value < 0:
        raise argparse.ArgumentTypeError("a duration is not negative")
    return value


def register(verbs: argparse._SubParsersAction) -> None:
    fleet = verbs.add_parser("fleet", help="rotate keys, replace members, retire active fleets")
    actions = fleet.add_subparsers(dest="fleet_action", metavar="ACTION", required=True)

    rotate = actions.add_parser("rotate", help="rotate the fleet's keys to a new epoch")
    rotate.add_argument("fleet")
    rotate.add_argument(
        "--overlap", type=duration, help="how long the old keys stay after the new epoch is active"
    )
    rotate.add_argument("--reason", default="")
    _flow_arguments(rotate)
    rotate.set_defaults(run=rotate_command)

    schedule = actions.add_parser("schedule", help="rotate the fleet's keys every N days")
    schedule.add_argument("fleet")
    schedule.add_argument("--every", type=int, required=True, help="days (0: stop rotating)")
    schedule.add_argument("--overlap", type=duration, default=7 * 86400)
    _api_arguments(schedule)
    schedule.set_defaults(run=schedule_command)

    replace = actions.add_parser("replace-member", help="replace a failed member by a new node")
    replace.add_argument("fleet")
    replace.add_argument("node_id", help="the failed member")
    replace.add_argument("replacement", help="the node taking its place (attested afresh)")
    _flow_arguments(replace)
    replace.set_defaults(run=replace_command)

    retire = actions.add_parser("retire", help="retire the fleet: drain, then destroy its keys")
    retire.add_argument("fleet")
    retire.add_argument("--successor", help="the active fleet users move to")
    retire.add_argument("--force", action="store_true", help="retire without an active successor")
    retire.add_argument("--drain", type=duration, default=7 * 86400, help="drain window")
    retire.add_argument("--reason", default="")
    _flow_arguments(retire)
    retire.set_defaults(run=retire_command)

    status = actions.add_parser("status", help="the fleet's latest flow")
    status.add_argument("fleet")
    _flow_arguments(status)
    status.set_defaults(run=status_command)

    notice = actions.add_parser("retirement", help="the fleet's logged retirement notice")
    notice.add_argument("fleet")
    notice.add_argument("--out", type=Path, help="write it here instead of to stdout")
    _api_arguments(notice)
    notice.set_defaults(run=retirement_command)


def _flow_arguments(parser: argparse.ArgumentParser) -> None:
    watch_arguments(parser)
    _api_arguments(parser)


async def _send(
    args: argparse.Namespace, method: str, path: str, body: dict[str, Any]
) -> dict[str, Any] | None:
    """The API's answer to a fleet command, or None when it refused (said on stderr); a server
    failure (5xx) raises."""
    try:
        return await _call(args, method, path, json=body)
    except ApiError as exc:
        if exc.detail.get("status", 500) >= 500:
            raise
        print(f"refused: {exc}", file=sys.stderr)
        return None


async def _command(args: argparse.Namespace, path: str, body: dict[str, Any]) -> int:
    """POST a fleet command; print the flow it started; follow it with ``--watch``."""
    view = await _send(args, "POST", f"/v1/fleets/{args.fleet}/{path}", body)
    if view is None:
        return NEGATIVE
    _show(args, view)
    return await _watch(args) if args.watch else DONE


async def rotate_command(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"reason": args.reason}
    if args.overlap is not None:
        body["overlap_s"] = args.overlap
    return await _command(args, "rotate", body)


async def replace_command(args: argparse.Namespace) -> int:
    body = {"node_id": args.node_id, "replacement": args.replacement}
    return await _command(args, "replace-member", body)


async def retire_command(args: argparse.Namespace) -> int:
    body = {
        "successor": args.successor,
        "force": args.force,
        "drain_s": args.drain,
        "reason": args.reason,
    }
    return await _command(args, "retire", body)


async def schedule_command(args: argparse.Namespace) -> int:
    body = {"every_days": args.every, "overlap_s": args.overlap}
    state = await _send(args, "PUT", f"/v1/fleets/{args.fleet}/rotation-schedule", body)
    if state is None:
        return NEGATIVE
    if args.json:
        print(json.dumps(state))
    elif state["rotate_every_days"]:
        every, overlap = state["rotate_every_days"], state["rotation_overlap_s"]
        print(f"{args.fleet}: keys rotate every {every} day(s), old keys kept {overlap}s")
    else:
        print(f"{args.fleet}: keys rotate only when an operator asks")
    return DONE


async def status_command(args: argparse.Namespace) -> int:
    if args.watch:
        return await _watch(args)
    _show(args, await _call(args, "GET", f"/v1/fleets/{args.fleet}/flow"))
    return DONE


async def retirement_command(args: argparse.Namespace) -> int:
    write_document(args, await _call(args, "GET", f"/v1/fleets/{args.fleet}/retirement"))
    return DONE


def _show(args: argparse.Namespace, view: dict[str, Any]) -> None:
    print(json.dumps(view) if args.json else "\n".join(summary(view)), flush=True)


def finished(view: dict[str, Any]) -> bool:
    """Whether the flow is done: a retirement logged, a rotation's old keys destroyed
    everywhere, any other flow active."""
    if view["kind"] == "retirement":
        return view["status"] == "retired"
    if view["kind"] == "rotation":
        return view["status"] == "active" and view["legacy_closed"]
    return view["status"] == "active"


async def _watch(args: argparse.Namespace) -> int:
    """Print each change of the fleet's flow until it ends; the exit code says how."""
    return await follow(
        args,
        f"/v1/fleets/{args.fleet}/flow",
        summary,
        finished=finished,
        failed=lambda view: view["status"] in FAILED,
    )


def _when(ms: int | None) -> str:
    return "-" if ms is None else display_time(ms)


def summary(view: dict[str, Any]) -> list[str]:
    """A fleet flow in a few lines: what it is, its stage and status, what it waits for, the
    members' progress."""
    kind = view["kind"]
    lines = [
        f"{view['fleet']} {kind} to epoch {view['epoch']}: {view['stage']} [{status_line(view)}]"
    ]
    if kind == "rotation" and view["legacy_until_ms"] is not None:
        ends = view["legacy_ends_ms"]
        listed = _when(view["legacy_until_ms"])
        kept = "the overlap after activation" if ends is None else _when(ends)
        done = "destroyed" if view["legacy_closed"] else "destroyed after"
        lines.append(f"  old keys listed until {listed}, kept until {kept}, {done}")
    if kind == "replacement":
        lines.append(f"  {view['newcomer']} replaces {view['replaced']}")
    if kind == "retirement":
        successor = view["successor"] or "no successor"
        lines.append(
            f"  users move to {successor}; keys destroyed after {_when(view['drain_until_ms'])}"
        )
    marks = ("attested", "holds_keys", "joined", "drained", "destroyed", "legacy_destroyed")
    return lines + progress_lines(view, marks)
