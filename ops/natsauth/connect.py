"""Connecting as a role, and starting servers with a bundle's configs.

:func:`connect` is ``nats.connect`` with the party's nkey seed (the server sends a nonce, the
client signs it), its private inbox prefix (which its permissions allow it to subscribe to) and,
when the bundle has client TLS, a context that trusts only the bundle's CA.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client as NATS

from ops.natsauth.bundle import Bundle, BundleError
from ops.natsauth.layout import AUDITOR, ORCHESTRATOR
from ops.natsserver import NatsCluster, NatsServer


async def connect(
    bundle: Bundle, role: str, party_id: str, servers: str | list[str], **options: Any
) -> NATS:
    """A connection as ``role``/``party_id`` of ``bundle``; ``options`` go to ``nats.connect``."""
    return await nats.connect(servers, **(bundle.connect_options(role, party_id) | options))


def server(bundle: Bundle, state_dir: Path, **options: Any) -> NatsServer:
    """One JetStream server running ``bundle``'s ``single.conf``; ``options`` as for
    :class:`~ops.natsserver.NatsServer`."""
    return NatsServer(state_dir, config=bundle.config("single"), **options)


def cluster(bundle: Bundle, state_dir: Path, size: int = 3, name: str = "hsmfleet") -> NatsCluster:
    """A cluster running ``bundle``'s ``cluster.conf``, checked for a JetStream leader as the
    first orchestrator (or auditor) of the layout."""
    readers = bundle.layout.of(ORCHESTRATOR) or bundle.layout.of(AUDITOR)
    if not readers:
        raise BundleError("a secured cluster needs an orchestrator or an auditor to check it")
    reader = readers[0]
    return NatsCluster(
        state_dir,
        size,
        name,
        config=bundle.config("cluster"),
        connect=bundle.connect_options(reader.role, reader.id),
    )
