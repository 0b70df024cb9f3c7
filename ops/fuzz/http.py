"""Fuzzing an HTTP app: every route it registers, with odd paths, queries, tokens and bodies.

Cases are drawn from the campaign's random source before they are sent (so a seed reproduces
them) and sent by a few concurrent workers. Routes come from the app's router, so routes added
later are fuzzed too. Path parameters of commands (anything but GET and HEAD) never name
something that exists, so no command can succeed; reads may. Every answer must be below 500, and
every answer of 400 or more must be counted by the app (``counted``).
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
import urllib.parse
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from ops.fuzz.mutate import HUGE_NUMBERS, ODD_STRINGS, Mutator

METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD")
SAFE = frozenset({"GET", "HEAD", "OPTIONS"})
QUERY_KEYS = ("from", "limit", "start", "end", "index", "size", "digest", "old", "origin", "after")
QUERY_VALUES = ("0", "1", "-1", "abc", "1e9", "99999999999999999999", "", "0x10", "01", "a" * 64)
WORKERS = 8
BIG_BODY = 2 * 1024 * 1024
_PARAM = re.compile(r"\{([^}]+)\}")


@dataclass(frozen=True)
class Case:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes | None


@dataclass
class HttpFigures:
    """What one app got, how it answered, and what it counted."""

    name: str
    sent: int = 0
    by_status: Counter[int] = field(default_factory=Counter)
    refused: int = 0
    counted_rejects: int = 0
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class HttpTarget:
    """An app under fuzz: its base URL, its routes, ids that exist, tokens, body seeds."""

    name: str
    base: str
    app: web.Application
    real_ids: tuple[str, ...]
    tokens: tuple[str, ...]
    bodies: tuple[bytes, ...]
    counted: Callable[[aiohttp.ClientSession], Awaitable[int]]


def routes(app: web.Application) -> list[tuple[str, str]]:
    """(method, path template) of every route of ``app``."""
    out = []
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        template = info.get("formatter") or info.get("path")
        if template and route.method != "*":
            out.append((route.method, template))
    return sorted(set(out))


class CaseMaker:
    """Draws HTTP cases for ``target`` from ``rng``."""

    def __init__(self, rng: random.Random, mutator: Mutator, target: HttpTarget) -> None:
        self.rng = rng
        self.mutator = mutator
        self.target = target
        self.routes = routes(target.app)

    def case(self) -> Case:
        rng = self.rng
        method, template = rng.choice(self.routes)
        if rng.random() < 0.15:
            method = rng.choice(METHODS)
        if rng.random() < 0.05:
            template = "/" + "/".join(self._odd() for _ in range(rng.randint(1, 4)))
        safe = method in SAFE
        path = _PARAM.sub(lambda m: self._param(safe), template)
        if rng.random() < 0.5:
            query = {rng.choice(QUERY_KEYS): rng.choice(QUERY_VALUES) for _ in range(3)}
            path += "?" + urllib.parse.urlencode(query)
        headers = {}
        token = rng.choice((None, *self.target.tokens, "wrong", ""))
        if token is not None:
            scheme = rng.choice(("Bearer", "Bearer", "bearer", "Basic", ""))
            headers["Authorization"] = f"{scheme} {token}"
        if rng.random() < 0.3:
            headers["Content-Type"] = rng.choice(("application/json", "text/plain", "x/y"))
        return Case(method, path, headers, self._body() if not safe or rng.random() < 0.1 else None)

    def _odd(self) -> str:
        text = str(self.rng.choice(ODD_STRINGS))[:300] or "x"
        return urllib.parse.quote(text, safe="", errors="surrogatepass")

    def _param(self, safe: bool) -> str:
        rng = self.rng
        pick = rng.random()
        if safe and pick < 0.3:
            return rng.choice(self.target.real_ids)
        if pick < 0.6:
            return f"ghost-{rng.randrange(1000)}"
        if pick < 0.8:
            return self._odd()
        return str(rng.choice(HUGE_NUMBERS))

    def _body(self) -> bytes:
        rng = self.rng
        pick = rng.random()
        if pick < 0.002:
            return b"x" * BIG_BODY
        if pick < 0.6 and self.target.bodies:
            seed = rng.choice(self.target.bodies)
            return _mutate_text(rng, self.mutator, seed)
        if pick < 0.8:
            return json.dumps(self.mutator.json_value(3)).encode()
        return rng.randbytes(rng.choice((0, 1, 16, 256)))


def _mutate_text(rng: random.Random, mutator: Mutator, seed: bytes) -> bytes:
    """A body seed with a JSON field changed, or its bytes flipped, cut or spliced."""
    try:
        raw = json.loads(seed)
    except ValueError:
        raw = None
    if isinstance(raw, dict) and raw and rng.random() < 0.6:
        key = rng.choice(sorted(raw))
        if rng.random() < 0.3:
            del raw[key]
        else:
            raw[key] = mutator.json_value(2)
        return json.dumps(raw).encode()
    bytewise = rng.choice((mutator.flip, mutator.cut, mutator.splice_bytes))
    return bytewise(seed)


async def fuzz_http(target: HttpTarget, maker: CaseMaker, count: int) -> HttpFigures:
    """Send ``count`` cases; check answers stay below 500 and refusals are counted."""
    figures = HttpFigures(target.name)
    started = time.perf_counter()
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(base_url=target.base, timeout=timeout) as http:
        baseline = await target.counted(http)
        queue: asyncio.Queue[Case | None] = asyncio.Queue(maxsize=WORKERS * 4)

        async def worker() -> None:
            while (case := await queue.get()) is not None:
                await _send(http, case, figures)

        workers = [asyncio.create_task(worker()) for _ in range(WORKERS)]
        for _ in range(count):
            await queue.put(maker.case())
        for _ in workers:
            await queue.put(None)
        await asyncio.gather(*workers)
        figures.counted_rejects = await target.counted(http) - baseline
    if figures.counted_rejects != figures.refused:
        figures.failures.append(
            f"{figures.refused} refusals answered, {figures.counted_rejects} counted"
        )
    figures.seconds = time.perf_counter() - started
    return figures


async def _send(http: aiohttp.ClientSession, case: Case, figures: HttpFigures) -> None:
    figures.sent += 1
    try:
        async with http.request(
            case.method, case.path, headers=case.headers, data=case.body, allow_redirects=False
        ) as resp:
            status = resp.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        figures.failures.append(f"{case.method} {case.path}: {exc!r}")
        return
    figures.by_status[status] += 1
    if status >= 400:
        figures.refused += 1
    if status >= 500:
        figures.failures.append(f"{case.method} {case.path} answered {status}")
    elif status < 300 and case.method not in SAFE:
        figures.failures.append(f"command {case.method} {case.path} succeeded ({status})")


def prometheus_total(text: str, family: str) -> int:
    """The sum of every sample of counter ``family`` (its ``_total`` samples) in ``text``."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(family + "_total"):
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


async def metrics_counter(http: aiohttp.ClientSession, family: str) -> int:
    """Counter ``family``'s total on the app's Prometheus page."""
    async with http.get("/metrics") as resp:
        return prometheus_total(await resp.text(), family)


async def stats_counter(http: aiohttp.ClientSession) -> int:
    """The HTTP rejects a cosigner reports on its ``/stats`` page."""
    async with http.get("/stats") as resp:
        stats: dict[str, Any] = await resp.json()
    return sum(stats["http_rejects"].values())
