"""The ``hsmfleet`` command: one entry point whose verbs each part of the project registers."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import version

from cosigner import cli as cosigner_cli
from messages.errors import HsmfleetError
from node import cli as node_cli
from node.hsm.device import cli as device_cli
from node.quorum import cli as member_cli
from ops import demo, nats_cli, vault_cli, verify_cli
from orchestrator.cli import fleet as fleet_cli
from orchestrator.cli import node_keys as node_keys_cli
from orchestrator.cli import orchestrator as orchestrator_cli
from orchestrator.cli import rollout as rollout_cli
from orchestrator.cli import signer_rotation as signer_rotation_cli
from transport import logs

# Each part adds its verbs to the parser; the chosen verb's ``run`` gets the parsed arguments
# and returns the process exit code.
VERB_GROUPS: list[Callable[[argparse._SubParsersAction], None]] = [
    nats_cli.register,
    node_cli.register,
    device_cli.register,
    orchestrator_cli.register,
    member_cli.register,
    cosigner_cli.register,
    verify_cli.register,
    vault_cli.register,
    rollout_cli.register,
    demo.register,
    node_keys_cli.register,
    signer_rotation_cli.register,
    fleet_cli.register,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hsmfleet",
        description="Orchestrate fleets of HSM nodes: enrollment, rollout, rotation, quorum.",
    )
    parser.add_argument("--version", action="version", version=f"hsmfleet {version('hsmfleet')}")
    parser.add_argument("--log-level", default="info", help="debug, info, warning or error")
    parser.add_argument(
        "--log-json",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="JSON log lines (default: JSON unless stderr is a terminal)",
    )
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")
    verbs.required = True
    for register in VERB_GROUPS:
        register(verbs)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the verb named in ``argv`` and return its exit code."""
    args = build_parser().parse_args(argv)
    logs.configure(json=args.log_json, level=args.log_level)
    try:
        result = args.run(args)
        if asyncio.iscoroutine(result):
            result = asyncio.run(result)
    except KeyboardInterrupt:
        return 130
    except HsmfleetError as exc:
        print(f"hsmfleet: {exc}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
