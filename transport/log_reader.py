"""Reading a cosigner's log over its HTTP API (see ``cosigner/http.py``), for verifiers and
auditors. Nothing read here is trusted until it is checked against a pinned key."""

from __future__ import annotations

from typing import Any

import aiohttp

from messages.canonical import unb64
from messages.cosigning import Signed
from messages.errors import HsmfleetError

PAGE = 256


class LogUnreachable(HsmfleetError):
    """The log's HTTP API did not answer, or answered with an error or nonsense."""

    kind = "log_unreachable"


class LogReader:
    """GETs from one cosigner's HTTP API at ``url``."""

    def __init__(self, http: aiohttp.ClientSession, url: str, timeout: float = 10.0) -> None:
        self.http = http
        self.url = url.rstrip("/")
        self.timeout = aiohttp.ClientTimeout(total=timeout)

    async def _get(self, path: str, **params: object) -> Any:
        try:
            async with self.http.get(
                self.url + path, params={k: str(v) for k, v in params.items()}, timeout=self.timeout
            ) as response:
                if response.status != 200:
                    raise LogUnreachable(
                        f"log answered {response.status}: {await response.text()}", path=path
                    )
                if response.content_type == "application/json":
                    return await response.json()
                return await response.text()
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise LogUnreachable(f"cannot read the log: {exc}", url=self.url, path=path) from exc

    async def checkpoint(self) -> str:
        """The latest checkpoint note (unverified)."""
        note = await self._get("/checkpoint")
        if not isinstance(note, str):
            raise LogUnreachable("checkpoint is not text", url=self.url)
        return note

    def _base64_list(self, raw: Any, member: str) -> list[bytes]:
        """``raw[member]`` decoded as a list of base64 strings."""
        items = raw.get(member) if isinstance(raw, dict) else None
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise LogUnreachable(f"{member} is not a list of base64 strings", url=self.url)
        try:
            return [unb64(i) for i in items]
        except ValueError as exc:
            raise LogUnreachable(f"{member} is not a list of base64 strings", url=self.url) from exc

    def _hashes(self, raw: Any) -> list[bytes]:
        return self._base64_list(raw, "proof")

    async def consistency(self, old_size: int, size: int) -> list[bytes]:
        return self._hashes(await self._get("/consistency", old=old_size, size=size))

    async def inclusion(self, index: int, size: int) -> list[bytes]:
        return self._hashes(await self._get("/inclusion", index=index, size=size))

    async def receipt(self, digest: str) -> Signed:
        raw = await self._get("/receipt", digest=digest)
        try:
            return Signed.from_json(raw)
        except HsmfleetError as exc:
            raise LogUnreachable(f"receipt is malformed: {exc}", url=self.url) from exc

    async def entries(self, start: int, end: int) -> list[bytes]:
        """Entries ``start..end-1``, page by page."""
        out: list[bytes] = []
        while start + len(out) < end:
            first = start + len(out)
            raw = await self._get("/entries", start=first, end=min(first + PAGE, end))
            page = self._base64_list(raw, "entries")
            if not page:
                raise LogUnreachable("the log returned no entries", start=first, url=self.url)
            out += page
        return out[: end - start]
