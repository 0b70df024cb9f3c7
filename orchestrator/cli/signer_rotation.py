"""``hsmfleet operator ...``: rotate the operator's countersigning key, log cosigners' rotations.

- ``rotate-key --config FILE --cosigner ID=PIN ... --threshold K [--json]``: a new
  countersigning key in the operator's HSM, the rotation statement signed by the old and the new
  key, logged by the cosigners; from then on the orchestrator countersigns with the new key;
- ``log-rotation --config FILE --cosigner ID=PIN ... --threshold K ROTATION [--json]``: have
  the cosigners log a cosigner's key rotation (what ``hsmfleet cosigner rotate-key`` printed).

Both keep the notice in the rotation chain beside the orchestrator's key, print each step as it
happens (on stderr with ``--json``) and end with the notice's summary. Run them with the
orchestrator stopped: they open its operator HSM. Requests to the cosigners are signed with the
orchestrator's key, over its NATS connection.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from messages.canonical import canonical
from messages.documents import DocumentError, load_json
from messages.errors import HsmfleetError, MessageError
from messages.pins import CosignerPin
from messages.rotation import KeyRotation
from messages.validation import LoggedNotice
from orchestrator.shell.config import Settings
from orchestrator.shell.keys import load_signer, operator_signer
from orchestrator.shell.log import SOURCE
from orchestrator.shell.signer_rotation import log_cosigner_rotation, rotate_operator_key
from transport.cosign_client import CosigningClient, NatsTransport, Peer
from transport.outbox import Outbox


class BadArguments(HsmfleetError):
    """A ``--cosigner`` or rotation file is missing or malformed."""

    kind = "bad_arguments"


def register(verbs: argparse._SubParsersAction) -> None:
    parser = verbs.add_parser("operator", help="the operator's signing keys")
    sub = parser.add_subparsers(dest="operator_verb", metavar="ACTION")
    sub.required = True
    for name, helptext, run in (
        ("rotate-key", "rotate the operator's countersigning key", rotate_key_command),
        ("log-rotation", "have the cosigners log a cosigner's key rotation", log_rotation_command),
    ):
        action = sub.add_parser(name, help=helptext)
        action.add_argument("--config", type=Path, required=True, help="orchestrator settings")
        action.add_argument(
            "--cosigner", action="append", required=True, help="ID=PIN_FILE of each cosigner"
        )
        action.add_argument("--threshold", type=int, required=True, help="cosigners needed (k)")
        action.add_argument("--json", action="store_true", help="print the result as JSON")
        if name == "log-rotation":
            action.add_argument("rotation", type=Path, help="the cosigner's rotation (JSON)")
        action.set_defaults(run=run)


def _peers(specs: list[str]) -> list[Peer]:
    peers = []
    for spec in specs:
        cid, _, path = spec.partition("=")
        if not cid or not path:
            raise BadArguments("--cosigner takes ID=PIN_FILE", value=spec)
        try:
            peers.append(Peer(cid, CosignerPin.from_json(load_json(Path(path).read_bytes()))))
        except (OSError, DocumentError, MessageError) as exc:
            raise BadArguments(f"cannot read the cosigner pin: {exc}", path=path) from exc
    return peers


def _progress(args: argparse.Namespace):
    out = sys.stderr if args.json else sys.stdout

    def report(step: str, **detail: Any) -> None:
        fields = " ".join(f"{k}={v}" for k, v in detail.items())
        print(f"{step}: {fields}", file=out, flush=True)

    return report


def _summary(args: argparse.Namespace, notice: LoggedNotice) -> int:
    rotation = notice.logged
    assert isinstance(rotation, KeyRotation)
    result = {
        "signer": rotation.signer,
        "version": rotation.version,
        "old": rotation.old.kid,
        "new": rotation.new.kid,
        "logs": [p.log for p in notice.proofs],
        "notice": notice.to_json(),
    }
    if args.json:
        print(json.dumps(json.loads(canonical(result)), indent=2))
    else:
        print(f"ROTATED {rotation.signer} to key v{rotation.version} {rotation.new.kid}")
        print(f"  logged by {', '.join(result['logs'])}")
    return 0


async def _client(settings: Settings, args: argparse.Namespace) -> tuple[Any, CosigningClient]:
    operator = operator_signer(settings)
    if operator is None:
        raise BadArguments("the configuration names no operator_hsm")
    nc = await settings.connect()
    outbox = Outbox(SOURCE, load_signer(settings.key_file))
    client = CosigningClient(
        NatsTransport(nc, outbox), _peers(args.cosigner), operator, args.threshold
    )
    return nc, client


async def rotate_key_command(args: argparse.Namespace) -> int:
    settings = Settings.load(args.config)
    nc, client = await _client(settings, args)
    try:
        now = time.time_ns() // 1_000_000
        notice = await rotate_operator_key(settings, client, now, _progress(args))
    finally:
        await nc.drain()
    return _summary(args, notice)


async def log_rotation_command(args: argparse.Namespace) -> int:
    settings = Settings.load(args.config)
    try:
        rotation = KeyRotation.from_json(load_json(args.rotation.read_bytes()))
    except (OSError, DocumentError, MessageError) as exc:
        raise BadArguments(f"cannot read the rotation: {exc}", path=str(args.rotation)) from exc
    nc, client = await _client(settings, args)
    try:
        notice = await log_cosigner_rotation(settings, client, rotation, _progress(args))
    finally:
        await nc.drain()
    return _summary(args, notice)
