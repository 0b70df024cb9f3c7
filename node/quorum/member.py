"""One fleet member as a process: replica (acceptor, proposer, configuration) and vault service.

Run it with ``python -m node.quorum.member --settings FILE [--new]`` or
``hsmfleet member run --settings FILE [--new]``. Its vote key and the fleet's vault keys live in
its HSM: the software HSM in this process (sealed under the operator key file the settings
name), with the vault applet beside it, or, with ``hsm_socket`` set, an HSM device process
(``hsmfleet hsm serve``) that runs the applet itself. ``--new`` allows starting with no quorum
state: a new fleet, or a member joining one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import structlog
from nats.aio.client import Client as NATS

from messages.errors import HsmfleetError
from messages.membership import Membership
from messages.quorum import OPERATOR_ROLE, Config, MemberKey
from messages.schema import Body
from messages.signing import TrustedKey
from messages.vault_policy import VaultPolicy
from node.hsm.base import Hsm
from node.hsm.device.client import DeviceClient, DeviceHsm
from node.hsm.sealing import load_operator_key
from node.hsm.soft import SoftHsm
from node.quorum.replica import Replica
from node.vault.applet import FleetSetup, KeySet, VaultApplet
from node.vault.device_ops import RemoteApplet
from node.vault.journal import EvaluationJournal
from node.vault.service import VaultService
from transport import credentials, logs
from transport.parties import NODE

log = structlog.get_logger("hsmfleet.member")

VOTE_KEY = "quorum-vote"
JOURNAL_FILE = "vault-journal.sqlite3"


class BadSettings(HsmfleetError):
    """A member's settings file cannot be read or is not JSON."""

    kind = "member_settings"


@dataclass(frozen=True)
class MemberSettings(Body):
    """What a member process needs to know, as kept in its settings file (JSON)."""

    fleet: str
    member: str
    nats: tuple[str, ...]
    state_dir: str
    hsm_key_file: str
    config: Config
    vault: VaultPolicy
    keys: tuple[KeySet, ...]
    operator: MemberKey | None = None
    hsm_socket: str | None = None
    """An HSM device's socket: the member's HSM and vault applet run there, not in-process."""
    max_batch: int = 128
    phase_timeout: float = 0.5
    deadline: float = 3.0
    nats_seed: str | None = None
    """The member's NATS nkey seed file (a node's, ``node-<member>.nk``); None: no credentials."""
    nats_ca: str | None = None
    """The CA file of NATS servers that require TLS."""

    @classmethod
    def load(cls, path: Path) -> MemberSettings:
        try:
            raw = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise BadSettings(f"cannot read member settings: {exc}", path=str(path)) from exc
        return cls.from_json(raw, "settings")

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=2))


def open_hsm(state_dir: Path, hsm_key_file: Path) -> SoftHsm:
    """The member's software HSM, with its vote key made inside on first use."""
    hsm = SoftHsm(Path(state_dir) / "hsm", load_operator_key(Path(hsm_key_file)))
    hsm.ensure(VOTE_KEY, hsm.signing_alg())
    return hsm


class Member:
    """A running member: its NATS connection, replica and vault service."""

    def __init__(self, settings: MemberSettings, *, new: bool = False) -> None:
        self.settings = settings
        state = Path(settings.state_dir)
        self.journal: EvaluationJournal | None = None
        self.hsm: Hsm
        if settings.hsm_socket is not None:
            self.hsm = DeviceHsm(DeviceClient(Path(settings.hsm_socket)))
            applet: VaultApplet | RemoteApplet = RemoteApplet(self.hsm.device)
        else:
            self.hsm = open_hsm(state, Path(settings.hsm_key_file))
            self.journal = EvaluationJournal(state / JOURNAL_FILE)
            applet = VaultApplet(self.hsm, self.journal)
        self.applet = applet
        vault = applet.configure(self._setup(settings.config))
        operator = None
        if settings.operator is not None:
            operator = TrustedKey(
                "operator",
                settings.operator.alg,
                settings.operator.public_key,
                frozenset({OPERATOR_ROLE}),
            )
        self.replica = Replica(
            settings.member,
            self.hsm.signer(VOTE_KEY),
            state,
            Membership.from_config(settings.config),
            operator=operator,
            new=new,
            vetter=vault,
            on_reconfigure=lambda config: self.applet.configure(
                self._setup(config, self.replica.earlier())
            ),
            max_batch=settings.max_batch,
            phase_timeout=settings.phase_timeout,
            deadline=settings.deadline,
        )
        self.vault = VaultService(settings.fleet, settings.member, self.replica.proposer, vault)
        self.nc: NATS | None = None

    def _setup(self, config: Config, earlier: tuple[Config, ...] = ()) -> FleetSetup:
        settings = self.settings
        return FleetSetup(
            fleet=settings.fleet,
            member=settings.member,
            config=config,
            policy=settings.vault,
            keys=settings.keys,
            earlier=earlier,
        )

    async def start(self) -> None:
        """Connect (reconnecting for ever), start the replica, then serve the vault."""
        settings = self.settings
        party = credentials.party_options(
            NODE, settings.member, settings.nats_seed, settings.nats_ca
        )
        self.nc = await credentials.connect(
            list(settings.nats),
            party,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.2,
            connect_timeout=2,
            # The member's own requests reach its acceptor in process; the server need not
            # echo them back to be decoded, verified and dropped.
            no_echo=True,
        )
        await self.replica.start(self.nc)
        await self.vault.start(self.nc)
        log.info("member started", member=self.settings.member, fleet=self.settings.fleet)

    async def stop(self) -> None:
        await self.vault.stop()
        await self.replica.stop()
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.close()
        if self.journal is not None:
            self.journal.close()
        self.hsm.close()


async def run(settings_path: Path, new: bool) -> int:
    """Run a member until SIGTERM or SIGINT."""
    member = Member(MemberSettings.load(settings_path), new=new)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await member.start()
    try:
        await stop.wait()
    finally:
        await member.stop()
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--settings", type=Path, required=True, help="member settings (JSON)")
    parser.add_argument(
        "--new", action="store_true", help="allow starting without quorum state (new or joining)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m node.quorum.member", description=__doc__)
    add_arguments(parser)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    logs.configure(json=True, level=args.log_level)
    try:
        return asyncio.run(run(args.settings, args.new))
    except HsmfleetError as exc:
        print(f"member: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
