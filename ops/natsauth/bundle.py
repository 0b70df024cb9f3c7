"""A security bundle: the directory ``hsmfleet nats secure`` writes, and reading it back.

::

    DIR/                   0700
      bundle.json          the layout and whether clients use TLS
      auth.conf            accounts, users and permissions
      single.conf          one server
      cluster.conf         one server of a cluster
      keys/<role>-<id>.nk  each party's nkey seed (0600, directory 0700)
      tls/ca.pem           the CA that clients and routes verify against
      tls/server.pem       the server certificate
      tls/server.key       its key (0600)

Every file is created 0600 in a fresh private directory that is renamed into place once
complete, so a failed run leaves nothing behind and an existing bundle is never overwritten.
The server configs name the TLS files by absolute path: move the directory, regenerate.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from messages.errors import HsmfleetError
from ops.natsauth import render
from ops.natsauth.nkey import user_key
from ops.natsauth.tls import DEFAULT_NAMES, issue
from transport.credentials import party_options
from transport.files import write_file
from transport.parties import Layout, LayoutError, Party, parse_layout

MANIFEST = "bundle.json"
FORMAT = 1
KINDS = ("single", "cluster")


class BundleError(HsmfleetError):
    """A security bundle cannot be written there, or the directory is not a bundle."""

    kind = "nats_bundle"


@dataclass(frozen=True)
class Bundle:
    """A written bundle: where its files are and how each party connects."""

    root: Path
    layout: Layout
    tls: bool

    def config(self, kind: str) -> Path:
        """The server config for ``kind`` (``single`` or ``cluster``)."""
        if kind not in KINDS:
            raise BundleError("no such server config", kind=kind, kinds=KINDS)
        return self.root / f"{kind}.conf"

    def seed_file(self, party: Party) -> Path:
        return self.root / "keys" / f"{party.name}.nk"

    @property
    def ca_file(self) -> Path:
        return self.root / "tls" / "ca.pem"

    def arguments(self, role: str, party_id: str) -> list[str]:
        """The command-line arguments that give a process (``hsmfleet node run``, ``cosigner
        run``) only ``role``/``party_id``'s seed and, with client TLS, the CA."""
        seed = self.seed_file(self.layout.party(role, party_id))
        return ["--nats-seed", str(seed), *(["--nats-ca", str(self.ca_file)] if self.tls else [])]

    def connect_options(self, role: str, party_id: str) -> dict[str, Any]:
        """Keyword arguments for ``nats.connect`` as ``role``/``party_id`` (see
        :func:`~transport.credentials.party_options`), from this bundle's files."""
        party = self.layout.party(role, party_id)
        seed = self.seed_file(party)
        if not seed.is_file():
            raise BundleError("the party's seed file is missing", path=str(seed))
        return party_options(role, party_id, seed, self.ca_file if self.tls else None)


def write_bundle(
    layout: Layout, out: Path, *, tls: bool = False, names: tuple[str, ...] = DEFAULT_NAMES
) -> Bundle:
    """Generate keys, certificates and configs for ``layout`` into the new directory ``out``.

    ``out`` must not exist, or be an empty directory; ``names`` are what the server certificate
    is valid for. Raises :class:`BundleError` otherwise; nothing is written then.
    """
    out = Path(out).absolute()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BundleError("the output exists and is not an empty directory", path=str(out))
    if not out.parent.is_dir():
        raise BundleError("the output's parent directory does not exist", path=str(out.parent))
    if not names:
        raise BundleError("the server certificate needs at least one name")
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        _fill(work, out, layout, tls, names)
        os.replace(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return Bundle(out, layout, tls)


def _fill(work: Path, final: Path, layout: Layout, tls: bool, names: tuple[str, ...]) -> None:
    (work / "keys").mkdir(mode=0o700)
    (work / "tls").mkdir(mode=0o700)
    public = {}
    for party in layout.parties:
        key = user_key()
        write_file(
            work / "keys" / f"{party.name}.nk",
            key.seed.encode() + b"\n",
            secret=True,
            replace=False,
        )
        public[party.name] = key.public
    material = issue(names)
    write_file(work / "tls" / "ca.pem", material.ca_cert, secret=True, replace=False)
    write_file(work / "tls" / "server.pem", material.server_cert, secret=True, replace=False)
    write_file(work / "tls" / "server.key", material.server_key, secret=True, replace=False)
    files = render.TlsFiles(
        ca=final / "tls" / "ca.pem",
        cert=final / "tls" / "server.pem",
        key=final / "tls" / "server.key",
    )
    write_file(
        work / render.AUTH_FILE,
        render.auth_config(layout, public).encode(),
        secret=True,
        replace=False,
    )
    for kind in KINDS:
        text = render.server_config(
            cluster=kind == "cluster", client_tls=files if tls else None, route_tls=files
        )
        write_file(work / f"{kind}.conf", text.encode(), secret=True, replace=False)
    manifest = {"format": FORMAT, "tls": tls, "layout": layout.to_json()}
    write_file(
        work / MANIFEST, json.dumps(manifest, indent=2).encode() + b"\n", secret=True, replace=False
    )


def open_bundle(root: Path) -> Bundle:
    """The bundle written at ``root``; raises :class:`BundleError` if it is not one."""
    root = Path(root).absolute()
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except OSError as exc:
        error = exc.strerror
        raise BundleError("not a security bundle", path=str(root), error=error) from None
    except json.JSONDecodeError as exc:
        raise BundleError("the bundle manifest is not JSON", error=str(exc)) from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError("unknown bundle format", path=str(root))
    if not isinstance(manifest.get("tls"), bool):
        raise BundleError("the bundle manifest does not say whether clients use TLS")
    try:
        layout = parse_layout(manifest.get("layout"))
    except LayoutError as exc:
        raise BundleError(f"the bundle's layout is invalid: {exc}", path=str(root)) from None
    return Bundle(root, layout, manifest["tls"])


def ensure_bundle(root: Path, layout: Layout, *, tls: bool = False) -> tuple[Bundle, bool]:
    """The bundle at ``root`` if there is one for ``layout`` (and ``tls``), else a new one
    written there; returns it and whether it was written now. A bundle kept from an earlier
    run keeps its credentials, so processes given them stay valid across server restarts.

    Raises :class:`BundleError` when ``root`` holds a bundle for another layout or TLS choice
    (regenerating would lock out everyone holding its credentials: remove it deliberately).
    """
    root = Path(root).absolute()
    if not (root / MANIFEST).exists():
        return write_bundle(layout, root, tls=tls), True
    bundle = open_bundle(root)
    if bundle.layout != layout or bundle.tls != tls:
        raise BundleError(
            "a bundle for another layout or TLS choice is already there; remove it to regenerate",
            path=str(root),
        )
    return bundle, False
