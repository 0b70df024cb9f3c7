"""Stopping tasks for good. Python 3.11's ``asyncio.wait_for`` can swallow a cancellation that
arrives just as the future it waits on completes (nats-py waits that way for every request),
so one ``cancel()`` may leave a looping task running; :func:`cancel_all` cancels until done."""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from typing import Any


async def cancel_all(tasks: Collection[asyncio.Task[Any]], *, every_s: float = 0.5) -> None:
    """Cancel ``tasks`` and wait until every one has ended, cancelling again every ``every_s``
    seconds any that swallowed the cancellation. Their results and errors are dropped."""
    pending = {t for t in tasks if not t.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=every_s)
    for task in tasks:
        if not task.cancelled():
            task.exception()  # retrieved, so asyncio does not log it as never retrieved
