"""Connecting as a role, and servers that run a bundle's configs.

:func:`connect` is ``nats.connect`` with the party's nkey seed (the server sends a nonce, the
client signs it), its private inbox prefix (which its permissions allow it to subscribe to) and,
when the bundle has client TLS, a context that trusts only the bundle's CA. A process that has
only its own seed file uses :func:`transport.credentials.party_options` instead.

:class:`SecuredServer` and :class:`SecuredCluster` are the embedded server and cluster of
:mod:`ops.natsserver` running the bundle's ``single.conf`` / ``cluster.conf``; they keep the
bundle, and their ``connect(role, id)`` opens a connection as that party.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nats.aio.client import Client as NATS

from ops.natsauth.bundle import Bundle, BundleError
from ops.natsserver import NatsCluster, NatsServer
from transport import credentials
from transport.parties import AUDITOR, ORCHESTRATOR


async def connect(
    bundle: Bundle, role: str, party_id: str, servers: str | list[str], **options: Any
) -> NATS:
    """A connection as ``role``/``party_id`` of ``bundle``; ``options`` go to ``nats.connect``
    (see :func:`transport.credentials.connect`)."""
    return await credentials.connect(servers, bundle.connect_options(role, party_id), **options)


class SecuredServer(NatsServer):
    """One JetStream server running ``bundle``'s ``single.conf``."""

    def __init__(self, bundle: Bundle, state_dir: Path, **options: Any) -> None:
        super().__init__(state_dir, config=bundle.config("single"), **options)
        self.bundle = bundle

    async def connect(self, role: str, party_id: str, **options: Any) -> NATS:
        """A connection to this server as ``role``/``party_id``."""
        return await connect(self.bundle, role, party_id, self.url, **options)


class SecuredCluster(NatsCluster):
    """A cluster running ``bundle``'s ``cluster.conf``, checked for a JetStream leader as the
    first orchestrator (or auditor) of the layout."""

    def __init__(self, bundle: Bundle, state_dir: Path, size: int = 3, name: str = "hsmfleet"):
        readers = bundle.layout.of(ORCHESTRATOR) or bundle.layout.of(AUDITOR)
        if not readers:
            raise BundleError("a secured cluster needs an orchestrator or an auditor to check it")
        reader = readers[0]
        super().__init__(
            state_dir,
            size,
            name,
            config=bundle.config("cluster"),
            connect=bundle.connect_options(reader.role, reader.id),
        )
        self.bundle = bundle

    async def connect(self, role: str, party_id: str, **options: Any) -> NATS:
        """A connection to every server of the cluster as ``role``/``party_id``."""
        return await connect(self.bundle, role, party_id, self.urls, **options)
