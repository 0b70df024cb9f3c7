"""``hsmfleet nats up``: run an embedded JetStream server in the foreground; ``hsmfleet nats
secure`` (in :mod:`ops.natsauth.cli`) writes the configs that ``up --secure`` runs.

``up`` is secured by default: without ``--secure DIR`` it keeps a bundle in ``STATE/auth``
(generated on first start for ``--layout FILE`` or the development layout
:data:`~transport.parties.DEV_LAYOUT`) and every party connects with its seed from
``STATE/auth/keys``. ``--insecure`` runs the server with no authentication at all, and says so.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from pathlib import Path

import structlog

from ops.natsauth import cli as natsauth_cli
from ops.natsauth.bundle import Bundle, BundleError, ensure_bundle, open_bundle
from ops.natsauth.connect import SecuredServer
from ops.natsserver import NatsServer
from transport.parties import DEV_LAYOUT, load_layout

log = structlog.get_logger("hsmfleet.nats")

AUTH_DIR = "auth"
INSECURE_WARNING = (
    "WARNING: INSECURE NATS SERVER (--insecure): no authentication and no permissions. Anyone "
    "who reaches {url} can read and publish every subject, append to the event log and act as "
    "any node, cosigner or orchestrator. Use it on a trusted machine only."
)


def register(verbs: argparse._SubParsersAction) -> None:
    nats_parser = verbs.add_parser("nats", help="run the embedded NATS server")
    sub = nats_parser.add_subparsers(dest="nats_verb", metavar="ACTION")
    sub.required = True
    up = sub.add_parser(
        "up",
        help="run one JetStream server until Ctrl-C, printing its URL (secured by default)",
    )
    up.add_argument("--state", type=Path, default=Path("state/nats"), help="state directory")
    up.add_argument("--port", type=int, default=4222, help="client port (0: any free port)")
    how = up.add_mutually_exclusive_group()
    how.add_argument(
        "--secure", type=Path, metavar="DIR", help="run the config `hsmfleet nats secure` wrote"
    )
    how.add_argument(
        "--layout",
        type=Path,
        help=f"fleet layout (JSON) to secure STATE/{AUTH_DIR} for (default: a development layout)",
    )
    how.add_argument(
        "--insecure",
        action="store_true",
        help="no authentication, no permissions: any client may do anything",
    )
    up.add_argument(
        "--tls", action="store_true", help=f"with a bundle made in STATE/{AUTH_DIR}: require TLS"
    )
    up.set_defaults(run=up_command)
    natsauth_cli.register(sub)


def _bundle(args: argparse.Namespace) -> tuple[Bundle, bool]:
    if args.secure:
        return open_bundle(args.secure), False
    layout = load_layout(args.layout) if args.layout else DEV_LAYOUT
    args.state.mkdir(parents=True, exist_ok=True)
    return ensure_bundle(args.state / AUTH_DIR, layout, tls=args.tls)


def _describe(bundle: Bundle, made: bool) -> list[str]:
    parties = ", ".join(p.name for p in bundle.layout.parties)
    lines = [
        f"secured: nkey users and permissions per role ({'new' if made else 'kept'} bundle "
        f"{bundle.root})",
        f"  users: {parties}",
        f"  each process connects with its own seed: --nats-seed {bundle.root}/keys/<role>-<id>.nk",
    ]
    if bundle.tls:
        lines.append(f"  clients must use TLS: --nats-ca {bundle.ca_file}")
    return lines


async def up_command(args: argparse.Namespace) -> int:
    if args.tls and (args.secure or args.insecure):
        raise BundleError(f"--tls applies only to a bundle made in STATE/{AUTH_DIR}")
    if args.insecure:
        server: NatsServer = NatsServer(args.state, port=args.port)
    else:
        bundle, made = _bundle(args)
        server = SecuredServer(bundle, args.state, port=args.port)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(server.url, flush=True)
    if args.insecure:
        log.warning("insecure nats server", url=server.url)
        print(INSECURE_WARNING.format(url=server.url), flush=True)
    else:
        print("\n".join(_describe(bundle, made)), flush=True)
    try:
        while not stop.is_set() and server.running:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)
    finally:
        await server.stop()
    return 0 if stop.is_set() else 1
