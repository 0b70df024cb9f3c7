"""A fleet on one machine, without an orchestrator: member directories, HSM keys, one key
ceremony and settings files.

It does by itself what a rollout's ``ceremony`` and ``quorum`` stages do: it makes each
member's vote and transport keys inside that member's software HSM, makes the fleet's vault keys
inside the first member's HSM and wraps them to the others (the HSMs' own HPKE wrap), and
writes a settings file per member. Members then run in this process (:class:`Member`) or as
their own processes (:meth:`LocalFleet.spawn`), as tests, the fault harness and the benchmarks
do; with ``devices``, each member's HSM runs as its own device process
(:meth:`LocalFleet.spawn_device`, ``hsmfleet hsm serve``) that the member reaches over a
socket. The account authority is a software key kept by the fleet, so tests can authorize
requests; clients take the vault keys from :attr:`LocalFleet.vault_keys` (there is no
validation bundle: the fleet publishes nothing).
"""

from __future__ import annotations

import select
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from messages.artifact import FleetKey
from messages.ceremony import GenerateFleetKeys, ImportFleetKeys, KeyRole, Recipient
from messages.membership import Membership
from messages.quorum import MemberKey
from messages.signing import ED25519, Ed25519Signer
from messages.vault_authorization import AccountAuthority, Authorization
from messages.vault_policy import DEFAULT_LIMIT, KEM_ROLE, OPAQUE_ROLE, VAULT_KEYS, VaultPolicy
from node import ceremony
from node.hsm.sealing import create_operator_key
from node.identity import TRANSPORT
from node.quorum.member import VOTE_KEY, MemberSettings, open_hsm
from node.vault.applet import KeySet
from node.vendor import VendorCA
from node.vendor import provision as provision_device
from transport.vault_client import VaultKeysInForce

SETTINGS_FILE = "settings.json"
DEVICE_SOCKET = "hsm.sock"
ROLLOUT = "local"
EPOCH = 1


def provision(state: Path, member: str, vendor: VendorCA) -> MemberKey:
    """Create ``member``'s directory, HSM sealing key, vote key and transport key (made inside
    its HSM), and the HSM's device certificate."""
    state.mkdir(parents=True, exist_ok=True)
    key_file = state / "hsm.key"
    create_operator_key(key_file)
    hsm = open_hsm(state, key_file)
    hsm.ensure(TRANSPORT, "ecdh-p256")
    provision_device(hsm, vendor, datetime.now(UTC))
    vote = hsm.public_key(VOTE_KEY)
    hsm.close()
    return MemberKey(member=member, alg=vote.alg, public_key=vote.public_key)


