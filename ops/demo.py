"""``hsmfleet demo``: a fleet rolled out end to end on this machine, every party its own process.

It lays out a working directory (``--dir``, a new ``run-<time>`` directory under
``hsmfleet-demo/`` by default), writes a NATS security bundle for its parties (one nkey user
each, permissions per role, TLS; ``nats-auth/``), starts an embedded nats-server with it, two
cosigners that witness each
other (``hsmfleet cosigner run``), the orchestrator (``hsmfleet orchestrator``) with the
operator's countersigning key in a software HSM, and five node daemons with software HSMs
across three failure domains (``hsmfleet node run``), each process connecting with only its own
seed file and the CA (``--nats-seed``, ``--nats-ca``); each node's software HSM runs as its own
device process (``hsmfleet hsm serve``) that the node daemon reaches over a local socket, so the
daemons hold no key material. It then writes a rollout plan (with a vault whose requests the
demo's account authority authorizes), shows what it would do, starts it, follows it stage by
stage, approves the gate before ``publish``, fetches the validation bundle, writes the trust file
a client pins, verifies the bundle with the verifier, registers a PIN-guarded secret in the
fleet's vault and recovers it as the vault client party, using only the verified bundle's vault
keys (the vault keys were made in the key ceremony, inside the HSMs), and prints where the
bundle, the trust file and the logs are.

The processes keep running (the API and the cosigners' logs can be explored) until Ctrl-C, which
stops every process the demo started; ``--exit`` stops them as soon as the bundle verified.
Exit code 0 when the bundle verified, 1 when the rollout or the verification failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from cosigner.config import load_config, load_key, pin_of
from cosigner.testbed import init_cosigners
from messages.canonical import b64
from messages.errors import HsmfleetError
from messages.pins import CosignerPin, OperatorPin, Pins, QuorumFloor
from messages.plan import describe
from messages.signing import Ed25519Signer
from messages.vault_authorization import AccountAuthority
from messages.vault_policy import KEM_ROLE
from messages.verification import VerificationError
from messages.verifier_state import VerifierState
from messages.verify import Accepted, verify_bundle
from node.hsm.sealing import create_operator_key
from node.measurement import measure
from node.pins import write_pin
from node.vendor import VendorCA
from ops.natsauth.bundle import Bundle, write_bundle
from ops.natsauth.connect import SecuredServer
from ops.verifier_files import save_pins
from orchestrator.cli.plan_file import load_plan
from orchestrator.cli.rollout import summary
from orchestrator.shell.config import Settings
from orchestrator.shell.keys import generate, make_operator_key
from transport import credentials, logs
from transport.files import write_seed
from transport.parties import CLIENT as CLIENT_ROLE
from transport.parties import Party, parse_layout
from transport.vault_client import VaultClient

FLEET = "demo-fleet"
HOLDER = "orch-a"
CLIENT = "app"
TOKEN = "demo-operator-token"
NODES = (
    ("node-1", "dc1"),
    ("node-2", "dc1"),
    ("node-3", "dc2"),
    ("node-4", "dc2"),
    ("node-5", "dc3"),
)
COSIGNERS = ("cosigner-a", "cosigner-b")
AUTHORITY_KEY = "account-authority.pub"
AUTHORITY_SEED = "account-authority.key"
"""The account authority's signing key (hex seed, mode 0600): ``hsmfleet vault`` authorizes
requests with it, standing in for the service that logs the demo's users in."""
DEMO_USER, DEMO_PIN = "demo-user", b"2468"
HSM_SOCKET = "hsm.sock"
START_TIMEOUT_S = 60.0


class DemoFailed(HsmfleetError):
    """A demo process did not start, or the rollout did not reach an active fleet."""

    kind = "demo"


def register(verbs: argparse._SubParsersAction) -> None:
    demo = verbs.add_parser("demo", help="roll out a fleet on this machine, end to end")
    demo.add_argument("--dir", type=Path, help="working directory (default: a new one)")
    demo.add_argument("--exit", action="store_true", help="stop once the bundle verified")
    demo.add_argument("--timeout", type=float, default=300.0, help="seconds for the rollout")
    demo.set_defaults(run=demo_command)


