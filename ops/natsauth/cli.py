"""``hsmfleet nats secure``: write a fleet's NATS accounts, users, permissions and credentials."""

from __future__ import annotations

import argparse
from pathlib import Path

from ops.natsauth.bundle import write_bundle
from ops.natsauth.tls import DEFAULT_NAMES
from transport.parties import load_layout


def register(actions: argparse._SubParsersAction) -> None:
    """Add ``secure`` to the actions of ``hsmfleet nats``."""
    secure = actions.add_parser(
        "secure", help="write server configs and nkey credentials for a fleet layout"
    )
    secure.add_argument("--layout", type=Path, required=True, help="fleet layout (JSON)")
    secure.add_argument(
        "--out", type=Path, required=True, help="new (or empty) directory to write into"
    )
    secure.add_argument("--tls", action="store_true", help="require TLS on client connections")
    secure.add_argument(
        "--tls-name",
        action="append",
        default=[],
        metavar="NAME",
        help="another host name or IP address for the server certificate (repeatable)",
    )
    secure.set_defaults(run=secure_command)


def secure_command(args: argparse.Namespace) -> int:
    layout = load_layout(args.layout)
    names = tuple(dict.fromkeys((*DEFAULT_NAMES, *args.tls_name)))
    bundle = write_bundle(layout, args.out, tls=args.tls, names=names)
    print(f"wrote {len(layout.parties)} users to {bundle.root}")
    print(f"run a server:  hsmfleet nats up --secure {bundle.root}")
    print(f"seed files:    {bundle.root / 'keys'}/<role>-<id>.nk")
    ca = f" --nats-ca {bundle.ca_file}" if bundle.tls else ""
    print(f"give each process only its own: --nats-seed {bundle.root / 'keys'}/<role>-<id>.nk{ca}")
    return 0