@dataclass
class LocalFleet:
    """The files of a fleet under ``root``, the operator key that signs its configuration
    changes and the account authority that authorizes vault requests."""

    root: Path
    fleet: str
    nats: tuple[str, ...]
    operator: Ed25519Signer
    authority: Ed25519Signer
    policy: VaultPolicy
    vault_keys: VaultKeysInForce
    membership: Membership
    options: dict = field(default_factory=dict)
    devices: bool = False
    """Members reach their HSMs as device processes (:meth:`spawn_device`)."""

    @classmethod
    def create(
        cls,
        root: Path,
        fleet: str,
        size: int,
        nats: list[str],
        *,
        limit: int = DEFAULT_LIMIT,
        replace_interval_s: int = 0,
        devices: bool = False,
        authority: Ed25519Signer | None = None,
        **options: object,
    ) -> LocalFleet:
        """Make ``size`` members ``m1``..``mN`` with majority quorums under ``root``, and the
        fleet's vault keys in their HSMs (certified by a vendor CA of the fleet's own, which a
        device process needs). ``authority``: the account authority's key (default: a new
        one)."""
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        vendor = VendorCA.init(root / "vendor", datetime.now(UTC))
        names = [f"m{i}" for i in range(1, size + 1)]
        membership = Membership.majority(fleet, {m: provision(root / m, m, vendor) for m in names})
        authority = authority or Ed25519Signer.generate()
        policy = VaultPolicy(
            limit=limit,
            authority_alg=ED25519,
            authority_key=authority.public_key,
            replace_interval_s=replace_interval_s,
        )
        local = cls(
            root,
            fleet,
            tuple(nats),
            Ed25519Signer.generate(),
            authority,
            policy,
            _ceremony(root, fleet, policy, names[0], names[1:]),
            membership,
            options,
            devices,
        )
        for member in names:
            local.write_settings(member, membership)
        return local

    @property
    def members(self) -> list[str]:
        return sorted(self.membership.keys)

    def authorize(self, user: str, op: str, request: str, now_ms: int) -> Authorization:
        """The account authority's authorization of one vault request."""
        return AccountAuthority(self.authority).authorize(self.fleet, user, op, request, now_ms)

    def state_dir(self, member: str) -> Path:
        return self.root / member

    def settings_path(self, member: str) -> Path:
        return self.state_dir(member) / SETTINGS_FILE

    def write_settings(
        self, member: str, membership: Membership, *, nats: list[str] | None = None
    ) -> MemberSettings:
        """Write ``member``'s settings file for ``membership``; ``nats`` overrides the URLs."""
        state = self.state_dir(member)
        settings = MemberSettings(
            fleet=self.fleet,
            member=member,
            nats=self.nats if nats is None else tuple(nats),
            state_dir=str(state),
            hsm_key_file=str(state / "hsm.key"),
            config=membership.to_config(),
            vault=self.policy,
            keys=(KeySet(epoch=EPOCH, rollout=ROLLOUT),),
            operator=MemberKey(
                member="operator", alg=self.operator.alg, public_key=self.operator.public_key
            ),
            hsm_socket=str(state / DEVICE_SOCKET) if self.devices else None,
            **self.options,
        )
        settings.save(self.settings_path(member))
        return settings

    def settings(self, member: str) -> MemberSettings:
        return MemberSettings.load(self.settings_path(member))

    def prepare_join(self, member: str) -> MemberKey:
        """Provision a new member that will join: its keys, the fleet's vault keys wrapped to
        it by the first member's HSM, and its settings (current config)."""
        key = provision(self.state_dir(member), member, VendorCA.open(self.root / "vendor"))
        _ceremony(self.root, self.fleet, self.policy, self.members[0], [member])
        self.write_settings(member, self.membership)
        return key

    def command(self, member: str, *, new: bool = False) -> list[str]:
        """The command line that runs ``member`` as its own process."""
        cmd = [sys.executable, "-m", "node.quorum.member", "--settings"]
        cmd.append(str(self.settings_path(member)))
        return [*cmd, "--new"] if new else cmd

    def spawn(self, member: str, *, new: bool = False, log: Path | None = None) -> subprocess.Popen:
        """Start ``member`` as a process in its own session (so signals reach only it)."""
        return _spawn(self.command(member, new=new), log or self.state_dir(member) / "member.log")

    def device_command(self, member: str, socket: Path | None = None) -> list[str]:
        """The command line that serves ``member``'s HSM as a device process (on ``socket``;
        by default the one its settings name)."""
        state = self.state_dir(member)
        return [
            sys.executable, "-m", "ops.cli", "hsm", "serve",
            "--socket", str(socket or state / DEVICE_SOCKET), "--state", str(state / "hsm"),
            "--sealing-key-file", str(state / "hsm.key"),
        ]  # fmt: skip

    def spawn_device(self, member: str, socket: Path | None = None) -> subprocess.Popen:
        """Start ``member``'s HSM device process; it listens once it printed its first line
        (:func:`await_device`)."""
        log = self.state_dir(member) / "hsm.log"
        return _spawn(self.device_command(member, socket), log, stdout=True)


def await_device(process: subprocess.Popen, timeout: float = 30.0) -> None:
    """Wait until a device process :meth:`LocalFleet.spawn_device` started listens."""
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    if not ready or not process.stdout.readline():
        raise TimeoutError("the HSM device process did not start")


def _spawn(command: list[str], log: Path, *, stdout: bool = False) -> subprocess.Popen:
    """``command`` as a process in its own session (so signals reach only it), logging to
    ``log``; with ``stdout``, its standard output is a pipe (the rest still goes to the log)."""
    out = open(log, "ab")  # noqa: SIM115
    try:
        return subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdout else out,
            stderr=out if stdout else subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        out.close()


def _ceremony(
    root: Path, fleet: str, policy: VaultPolicy, source: str, recipients: list[str]
) -> VaultKeysInForce:
    """The vault keys made in ``source``'s HSM (or found there) and imported by
    ``recipients``; the keys a client seals to and checks."""
    roles = tuple(KeyRole(role, alg) for role, alg in VAULT_KEYS.items())
    hsms = {m: open_hsm(root / m, root / m / "hsm.key") for m in (source, *recipients)}
    try:
        to = tuple(
            Recipient(m, "ecdh-p256", hsms[m].public_key(TRANSPORT).public_key) for m in recipients
        )
        offer = ceremony.generate(
            hsms[source], source, GenerateFleetKeys(fleet, EPOCH, ROLLOUT, roles, to, policy)
        )
        for member in recipients:
            wrapped = tuple(w for w in offer.wrapped if w.node == member)
            command = ImportFleetKeys(fleet, EPOCH, ROLLOUT, wrapped, policy)
            ceremony.import_keys(hsms[member], member, command)
    finally:
        for hsm in hsms.values():
            hsm.close()
    made = {k.role: FleetKey(k.role, k.alg, k.public_key, None) for k in offer.receipt.keys}
    return VaultKeysInForce(fleet, made[KEM_ROLE], made[OPAQUE_ROLE])