def _say(text: str) -> None:
    print(text, flush=True)


@dataclass
class Processes:
    """The processes the demo started, each logging to its own file."""

    logs: Path
    running: dict[str, asyncio.subprocess.Process] = field(default_factory=dict)

    async def start(self, name: str, *args: str) -> dict[str, Any]:
        """Run ``hsmfleet ARGS`` as ``name``; return the JSON it prints first (or its line)."""
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115, ASYNC230 - the child keeps it
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "ops.cli", "--log-json", *args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                start_new_session=True,
            )  # fmt: skip
        finally:
            log.close()
        self.running[name] = proc
        assert proc.stdout is not None
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT_S)
        except TimeoutError:
            line = b""
        if not line:
            raise DemoFailed(f"{name} did not start; see {self.logs / (name + '.log')}")
        text = line.decode().strip()
        try:
            return json.loads(text)
        except ValueError:
            return {"line": text}

    async def stop(self) -> None:
        """SIGTERM every process, the last started first, and wait for each (SIGKILL after
        15 seconds)."""
        for proc in reversed(self.running.values()):
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc in self.running.items():
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                _say(f"  {name} did not stop; killing it")
                proc.kill()
                await proc.wait()


class Api:
    """The orchestrator's API with the demo's operator token."""

    def __init__(self, http: aiohttp.ClientSession, base: str) -> None:
        self.http, self.base = http, base

    async def call(self, method: str, path: str, **kw: Any) -> Any:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with self.http.request(method, self.base + path, headers=headers, **kw) as resp:
            body = await resp.json(content_type=None)
            if resp.status >= 400:
                raise DemoFailed(f"{method} {path}: {body.get('message', resp.reason)}")
            return body


def _secure(root: Path) -> Bundle:
    """Credentials and permissions for every demo party, with TLS on client connections."""
    layout = parse_layout(
        {
            "orchestrators": [HOLDER],
            "nodes": [{"id": node_id, "fleet": FLEET} for node_id, _ in NODES],
            "cosigners": list(COSIGNERS),
            "clients": [CLIENT],
        }
    )
    return write_bundle(layout, root / "nats-auth", tls=True)


def _lay_out(root: Path, bundle: Bundle, nats_url: str, measurement: str) -> dict[str, Any]:
    """Keys, configurations and pins for every party; returns what the next steps need."""
    for name in ("logs", "nodes", "cosigners", "orch"):
        (root / name).mkdir(parents=True, exist_ok=True)
    VendorCA.init(root / "vendor", datetime.now(UTC))
    signer = generate(root / "orch" / "orchestrator.key", root / "orch" / "orchestrator.pub")
    write_pin(root / "orchestrator-pin.json", "orchestrator", signer)
    for path in (root / "operator-hsm.key", root / "nodes" / "hsm.key"):
        create_operator_key(path)
    config = {
        "holder": HOLDER,
        "key_file": "orchestrator.key",
        "vendor_roots": [str(root / "vendor" / "root.pem")],
        "allowed_measurements": [measurement],
        "nats": nats_url,
        "nats_seed": str(bundle.seed_file(Party("orchestrator", HOLDER))),
        "nats_ca": str(bundle.ca_file),
        "listen": "127.0.0.1:0",
        "tokens": {TOKEN: "operator"},
        "operator_hsm": str(root / "operator-hsm"),
        "operator_hsm_key": str(root / "operator-hsm.key"),
    }
    (root / "orch" / "orchestrator.json").write_text(json.dumps(config, indent=2))
    operator = make_operator_key(Settings.load(root / "orch" / "orchestrator.json"))
    operator_pin = OperatorPin(operator.alg, operator.public_key)
    cosigners = [(cid, f"{cid}.demo/log", os.urandom(32)) for cid in COSIGNERS]
    init_cosigners(root / "cosigners", signer, cosigners, operator_pin)
    seed = os.urandom(32)
    authority = Ed25519Signer.from_seed(seed)
    (root / AUTHORITY_KEY).write_text(b64(authority.public_key) + "\n")
    write_seed(root / AUTHORITY_SEED, seed)
    for node_id, _ in NODES:
        (root / "nodes" / node_id).mkdir(parents=True)
    return {"operator": operator_pin, "authority": authority}


