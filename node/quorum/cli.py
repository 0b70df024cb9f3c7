"""``hsmfleet member ...``: run a fleet member, or lay out a local fleet for development."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from messages.signing import Ed25519Signer
from messages.vault_policy import DEFAULT_LIMIT
from node.quorum import member
from node.quorum.localfleet import LocalFleet
from transport.files import write_seed

CLIENT_FILE = "client.json"
"""What a vault client of a local fleet needs, written beside the members' directories."""
AUTHORITY_FILE = "authority.key"
"""The local fleet's account authority signing key (an Ed25519 seed, hex): whoever holds it
authorizes vault requests, as the service that logs users in does in production."""


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
    """Lay out the fleet, keep its account authority's key in ``<dir>/authority.key`` (so
    requests can be authorized after this process is gone), write ``<dir>/client.json`` and
    print the member commands and what a vault client needs: the vault keys it seals requests
    to and checks the fleet's OPAQUE answers with, and the account authority."""
    seed = os.urandom(32)
    authority = Ed25519Signer.from_seed(seed)
    fleet = LocalFleet.create(
        args.dir, args.fleet, args.size, [args.nats], limit=args.limit, authority=authority
    )
    key_file = Path(args.dir) / AUTHORITY_FILE
    write_seed(key_file, seed)
    keys = fleet.vault_keys
    client = {
        "fleet": fleet.fleet,
        "kem": keys.kem.to_json(),
        "server": keys.server.to_json(),
        "authority": {
            "alg": authority.alg,
            "public_key": authority.public_key.hex(),
            "key_file": str(key_file),
        },
    }
    client_file = Path(args.dir) / CLIENT_FILE
    client_file.write_text(json.dumps(client, indent=2) + "\n")
    for name in fleet.members:
        print(" ".join(fleet.command(name, new=True)))
    print(f"fleet: {fleet.fleet}")
    print(f"vault key ({keys.kem.role}, {keys.kem.alg}): {keys.kem.public_key.hex()}")
    print(f"OPAQUE server key ({keys.server.role}, {keys.server.alg}): ", end="")
    print(keys.server.public_key.hex())
    print(f"account authority ({authority.alg}): {authority.public_key.hex()}, key in {key_file}")
    print(f"client settings: {client_file}")
    return 0
