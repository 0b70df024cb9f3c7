"""``hsmfleet member ...``: run a fleet member, or lay out a local fleet for development."""

from __future__ import annotations

import argparse
from pathlib import Path

from messages.vault import DEFAULT_LIMIT
from node.quorum import member
from node.quorum.localfleet import LocalFleet


def register(verbs: argparse._SubParsersAction) -> None:
    group = verbs.add_parser("member", help="a fleet member: quorum replication and the vault")
    actions = group.add_subparsers(dest="member_verb", metavar="ACTION")
    actions.required = True
    run = actions.add_parser("run", help="run one member until interrupted")
    member.add_arguments(run)
    run.set_defaults(run=lambda args: member.run(args.settings, args.new))
    local = actions.add_parser("local-fleet", help="lay out a fleet on this machine")
    local.add_argument("--dir", type=Path, required=True, help="directory for the fleet's files")
    local.add_argument("--fleet", required=True, help="fleet id")
    local.add_argument("--size", type=int, default=3, help="number of members")
    local.add_argument("--nats", default="nats://127.0.0.1:4222", help="NATS server URL")
    local.add_argument("--limit", type=int, default=DEFAULT_LIMIT, help="guesses per user")
    local.set_defaults(run=local_fleet)


def local_fleet(args: argparse.Namespace) -> int:
    fleet = LocalFleet.create(args.dir, args.fleet, args.size, [args.nats], limit=args.limit)
    for name in fleet.members:
        print(" ".join(fleet.command(name, new=True)))
    print(f"session key: {fleet.session_public.hex()}")
    return 0