async def _use_vault(
    nats_url: str, bundle: Bundle, accepted: Accepted, authority: Ed25519Signer
) -> None:
    """Register a PIN-guarded secret in the fleet's vault and recover it, as the vault client
    party: its keys from the verified bundle, each request authorized by the account
    authority."""
    party = credentials.party_options(
        CLIENT_ROLE, CLIENT, bundle.seed_file(Party(CLIENT_ROLE, CLIENT)), bundle.ca_file
    )
    nc = await credentials.connect(nats_url, party)
    users = AccountAuthority(authority)

    def authorize(user: str, op: str, request: str) -> object:
        return users.authorize(FLEET, user, op, request, time.time_ns() // 1_000_000)

    try:
        client = VaultClient.from_bundle(
            nc, accepted, authorize, now_ms=time.time_ns() // 1_000_000, source=CLIENT
        )
        secret = b"the demo user's backup key"
        await client.register(DEMO_USER, DEMO_PIN, secret)
        if (await client.recover(DEMO_USER, DEMO_PIN)).secret != secret:
            raise DemoFailed("the vault returned another secret")
    finally:
        await nc.close()


def _plan(root: Path, pins: dict[str, CosignerPin]) -> Path:
    """The rollout plan (TOML) of the demo fleet, its cosigners by pin file."""
    lines = [
        f'fleet = "{FLEET}"',
        "",
        "[members]",
        "count = 5",
        'domains = ["dc1", "dc2", "dc3"]',
        'hsm = "soft"',
        "min_per_domain = 1",
        "",
        "[quorum]",
        "threshold = 3",
        "survive_domain_loss = true",
        "",
        "[keys]",
        'signing = "ecdsa-p256-sha256"',
        "",
        "[vault]",
        "limit = 10",
        f'authority_key_file = "{AUTHORITY_KEY}"',
        "replace_interval_s = 86400",
        "",
        "[validity]",
        "days = 365",
        "",
        "[cosigners]",
        "threshold = 2",
    ]
    for cid, pin in pins.items():
        path = root / "cosigners" / f"{cid}.pin.json"
        path.write_text(json.dumps(pin.to_json()))
        lines += ["[[cosigners.pin]]", f'id = "{cid}"', f'pin_file = "cosigners/{cid}.pin.json"']
    lines += [
        "",
        "[rollout]",
        "wave_size = 2",
        "approve_publish = true",
        'on_member_loss = "pause"',
        "member_deadline_s = 60",
    ]
    path = root / "plan.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


async def _follow(api: Api, timeout: float) -> dict[str, Any]:
    """Print the rollout's progress as it changes; approve the gate; return the final view."""
    last: list[str] = []
    deadline = time.monotonic() + timeout
    approved = False
    while True:
        view = await api.call("GET", f"/v1/rollouts/{FLEET}")
        lines = summary(view)
        if lines != last:
            _say("\n".join(lines))
            last = lines
        if view["awaiting_approval"] and not approved:
            _say("approving the gate before publish (hsmfleet rollout approve)")
            await api.call("POST", f"/v1/rollouts/{FLEET}/approve", json={"reason": "demo"})
            approved = True
        if view["status"] in ("active", "aborted", "failed", "superseded"):
            return view
        if time.monotonic() > deadline:
            raise DemoFailed(f"the rollout is not active after {timeout}s", stage=view["stage"])
        await asyncio.sleep(0.2)


async def _run(root: Path, processes: Processes, args: argparse.Namespace) -> int:
    started = time.monotonic()
    auth = _secure(root)
    nats = SecuredServer(auth, root / "nats", name="demo")
    await nats.start()
    try:
        _say(f"nats-server (JetStream) at {nats.url}: TLS, one nkey user per party, {auth.root}")
        # Measured once for the orchestrator's allow-list and every node's claim alike.
        measurement = measure()
        laid = _lay_out(root, auth, nats.url, measurement)
        cosigner_pins: dict[str, CosignerPin] = {}
        for cid in COSIGNERS:
            state = root / "cosigners" / cid
            started_as = await processes.start(
                cid, "cosigner", "run", "--state", str(state), "--nats", nats.url,
                *auth.arguments("cosigner", cid), "--http", "127.0.0.1:0",
            )  # fmt: skip
            cosigner_pins[cid] = pin_of(load_config(state), load_key(state), started_as["url"])
            _say(f"cosigner {cid} logs at {started_as['url']}")
        orch = await processes.start(
            "orchestrator", "orchestrator", "--config", str(root / "orch" / "orchestrator.json")
        )
        _say(f"orchestrator API at {orch['api']} (operator token {TOKEN})")
        for node_id, domain in NODES:
            state = root / "nodes" / node_id
            await processes.start(
                f"{node_id}-hsm", "hsm", "serve", "--socket", str(state / HSM_SOCKET),
                "--state", str(state / "hsm"), "--vendor", str(root / "vendor"),
                "--sealing-key-file", str(root / "nodes" / "hsm.key"),
            )  # fmt: skip
            await processes.start(
                node_id, "node", "run", "--hsm-socket", str(state / HSM_SOCKET),
                "--state", str(state), "--domain", domain, "--nats", nats.url,
                *auth.arguments("node", node_id), "--node-id", node_id,
                "--orchestrator-key", str(root / "orchestrator-pin.json"),
                "--heartbeat", "1", "--measurement", measurement,
            )  # fmt: skip
        _say(
            f"{len(NODES)} node daemons in dc1, dc2, dc3, each beside its software HSM's device"
            " process"
        )
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            api = Api(http, orch["api"])
            await _await_nodes(api)
            plan_file = _plan(root, cosigner_pins)
            plan = load_plan(plan_file)
            _say(f"\nplan {plan_file}:")
            _say("\n".join(f"  {line}" for line in describe(plan)))
            _say("")
            await api.call("POST", "/v1/rollouts", json=plan.to_json())
            view = await _follow(api, args.timeout)
            if view["status"] != "active":
                _say(f"the rollout ended {view['status']}: {view['reason']}")
                return 1
            bundle = await api.call("GET", f"/v1/fleets/{FLEET}/bundle")
        bundle_file = root / "bundle.json"
        bundle_file.write_text(json.dumps(bundle, indent=2) + "\n")
        trust = Pins(
            cosigners=tuple(cosigner_pins.values()),
            threshold=2,
            operator=laid["operator"],
            floor=QuorumFloor(min_members=5, min_threshold=3, min_domains=3),
        )
        trust_file = root / "trust.json"
        save_pins(trust_file, trust)
        try:
            accepted = verify_bundle(
                bundle_file.read_bytes(), trust, VerifierState(), time.time_ns() // 1_000_000
            )
        except VerificationError as exc:
            _say(f"the validation bundle was REFUSED ({exc.kind}): {exc}")
            return 1
        _say(f"\nvalidation bundle ACCEPTED: fleet {FLEET} epoch {accepted.artifact.epoch}")
        _say(f"  digest {accepted.digest}, vouched by {', '.join(accepted.vouchers)}")
        for key in accepted.artifact.keys:
            _say(f"  key {key.role} {key.alg} {b64(key.public_key)}")
        try:
            await _use_vault(nats.url, auth, accepted, laid["authority"])
        except HsmfleetError as exc:
            _say(f"the fleet's vault did not answer ({exc.kind}): {exc}")
            return 1
        kem = next(k for k in accepted.artifact.keys if k.role == KEM_ROLE)
        _say(
            f"vault: registered a PIN-guarded secret and recovered it through {FLEET}'s HSMs"
            " (OPAQUE: the PIN never left the client)"
        )
        _say(f"  sealed to the bundle's {KEM_ROLE} key {b64(kem.public_key)}")
        _say(f"\nrolled out and verified in {time.monotonic() - started:.1f}s")
        _say(f"  bundle:     {bundle_file}")
        _say(f"  trust file: {trust_file}")
        _say(f"  logs:       {root / 'logs'} (and {nats.log_file})")
        _say(
            f"  NATS:       {nats.url} with TLS (CA {auth.ca_file}); a vault client connects"
            f" with {auth.seed_file(Party('client', CLIENT))}"
        )
        _say(f"  check it:   hsmfleet verify {bundle_file} --trust {trust_file}")
        if args.exit:
            _say("the processes stop now; without --exit the demo also prints how to recover")
            _say("the secret and audit the logs, which need the fleet running")
            return 0
        _say(
            f"  recover it: hsmfleet vault recover {DEMO_USER} --bundle {bundle_file}"
            f" --trust {trust_file} --nats {nats.url}"
            f" --nats-seed {auth.seed_file(Party('client', CLIENT))} --nats-ca {auth.ca_file}"
            f" --client-id {CLIENT} --authority-key {root / AUTHORITY_SEED} --out -"
            f"  (PIN {DEMO_PIN.decode()})"
        )
        _say(
            f"  audit it:   hsmfleet audit --pins {trust_file} --orchestrator {orch['api']}"
            f" --token {TOKEN}"
        )
        script = Path(sys.executable).parent / "hsmfleet"
        _say("\nto steer it from another shell (hsmfleet nodes, rollout status, fleet status):")
        _say(
            f"  export PATH={script.parent}:$PATH HSMFLEET_API={orch['api']} HSMFLEET_TOKEN={TOKEN}"
        )
        _say("\nthe fleet keeps running; Ctrl-C stops every process the demo started")
        await asyncio.Event().wait()
        return 0
    finally:
        await processes.stop()
        await nats.stop()


async def _await_nodes(api: Api) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        nodes = (await api.call("GET", "/v1/nodes"))["nodes"]
        if len(nodes) >= len(NODES):
            _say(f"all {len(nodes)} nodes announced themselves")
            return
        if time.monotonic() > deadline:
            raise DemoFailed("the nodes did not announce themselves", seen=len(nodes))
        await asyncio.sleep(0.2)


def working_directory(path: Path) -> Path:
    """``path``, made if it does not exist; an empty directory will do too. Anything else
    (a file, a directory with something in it, say an earlier demo's) raises
    :class:`DemoFailed`: a demo never writes over another's keys and logs."""
    path = path.resolve()
    if path.exists() and not path.is_dir():
        raise DemoFailed("--dir names a file, not a directory", dir=str(path))
    if path.is_dir() and any(path.iterdir()):
        raise DemoFailed("--dir must be a new or empty directory", dir=str(path))
    path.mkdir(parents=True, exist_ok=True)
    return path


async def demo_command(args: argparse.Namespace) -> int:
    root = args.dir or Path("hsmfleet-demo") / datetime.now(UTC).strftime("run-%Y%m%d-%H%M%S")
    root = working_directory(root)
    (root / "logs").mkdir()
    own_log = open(root / "logs" / "demo.log", "a")  # noqa: SIM115, ASYNC230
    logs.configure(json=True, stream=own_log)
    _say(f"hsmfleet demo in {root}")
    processes = Processes(root / "logs")
    task = asyncio.ensure_future(_run(root, processes, args))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    try:
        return await task
    except asyncio.CancelledError:
        _say("\nstopped; every process the demo started is stopped")
        return 0
    finally:
        with contextlib.suppress(Exception):
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
        own_log.close()
