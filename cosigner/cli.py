"""``hsmfleet cosigner ...``: create a cosigner, pin it, and run it.

- ``init --state DIR --id ID [--name NAME] --requester-key FILE [--operator-key FILE]``: a new
  key (mode 0600) and a configuration trusting the orchestrator key(s) pinned in FILE and
  pinning the operator's first countersigning key; prints the cosigner's pin;
- ``witness-of --state DIR PIN...``: also witness the logs pinned in these files;
- ``pin --state DIR [--url URL]``: print the pin verifiers and other witnesses need (with the
  key's ``version`` once it rotated);
- ``run --state DIR [--nats URL [--nats-seed FILE [--nats-ca FILE]]] [--http HOST:PORT]``: serve
  until SIGINT or SIGTERM, on NATS as the party ``cosigner-<id>`` with its own nkey seed; prints
  one JSON line ``{"id", "name", "url"}`` once it answers; ``--refresh-every SECONDS`` re-signs
  the latest checkpoint with a timestamp on that period (default 60);
- ``rotate-key --state DIR``: move its log to a new key, asking the running cosigner over its
  control socket (:mod:`cosigner.control`) or, when none runs, on the state directly: the
  rotation statement, signed by the old and the new key, is appended to its own log and printed
  (JSON) to be submitted to the other cosigners; checkpoints from then on are signed by the new
  key.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import signal
from pathlib import Path

from cosigner.config import (
    ConfigError,
    CosignerConfig,
    init_state,
    load_config,
    load_key,
    pin_of,
    read_operator,
    read_pin,
    read_requesters,
    save_config,
)
from cosigner.control import Control, rotate_running
from cosigner.engine import REFRESH_S, Cosigner
from cosigner.http import Server, make_app
from cosigner.keys import key_version
from messages.canonical import canonical
from messages.errors import HsmfleetError
from transport import credentials
from transport.httpguard import listen_address


def register(verbs: argparse._SubParsersAction) -> None:
    parser = verbs.add_parser("cosigner", help="an independent cosigner and witness")
    sub = parser.add_subparsers(dest="cosigner_verb", metavar="ACTION")
    sub.required = True

    init = sub.add_parser("init", help="create a cosigner's key and configuration")
    init.add_argument("--state", type=Path, required=True, help="state directory")
    init.add_argument("--id", required=True, help="cosigner id (its NATS subject token)")
    init.add_argument("--name", help="log origin and witness name (default: ID.cosigner/log)")
    init.add_argument(
        "--requester-key",
        type=Path,
        required=True,
        help="file pinning the orchestrator key(s) whose requests it answers",
    )
    init.add_argument(
        "--operator-key",
        type=Path,
        help="file pinning the operator's countersigning key in force (hex, or pin JSON with its"
        " version): the operator's next rotation this cosigner logs must start from it",
    )
    init.set_defaults(run=init_command)

    witness = sub.add_parser("witness-of", help="witness the logs of other cosigners")
    witness.add_argument("--state", type=Path, required=True, help="state directory")
    witness.add_argument("pins", type=Path, nargs="+", help="pin files of the logs to witness")
    witness.set_defaults(run=witness_command)

    pin = sub.add_parser("pin", help="print this cosigner's pin")
    pin.add_argument("--state", type=Path, required=True, help="state directory")
    pin.add_argument("--url", help="base URL of its HTTP API, recorded in the pin")
    pin.set_defaults(run=pin_command)

    run = sub.add_parser("run", help="serve signing requests and the log until interrupted")
    run.add_argument("--state", type=Path, required=True, help="state directory")
    run.add_argument("--nats", help="NATS server URL (omit to serve HTTP only)")
    credentials.add_arguments(run)
    run.add_argument("--http", default="127.0.0.1:0", help="HTTP listen address HOST:PORT")
    run.add_argument(
        "--refresh-every", type=float, default=REFRESH_S, help="checkpoint re-signing period (s)"
    )
    run.set_defaults(run=run_command)

    rotate = sub.add_parser(
        "rotate-key",
        help="move the cosigner's log to a new key (asks the running cosigner, if one runs)",
    )
    rotate.add_argument("--state", type=Path, required=True, help="state directory")
    rotate.set_defaults(run=rotate_key_command)


def _print_json(value: object) -> None:
    print(json.dumps(json.loads(canonical(value))), flush=True)


def init_command(args: argparse.Namespace) -> int:
    config = CosignerConfig(
        id=args.id,
        name=args.name or f"{args.id}.cosigner/log",
        requesters=read_requesters(args.requester_key),
        operator=read_operator(args.operator_key) if args.operator_key else None,
    )
    signer = init_state(args.state, config)
    _print_json(pin_of(config, signer).to_json())
    return 0


def witness_command(args: argparse.Namespace) -> int:
    config = load_config(args.state).witnessing(*(read_pin(p) for p in args.pins))
    save_config(args.state, config)
    _print_json([log.name for log in config.witness_of])
    return 0


def pin_command(args: argparse.Namespace) -> int:
    pin = pin_of(load_config(args.state), load_key(args.state), args.url)
    _print_json(dataclasses.replace(pin, version=key_version(args.state)).to_json())
    return 0


async def run_command(args: argparse.Namespace) -> int:
    host, port = listen_address(args.http)
    app = make_app(args.state, args.nats, nats_seed=args.nats_seed, nats_ca=args.nats_ca)
    server = Server(app)
    try:
        url = await server.start(host, port)
    except OSError as exc:
        await server.stop()
        raise ConfigError(f"cannot listen on {args.http}: {exc}") from exc
    except HsmfleetError:
        await server.stop()
        raise
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    cosigner = server.cosigner
    cosigner.start_refresh(args.refresh_every)
    control = Control(cosigner, args.state)
    await control.start()
    _print_json({"id": cosigner.id, "name": cosigner.name, "url": url})
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)
    finally:
        await control.stop()
        await server.stop()
    return 0


async def rotate_key_command(args: argparse.Namespace) -> int:
    rotation = await rotate_running(args.state)
    if rotation is None:  # not running: rotate on the state directly
        cosigner = await asyncio.to_thread(Cosigner.open, args.state)
        try:
            rotation = await cosigner.rotate_key()
        finally:
            await cosigner.close()
    _print_json(rotation.to_json())
    return 0
