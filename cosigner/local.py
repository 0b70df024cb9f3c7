"""Reaching cosigners in the same process: the client's :class:`~transport.cosign_client.Transport`
over :class:`~cosigner.engine.Cosigner` objects, with no network in between.

The cosigners are the real ones (real logs, keys and stores); only the NATS hop is absent. Tests,
the worked example of ``messages/SPEC.md`` and benchmarks use it; a refusal comes back as
:class:`~transport.cosign_client.CosignerRefused` with the cosigner's error kind, as over NATS.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

from cosigner.engine import Cosigner
from messages.cosigning import Signed, Witnessed
from messages.errors import HsmfleetError
from transport.cosign_client import CosignerRefused, Peer

T = TypeVar("T")


class LocalTransport:
    """Calls cosigners by id; each must be open."""

    def __init__(self, cosigners: Iterable[Cosigner]) -> None:
        self.cosigners = {c.id: c for c in cosigners}

    async def _call(self, peer: Peer, work: Callable[[Cosigner], Awaitable[T]]) -> T:
        try:
            return await work(self.cosigners[peer.id])
        except HsmfleetError as exc:
            raise CosignerRefused(str(exc), exc.kind, cosigner=peer.id) from exc

    async def _read(self, peer: Peer, work: Callable[[Cosigner], T]) -> T:
        return await self._call(peer, lambda c: asyncio.to_thread(work, c))

    async def sign(self, peer: Peer, document: dict[str, Any]) -> Signed:
        return await self._call(peer, lambda c: c.sign(document))

    async def receipt(self, peer: Peer, digest: str) -> Signed:
        return await self._call(peer, lambda c: c.receipt(digest))

    async def witness(
        self, peer: Peer, old_size: int, consistency: Sequence[bytes], note: str
    ) -> Witnessed:
        return await self._call(peer, lambda c: c.cosign(old_size, consistency, note))

    async def checkpoint(self, peer: Peer) -> str:
        return await self._read(peer, lambda c: c.notary.checkpoint())

    async def inclusion(self, peer: Peer, index: int, size: int) -> list[bytes]:
        return await self._read(peer, lambda c: c.notary.inclusion_proof(index, size))

    async def consistency(self, peer: Peer, old_size: int, size: int) -> list[bytes]:
        return await self._read(peer, lambda c: c.notary.consistency_proof(old_size, size))
