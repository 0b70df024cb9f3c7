"""``hsmfleet vault register|recover``: a fleet's vault from the command line, as a client.

Both take the fleet's validation bundle and the pins it is verified with (``hsmfleet verify``'s
``--trust``); the vault keys the requests are sealed to come from the accepted bundle only. The
PIN is read from ``--pin-file`` or asked at the terminal, never taken as an argument (it would
show in the process list and the shell's history). Each request is authorized by the account
authority whose signing key ``--authority-key`` names (an Ed25519 seed, hex, as
``hsmfleet member local-fleet`` and ``hsmfleet demo`` write it): the tool stands in for the
service that logs users in.

- ``register USER --secret-file FILE [--current-pin-file FILE | --replace]``: store the
  secret under the PIN; over an existing registration, prove the PIN in force or (a user who
  forgot it) replace the record, as the account authority allows.
- ``recover USER --out FILE``: the secret, written to ``FILE`` (mode 0600, not overwritten;
  ``-`` for standard output), one attempt of the user's budget spent.

Exit 0 on success; 1 when the vault refused (the refusal's kind is printed: ``wrong_guess`` with
the guesses remaining, ``budget_exhausted``, ``no_record`` ...); 2 when the bundle is not
accepted or an argument is unusable (nothing was sent).
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from messages.errors import HsmfleetError
from messages.signing import Ed25519Signer
from messages.vault_authorization import AccountAuthority
from messages.verification import PinsError, StateError, VerificationError
from messages.verify import parse_bundle
from ops.verifier_files import save_state
from ops.verify_cli import accept, pins_and_state
from transport import credentials
from transport.parties import CLIENT
from transport.vault_client import VaultClient


class VaultToolError(HsmfleetError):
    """An argument of ``hsmfleet vault`` is unusable: nothing was sent."""

    kind = "vault_tool"


def register(verbs: argparse._SubParsersAction) -> None:
    vault = verbs.add_parser("vault", help="register or recover a secret in a fleet's vault")
    ops = vault.add_subparsers(dest="vault_op", metavar="OP")
    ops.required = True
    reg = ops.add_parser("register", help="store a secret under a PIN")
    reg.add_argument("--secret-file", type=Path, required=True, help="the secret to store")
    prove = reg.add_mutually_exclusive_group()
    prove.add_argument("--current-pin-file", type=Path, help="the PIN in force, to prove it")
    prove.add_argument("--replace", action="store_true", help="replace a forgotten registration")
    reg.set_defaults(run=register_command)
    rec = ops.add_parser("recover", help="recover a secret with its PIN (spends one attempt)")
    rec.add_argument("--out", required=True, help="file for the secret (mode 0600), - for stdout")
    rec.set_defaults(run=recover_command)
    for op in (reg, rec):
        op.add_argument("user", help="the user the record belongs to")
        op.add_argument("--bundle", type=Path, required=True, help="validation bundle (JSON)")
        op.add_argument("--pins", "--trust", type=Path, required=True, help="pinned keys")
        op.add_argument("--state", type=Path, help="verifier state file, updated on acceptance")
        op.add_argument("--nats", required=True, help="NATS server URL")
        op.add_argument("--nats-seed", type=Path, help="the client party's nkey seed file")
        op.add_argument("--nats-ca", type=Path, help="CA certificate of the NATS servers")
        op.add_argument("--client-id", default="app", help="the client party's id")
        op.add_argument(
            "--authority-key", type=Path, required=True, help="account authority seed (hex)"
        )
        op.add_argument("--pin-file", type=Path, help="the PIN (default: asked at the terminal)")
        op.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
        op.add_argument("--json", action="store_true", help="print the result as JSON")


def _read(path: Path, what: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise VaultToolError(f"cannot read the {what}: {exc}", path=str(path)) from None
    return data


def _pin(path: Path | None, prompt: str = "PIN: ") -> bytes:
    """The PIN from ``path`` (one line) or the terminal; never empty."""
    if path is not None:
        pin = _read(path, "PIN file").rstrip(b"\r\n")
    else:
        pin = getpass.getpass(prompt).encode()
    if not pin:
        raise VaultToolError("the PIN is empty")
    return pin


def _authority(path: Path) -> AccountAuthority:
    text = _read(path, "account authority key").strip()
    try:
        seed = bytes.fromhex(text.decode())
        if len(seed) != 32:
            raise ValueError("not 32 bytes")
    except (ValueError, UnicodeDecodeError):
        raise VaultToolError("the account authority key is not a hex Ed25519 seed") from None
    return AccountAuthority(Ed25519Signer.from_seed(seed))


async def _client(args: argparse.Namespace) -> tuple[Any, VaultClient]:
    """The NATS connection and a vault client built from the accepted bundle."""
    now = time.time_ns() // 1_000_000
    try:
        pins, state = pins_and_state(args)
        bundle = parse_bundle(_read(args.bundle, "bundle"))
        accepted = await accept(bundle, pins, state, now)
    except (PinsError, StateError, VerificationError) as exc:
        raise VaultToolError(f"the bundle is not accepted ({exc.kind}): {exc}") from None
    if args.state:
        save_state(args.state, accepted.state)
    authority = _authority(args.authority_key)
    fleet = accepted.artifact.fleet

    def authorize(user: str, op: str, request: str) -> Any:
        return authority.authorize(fleet, user, op, request, time.time_ns() // 1_000_000)

    party = credentials.party_options(CLIENT, args.client_id, args.nats_seed, args.nats_ca)
    nc = await credentials.connect(args.nats, party, allow_reconnect=False)
    client = VaultClient.from_bundle(
        nc, accepted, authorize, now_ms=now, source=args.client_id, timeout=args.timeout
    )
    return nc, client


def _emit(args: argparse.Namespace, result: dict[str, Any], line: str, stream: Any = None) -> None:
    print(json.dumps(result, indent=2) if args.json else line, file=stream or sys.stdout)


async def _run(args: argparse.Namespace, op: Any) -> int:
    nc, client = await _client(args)
    try:
        return await op(client)
    except HsmfleetError as exc:  # refused by the vault, or no answer
        detail = {k: v for k, v in exc.detail.items() if isinstance(v, str | int | bool)}
        result = {"ok": False, "kind": exc.kind, "reason": exc.args[0], **detail}
        _emit(args, result, f"REFUSED {exc.kind}: {exc}")
        return 1
    finally:
        await nc.close()


async def register_command(args: argparse.Namespace) -> int:
    secret = _read(args.secret_file, "secret file")
    pin = _pin(args.pin_file)
    current = _pin(args.current_pin_file) if args.current_pin_file else None

    async def op(client: VaultClient) -> int:
        generation = await client.register(
            args.user, pin, secret, current_pin=current, replace_record=args.replace
        )
        result = {"ok": True, "user": args.user, "generation": generation}
        _emit(args, result, f"REGISTERED {args.user} generation {generation}")
        return 0

    return await _run(args, op)


async def recover_command(args: argparse.Namespace) -> int:
    pin = _pin(args.pin_file)
    out = None if args.out == "-" else Path(args.out)
    if out is not None and out.exists():
        raise VaultToolError("the output file exists; it is not overwritten", path=str(out))

    async def op(client: VaultClient) -> int:
        recovered = await client.recover(args.user, pin)
        if out is None:
            sys.stdout.buffer.write(recovered.secret)
            sys.stdout.flush()
        else:
            fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(recovered.secret)
        result = {
            "ok": True,
            "user": args.user,
            "attempt": recovered.attempt,
            "replaced": recovered.replaced,
            "generation": recovered.generation,
            "moved": recovered.moved,
            "move_failed": recovered.move_failed,
        }
        line = f"RECOVERED {args.user} attempt {recovered.attempt}"
        if recovered.replaced:
            line += f"; the record was replaced without its PIN {recovered.replaced} time(s)"
        if recovered.moved:
            line += (
                f"; registered again under the bundle's keys (generation {recovered.generation})"
            )
        _emit(args, result, line, sys.stderr if out is None else sys.stdout)
        return 0

    return await _run(args, op)
