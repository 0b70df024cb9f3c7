"""``hsmfleet nats up``: run an embedded JetStream server in the foreground; ``hsmfleet nats
secure`` (in :mod:`ops.natsauth.cli`) writes the configs that ``up --secure`` runs."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from pathlib import Path

from ops.natsauth import cli as natsauth_cli
from ops.natsauth import connect as natsauth
from ops.natsauth.bundle import open_bundle
from ops.natsserver import NatsServer


def register(verbs: argparse._SubParsersAction) -> None:
    nats_parser = verbs.add_parser("nats", help="run the embedded NATS server")
    sub = nats_parser.add_subparsers(dest="nats_verb", metavar="ACTION")
    sub.required = True
    up = sub.add_parser("up", help="run one JetStream server until Ctrl-C, printing its URL")
    up.add_argument("--state", type=Path, default=Path("state/nats"), help="state directory")
    up.add_argument("--port", type=int, default=4222, help="client port (0: any free port)")
    up.add_argument(
        "--secure", type=Path, metavar="DIR", help="run the config `hsmfleet nats secure` wrote"
    )
    up.set_defaults(run=up_command)
    natsauth_cli.register(sub)


async def up_command(args: argparse.Namespace) -> int:
    if args.secure:
        server = natsauth.server(open_bundle(args.secure), args.state, port=args.port)
    else:
        server = NatsServer(args.state, port=args.port)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(server.url, flush=True)
    try:
        while not stop.is_set() and server.running:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)
    finally:
        await server.stop()
    return 0 if stop.is_set() else 1
