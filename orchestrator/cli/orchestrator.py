"""The orchestrator's ``hsmfleet`` verbs.

- ``hsmfleet orchestrator --config FILE``: run the orchestrator and its HTTP API;
  ``hsmfleet orchestrator keygen --dir DIR``: make its log-signing key;
  ``hsmfleet orchestrator operator-key --config FILE``: make the operator's countersigning key
  inside the configured software HSM and print its pin (``{"alg", "public_key"}``).
- ``hsmfleet nodes``, ``hsmfleet enroll NODE``, ``hsmfleet events watch``: talk to the API
  (``--api``/``$HSMFLEET_API``, ``--token``/``$HSMFLEET_TOKEN``); ``--json`` for scripts.
- ``hsmfleet log export`` reads the log from NATS; ``hsmfleet replay FILE...`` checks one.

Exit codes: 0 done; 1 the outcome was negative (enrollment rejected, replay diverged);
2 an error (bad input, unreachable service); 3 timed out waiting.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from messages.canonical import b64
from messages.errors import HsmfleetError
from messages.ids import display_time
from orchestrator.api.app import create_app
from orchestrator.core.errors import Fenced, ReplayDivergence
from orchestrator.shell.config import Settings
from orchestrator.shell.keys import generate, load_signer, load_trust, make_operator_key
from orchestrator.shell.log import GENESIS, entry_digest
from orchestrator.shell.logfile import Header, replay_files, write_entry, write_header
from orchestrator.shell.store import EventStore
from transport import credentials
from transport.parties import AUDITOR

DONE, NEGATIVE, ERROR, TIMED_OUT = 0, 1, 2, 3


class ApiError(HsmfleetError):
    """The orchestrator API refused a request or could not be reached."""

    kind = "api"


def register(verbs: argparse._SubParsersAction) -> None:
    orch = verbs.add_parser("orchestrator", help="run the orchestrator and its HTTP API")
    orch.add_argument("--config", type=Path, default=Path("orchestrator.json"))
    orch.set_defaults(run=run_orchestrator)
    actions = orch.add_subparsers(dest="orchestrator_action", metavar="ACTION")
    keygen = actions.add_parser("keygen", help="create the orchestrator's log-signing key")
    keygen.add_argument("--dir", type=Path, required=True, help="where to write the key files")
    keygen.set_defaults(run=keygen_command)
    operator = actions.add_parser(
        "operator-key", help="make the operator's countersigning key in its HSM; print its pin"
    )
    operator.add_argument("--config", type=Path, default=Path("orchestrator.json"))
    operator.set_defaults(run=operator_key_command)

    nodes = verbs.add_parser("nodes", help="list nodes with their state and failure domain")
    _api_arguments(nodes)
    nodes.set_defaults(run=nodes_command)

    enroll = verbs.add_parser("enroll", help="enroll a node: challenge it to attest itself")
    enroll.add_argument("node_id")
    enroll.add_argument("--timeout", type=float, default=60.0, help="seconds to wait (0: no wait)")
    _api_arguments(enroll)
    enroll.set_defaults(run=enroll_command)

    events = verbs.add_parser("events", help="the orchestrator's event log over the API")
    event_actions = events.add_subparsers(dest="events_action", metavar="ACTION", required=True)
    watch = event_actions.add_parser("watch", help="print entries as they are appended")
    watch.add_argument("--from", dest="from_seq", type=int, default=0)
    watch.add_argument("--count", type=int, default=0, help="stop after this many entries")
    _api_arguments(watch)
    watch.set_defaults(run=watch_command)

    log = verbs.add_parser("log", help="the event log on NATS")
    log_actions = log.add_subparsers(dest="log_action", metavar="ACTION", required=True)
    export = log_actions.add_parser("export", help="write the log as JSON lines to stdout")
    export.add_argument("--from", dest="from_seq", type=int, default=1)
    export.add_argument("--nats", default=os.environ.get("HSMFLEET_NATS", "nats://127.0.0.1:4222"))
    export.add_argument(
        "--auditor", default="audit", help="the auditor id whose seed --nats-seed names"
    )
    credentials.add_arguments(export)
    export.set_defaults(run=export_command)

    replay = verbs.add_parser("replay", help="rebuild state from exported logs, re-deciding")
    replay.add_argument("files", type=Path, nargs="+")
    replay.add_argument("--trust", type=Path, required=True, help="orchestrator public key file")
    replay.add_argument("--no-check", action="store_true", help="fold only; skip re-deciding")
    replay.add_argument("--verify-every", type=int, default=1000, help="verify every n-th sig")
    replay.add_argument("--json", action="store_true")
    replay.set_defaults(run=replay_command)


def _api_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--api", default=os.environ.get("HSMFLEET_API", "http://127.0.0.1:8080"))
    parser.add_argument("--token", default=os.environ.get("HSMFLEET_TOKEN", ""))
    parser.add_argument("--json", action="store_true", help="machine-readable output")


# --- the service ---------------------------------------------------------------------


async def run_orchestrator(args: argparse.Namespace) -> int:
    settings = Settings.load(args.config)
    app = create_app(settings, load_signer(settings.key_file))
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    host, port = settings.host_port
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0] if runner.addresses else (host, port)
    print(
        json.dumps({"holder": settings.holder, "api": f"http://{bound[0]}:{bound[1]}"}), flush=True
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
    return DONE


def keygen_command(args: argparse.Namespace) -> int:
    args.dir.mkdir(parents=True, exist_ok=True)
    try:
        signer = generate(args.dir / "orchestrator.key", args.dir / "orchestrator.pub")
    except FileExistsError:
        raise ApiError(
            "a key exists already; refusing to overwrite it", dir=str(args.dir)
        ) from None
    print(signer.public_key.hex())
    return DONE


def operator_key_command(args: argparse.Namespace) -> int:
    signer = make_operator_key(Settings.load(args.config))
    print(json.dumps({"alg": signer.alg, "public_key": b64(signer.public_key)}))
    return DONE


# --- API clients ---------------------------------------------------------------------


async def _call(args: argparse.Namespace, method: str, path: str, **kw: Any) -> Any:
    headers = {"Authorization": f"Bearer {args.token}"}
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http,
            http.request(method, args.api.rstrip("/") + path, headers=headers, **kw) as resp,
        ):
            body = await resp.json(content_type=None)
            if resp.status >= 400:
                raise ApiError(body.get("message", resp.reason), status=resp.status)
            return body
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise ApiError(f"cannot reach the orchestrator API: {exc}", api=args.api) from None


def _seen(reachable: bool | None, last_seen_ms: int | None) -> str:
    """A node's liveness for people: ``reachable``, or ``unreachable`` with when it was last
    heard from, or ``never seen``."""
    if last_seen_ms is None:
        return "never seen"
    if reachable:
        return "reachable"
    return f"unreachable since {display_time(last_seen_ms)}"


async def nodes_command(args: argparse.Namespace) -> int:
    nodes = (await _call(args, "GET", "/v1/nodes"))["nodes"]
    if args.json:
        print(json.dumps(nodes, indent=2))
        return DONE
    print(f"{'NODE':<28} {'DOMAIN':<12} {'HSM':<8} {'STATUS':<10} {'SEEN':<24} REASON")
    for n in nodes:
        reason = n["reason"] or ""
        seen = _seen(n.get("reachable"), n.get("last_seen_ms"))
        print(
            f"{n['node_id']:<28} {n['domain']:<12} {n['hsm']:<8} {n['status']:<10} {seen:<24}"
            f" {reason}"
        )
    return DONE


async def enroll_command(args: argparse.Namespace) -> int:
    enrollment = await _call(args, "POST", f"/v1/nodes/{args.node_id}/enroll", json={})
    path = f"/v1/enrollments/{enrollment['enrollment_id']}"
    deadline = time.monotonic() + args.timeout
    started = time.monotonic()
    while enrollment["status"] == "open" and time.monotonic() < deadline:
        if not args.json:
            waited = time.monotonic() - started
            print(
                f"\rwaiting for {args.node_id} to attest ... {waited:4.1f}s",
                end="",
                file=sys.stderr,
            )
        await asyncio.sleep(0.2)
        enrollment = await _call(args, "GET", path)
    if not args.json:
        print(file=sys.stderr)
    if args.json:
        print(json.dumps(enrollment))
    elif enrollment["status"] == "enrolled":
        print(f"{args.node_id} enrolled ({enrollment['enrollment_id']})")
    elif enrollment["status"] == "rejected":
        print(f"{args.node_id} rejected: {enrollment['reason']}")
    else:
        print(f"{args.node_id} has not answered yet ({enrollment['enrollment_id']})")
    return {"enrolled": DONE, "rejected": NEGATIVE}.get(enrollment["status"], TIMED_OUT)


async def watch_command(args: argparse.Namespace) -> int:
    query = f"?from={args.from_seq}&count={args.count}"
    headers = {"Authorization": f"Bearer {args.token}"}
    url = args.api.rstrip("/") + "/v1/events/stream" + query
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as http,
            http.get(url, headers=headers) as resp,
        ):
            if resp.status >= 400:
                body = await resp.json(content_type=None)
                raise ApiError(body.get("message", resp.reason), status=resp.status)
            async for raw in resp.content:
                line = raw.decode().rstrip("\n")
                if not line.startswith("data: "):
                    continue
                view = json.loads(line[len("data: ") :])
                if args.json:
                    print(json.dumps(view), flush=True)
                else:
                    entry = view.get("entry", {})
                    print(
                        f"{view['seq']:>8}  {entry.get('at', ''):<24}  {view['type']}", flush=True
                    )
    except (aiohttp.ClientError, ValueError) as exc:
        raise ApiError(f"the event stream failed: {exc}", api=args.api) from None
    return DONE


# --- the log -------------------------------------------------------------------------


async def export_command(args: argparse.Namespace) -> int:
    party = credentials.party_options(AUDITOR, args.auditor, args.nats_seed, args.nats_ca)
    nc = await credentials.connect(args.nats, party)
    try:
        store = EventStore(nc)
        last = await store.last_seq()
        from_seq = max(args.from_seq, 1)
        head = GENESIS if from_seq == 1 else entry_digest(await store.entry(from_seq - 1))
        out = sys.stdout.buffer
        write_header(out, Header(store.stream, from_seq, head))
        started = time.monotonic()

        def emit(seq: int, data: bytes) -> None:
            write_entry(out, data)
            if seq % 100_000 == 0:
                print(f"exported up to seq {seq} of {last}", file=sys.stderr)

        count = await store.scan(from_seq, last, emit)
        out.flush()
        elapsed = time.monotonic() - started
        print(
            f"exported {count} entries (seq {from_seq}..{last}) in {elapsed:.1f}s", file=sys.stderr
        )
    finally:
        await nc.close()
    return DONE


def replay_command(args: argparse.Namespace) -> int:
    def progress(seq: int) -> None:
        print(f"replayed {seq} entries", file=sys.stderr)

    try:
        result = replay_files(
            args.files,
            load_trust(args.trust),
            check=not args.no_check,
            verify_every=args.verify_every,
            progress=progress,
        )
    except (ReplayDivergence, Fenced) as exc:
        if args.json:
            print(json.dumps({"ok": False, "error": exc.kind, "message": str(exc)}))
        else:
            print(f"replay diverged: {exc}")
        return NEGATIVE
    summary = {
        "ok": True,
        "entries": result.entries,
        "decisions": result.decisions,
        "events": result.events,
        "nodes": len(result.state.nodes),
        "enrolled": sum(1 for n in result.state.nodes.values() if n.status == "enrolled"),
        "lease": {"holder": result.state.lease.holder, "epoch": result.state.lease.epoch},
        "fleets": {
            fleet: {
                "status": rollout.status,
                "stage": rollout.stage,
                "bundles": len(result.state.book.fleets[fleet].bundles),
            }
            for fleet in sorted(result.state.book.fleets)
            if (rollout := result.state.book.of_fleet(fleet)) is not None
        },
        "entries_per_s": round(result.rate),
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print(
            f"replayed {result.entries} entries ({result.decisions} decisions re-run, "
            f"{result.events} events) in {result.seconds:.2f}s: {summary['nodes']} nodes, "
            f"{summary['enrolled']} enrolled; lease {result.state.lease.holder} "
            f"epoch {result.state.lease.epoch}"
        )
        for fleet, view in summary["fleets"].items():
            status, stage, bundles = view["status"], view["stage"], view["bundles"]
            print(f"  fleet {fleet}: {status} in {stage}, {bundles} stage bundles")
    return DONE
