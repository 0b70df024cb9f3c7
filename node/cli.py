"""``hsmfleet vendor ...`` and ``hsmfleet node ...``: provision HSMs and run a node daemon."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from datetime import UTC, datetime
from pathlib import Path

import structlog
from aiohttp import web

from node.daemon import NodeConfigError, NodeDaemon
from node.hsm.device.cli import open_pkcs11, pkcs11_arguments
from node.hsm.device.client import DeviceClient, DeviceHsm
from node.hsm.sealing import create_operator_key
from node.http import create_app
from node.measurement import measure
from node.pins import read_pins
from node.vault.device_ops import RemoteApplet
from node.vendor import DEVICE, VendorCA, provision
from transport import credentials
from transport.httpguard import listen_address
from transport.parties import NODE

log = structlog.get_logger("hsmfleet.node")


def register(verbs: argparse._SubParsersAction) -> None:
    vendor = verbs.add_parser("vendor", help="HSM vendor stand-in: root CA, device certificates")
    vendor_verbs = vendor.add_subparsers(dest="vendor_verb", metavar="ACTION")
    vendor_verbs.required = True
    init = vendor_verbs.add_parser("init", help="create a vendor root CA in a directory")
    init.add_argument("--dir", type=Path, required=True, help="vendor directory (keep it private)")
    init.set_defaults(run=vendor_init)
    certify = vendor_verbs.add_parser(
        "certify", help="give a PKCS#11 token a device key and a certificate from the vendor CA"
    )
    certify.add_argument("--dir", type=Path, required=True, help="vendor directory")
    pkcs11_arguments(certify)
    certify.set_defaults(run=vendor_certify)

    node = verbs.add_parser("node", help="the node daemon beside each HSM")
    node_verbs = node.add_subparsers(dest="node_verb", metavar="ACTION")
    node_verbs.required = True
    run = node_verbs.add_parser("run", help="run a node daemon until interrupted")
    run.add_argument(
        "--hsm-socket",
        type=Path,
        required=True,
        help="the node's HSM device (hsmfleet hsm serve): no key material in this process",
    )
    run.add_argument("--state", type=Path, required=True, help="node state directory")
    run.add_argument("--domain", required=True, help="failure domain (data centre) of this node")
    run.add_argument("--nats", default="nats://127.0.0.1:4222", help="NATS server URL")
    credentials.add_arguments(run)
    run.add_argument("--node-id", help="node id (default: derived from the identity key)")
    run.add_argument(
        "--orchestrator-key", type=Path, required=True, help="file pinning the orchestrator's key"
    )
    run.add_argument("--heartbeat", type=float, default=5.0, help="seconds between heartbeats")
    run.add_argument(
        "--http",
        metavar="HOST:PORT",
        help="serve /health and /metrics (read-only) on this address; off by default",
    )
    run.add_argument(
        "--measurement", help="the install's measurement, if a launcher measured it once already"
    )
    run.set_defaults(run=node_run)
    measured = node_verbs.add_parser("measure", help="print this install's software measurement")
    measured.set_defaults(run=node_measure)
    key = node_verbs.add_parser("sealing-key", help="write a new operator key for a software HSM")
    key.add_argument("--out", type=Path, required=True, help="key file to create (mode 0600)")
    key.set_defaults(run=node_sealing_key)


def vendor_init(args: argparse.Namespace) -> int:
    ca = VendorCA.init(args.dir, datetime.now(UTC))
    print(f"vendor root CA in {args.dir}: {ca.root.subject.rfc4514_string()}")
    return 0


def vendor_certify(args: argparse.Namespace) -> int:
    hsm = open_pkcs11(args)
    try:
        provision(hsm, VendorCA.open(args.dir), datetime.now(UTC))
        print(f"token {args.token}: device key {hsm.public_key(DEVICE).kid} certified")
    finally:
        hsm.close()
    return 0


def node_measure(args: argparse.Namespace) -> int:
    print(measure())
    return 0


def node_sealing_key(args: argparse.Namespace) -> int:
    try:
        create_operator_key(args.out)
    except FileExistsError:
        raise NodeConfigError("the key file exists; a sealing key is never overwritten") from None
    except OSError as exc:
        raise NodeConfigError(f"cannot create the key file: {exc}") from exc
    return 0


async def node_run(args: argparse.Namespace) -> int:
    listen = listen_address(args.http) if args.http else None
    hsm = DeviceHsm(DeviceClient(args.hsm_socket))
    try:
        daemon = NodeDaemon(
            hsm,
            args.state,
            args.domain,
            read_pins(args.orchestrator_key),
            node_id=args.node_id,
            measurement=args.measurement,
            heartbeat_s=args.heartbeat,
            applet=RemoteApplet(hsm.device),
        )
        options = credentials.party_options(NODE, daemon.node_id, args.nats_seed, args.nats_ca)
        nc = await credentials.connect(args.nats, options)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await daemon.start(nc)
        runner = web.AppRunner(create_app(daemon), access_log=None)
        try:
            if listen is not None:
                await _serve_http(runner, *listen)
            print(daemon.node_id, flush=True)
            while not stop.is_set() and not nc.is_closed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=1.0)
        finally:
            await runner.cleanup()
            await daemon.stop()
            await nc.close()
    finally:
        hsm.close()
    return 0 if stop.is_set() else 1


async def _serve_http(runner: web.AppRunner, host: str, port: int) -> None:
    """Serve ``runner``'s app on ``host:port`` (0: any free port) and log where."""
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        raise NodeConfigError(f"cannot serve HTTP on {host}:{port}: {exc}") from exc
    bound = runner.addresses[0]
    log.info("serving health and metrics", url=f"http://{bound[0]}:{bound[1]}")
