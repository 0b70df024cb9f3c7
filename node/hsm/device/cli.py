"""``hsmfleet hsm serve``: one node's HSM as a device process on a local Unix socket.

It opens the backend (a software HSM, certified by the vendor directory at its first start, or a
PKCS#11 token), serves the core operations (:mod:`node.hsm.device.core`) and the vault applet's
(:mod:`node.vault.device_ops`, its journal of answered logins in the device's state directory)
until SIGTERM or SIGINT, prints one JSON line ``{"socket": .., "kind": ..}`` once it listens
(launchers read the first line), and removes its socket when it stops. Bad arguments and keys end
it with exit code 2 and one line saying what is wrong.

The backend openers here serve ``hsmfleet node run --hsm`` and ``hsmfleet vendor certify`` too.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import NoReturn

from messages.errors import HsmfleetError
from node.hsm.base import Hsm
from node.hsm.cryptoki import Pkcs11Hsm
from node.hsm.device.core import core_handlers
from node.hsm.device.server import DeviceServer
from node.hsm.sealing import load_operator_key
from node.hsm.soft import SoftHsm
from node.hsm.softhsm import MODULE
from node.vault.applet import VaultApplet
from node.vault.device_ops import applet_handlers
from node.vault.journal import EvaluationJournal
from node.vendor import DEVICE, VendorCA, provision

PIN_ENV = "HSMFLEET_PKCS11_PIN"
JOURNAL = "vault-journal.sqlite3"


class DeviceConfigError(HsmfleetError):
    """The HSM backend cannot be opened as configured: a setting is missing or clashes."""

    kind = "device_config"


class _OneLineErrors(argparse.ArgumentParser):
    """A parser whose usage errors are one line (exit code 2), as launchers read them."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def register(verbs: argparse._SubParsersAction) -> None:
    hsm = verbs.add_parser("hsm", help="the HSM device process beside each node daemon")
    hsm_verbs = hsm.add_subparsers(dest="hsm_verb", metavar="ACTION", parser_class=_OneLineErrors)
    hsm_verbs.required = True
    serve = hsm_verbs.add_parser("serve", help="serve an HSM on a local socket until stopped")
    serve.add_argument("--socket", type=Path, required=True, help="Unix socket to serve on")
    serve.add_argument("--backend", choices=("soft", "pkcs11"), default="soft", help="backend")
    serve.add_argument(
        "--state",
        type=Path,
        required=True,
        help="the device's state directory (the software HSM's sealed state, the vault journal)",
    )
    serve.add_argument(
        "--sealing-key-file", type=Path, help="operator key sealing the software HSM (or env key)"
    )
    serve.add_argument(
        "--vendor", type=Path, help="vendor directory: certifies a software HSM at first start"
    )
    pkcs11_arguments(serve, required=False)
    serve.set_defaults(run=hsm_serve)


def pkcs11_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """The options that name a PKCS#11 token and where its PIN is."""
    parser.add_argument("--module", default=MODULE, help="PKCS#11 library")
    parser.add_argument("--token", required=required, help="PKCS#11 token label")
    parser.add_argument("--pin-env", default=PIN_ENV, help="environment variable holding the PIN")


def open_pkcs11(args: argparse.Namespace) -> Pkcs11Hsm:
    """The token the :func:`pkcs11_arguments` name, logged in."""
    if not args.token:
        raise DeviceConfigError("--token is required with a PKCS#11 backend")
    pin = os.environ.get(args.pin_env)
    if pin is None:
        raise DeviceConfigError(f"set the token PIN in ${args.pin_env}")
    return Pkcs11Hsm(args.module, args.token, pin)


def open_soft(state: Path, key_file: Path | None, vendor: Path | None) -> SoftHsm:
    """The software HSM in ``state``, sealed under the operator key in ``key_file`` (or the
    environment); a new one is certified by the vendor CA in ``vendor``."""
    hsm = SoftHsm(state, load_operator_key(key_file))
    if hsm.certificate(DEVICE) is None:
        if vendor is None:
            raise DeviceConfigError(
                "a new software HSM needs --vendor to get its device certificate"
            )
        provision(hsm, VendorCA.open(vendor), datetime.now(UTC))
    return hsm


def open_backend(args: argparse.Namespace) -> Hsm:
    """The backend ``hsm serve``'s arguments name."""
    if args.backend == "pkcs11":
        return open_pkcs11(args)
    return open_soft(args.state, args.sealing_key_file, args.vendor)


def hsm_serve(args: argparse.Namespace) -> int:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    backend = open_backend(args)
    journal = EvaluationJournal(args.state / JOURNAL)
    try:
        handlers = {
            **core_handlers(backend),
            **applet_handlers(VaultApplet(backend, journal)),
        }
        server = DeviceServer(args.socket, handlers)
        server.start()
        try:
            print(json.dumps({"socket": str(args.socket), "kind": backend.kind}), flush=True)
            while not stop.wait(1.0):
                pass
        finally:
            server.stop()
    finally:
        journal.close()
        backend.close()
    return 0
