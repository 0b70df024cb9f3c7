"""A fleet on one machine: member directories, HSM keys, vault keys and settings files.

This stands in for the rollout's ``ceremony`` and ``quorum`` stages until they exist: it makes
each member's vote key inside that member's software HSM, generates the fleet's vault keys, and
writes a settings file per member. Members then run in this process (:class:`Member`) or as
their own processes (:meth:`LocalFleet.spawn`), as tests, the fault harness and the benchmark do.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from messages.quorum import MemberKey
from messages.signing import Ed25519Signer
from messages.vault import DEFAULT_LIMIT
from node.hsm.sealing import create_operator_key
from node.quorum.member import MemberSettings, open_vote_signer
from node.quorum.membership import Membership
from node.vault.keys import VaultKeys

SETTINGS_FILE = "settings.json"


def provision(state: Path, member: str) -> MemberKey:
    """Create ``member``'s directory, HSM sealing key and vote key (made inside its HSM)."""
    state.mkdir(parents=True, exist_ok=True)
    key_file = state / "hsm.key"
    create_operator_key(key_file)
    hsm, signer = open_vote_signer(state, key_file)
    hsm.close()
    return MemberKey(member=member, alg=signer.alg, public_key=signer.public_key)


@dataclass
class LocalFleet:
    """The files of a fleet under ``root``, and the operator key that signs its changes."""

    root: Path
    fleet: str
    nats: tuple[str, ...]
    operator: Ed25519Signer
    vault_keys: VaultKeys
    membership: Membership
    options: dict = field(default_factory=dict)

    @classmethod
    def create(
        cls,
        root: Path,
        fleet: str,
        size: int,
        nats: list[str],
        *,
        limit: int = DEFAULT_LIMIT,
        **options: object,
    ) -> LocalFleet:
        """Make ``size`` members ``m1``..``mN`` with majority quorums under ``root``."""
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        keys = VaultKeys.generate()
        keys.save(root / "vault.keys")
        names = [f"m{i}" for i in range(1, size + 1)]
        membership = Membership.majority(fleet, {m: provision(root / m, m) for m in names})
        local = cls(
            root,
            fleet,
            tuple(nats),
            Ed25519Signer.generate(),
            keys,
            membership,
            {"limit": limit, **options},
        )
        for member in names:
            local.write_settings(member, membership)
        return local

    @property
    def members(self) -> list[str]:
        return sorted(self.membership.keys)

    @property
    def session_public(self) -> bytes:
        return self.vault_keys.session_public

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
            vault_keys=str(self.root / "vault.keys"),
            config=membership.to_config(),
            operator=MemberKey(
                member="operator", alg=self.operator.alg, public_key=self.operator.public_key
            ),
            **self.options,
        )
        settings.save(self.settings_path(member))
        return settings

    def settings(self, member: str) -> MemberSettings:
        return MemberSettings.load(self.settings_path(member))

    def prepare_join(self, member: str) -> MemberKey:
        """Provision a new member that will join: its vote key and settings (current config)."""
        key = provision(self.state_dir(member), member)
        self.write_settings(member, self.membership)
        return key

    def command(self, member: str, *, new: bool = False) -> list[str]:
        """The command line that runs ``member`` as its own process."""
        cmd = [sys.executable, "-m", "node.quorum.member", "--settings"]
        cmd.append(str(self.settings_path(member)))
        return [*cmd, "--new"] if new else cmd

    def spawn(self, member: str, *, new: bool = False, log: Path | None = None) -> subprocess.Popen:
        """Start ``member`` as a process in its own session (so signals reach only it)."""
        out = open(log or self.state_dir(member) / "member.log", "ab")  # noqa: SIM115
        try:
            return subprocess.Popen(
                self.command(member, new=new),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            out.close()
