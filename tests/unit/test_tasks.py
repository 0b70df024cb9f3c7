"""Stopping tasks for good, even one that swallows a cancellation (as Python 3.11's
``asyncio.wait_for`` can when the future it waits on completes at the same moment)."""

from __future__ import annotations

import asyncio

from transport.tasks import cancel_all


async def test_a_task_that_swallows_one_cancellation_is_cancelled_again_until_it_ends():
    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if swallowed:
                    raise
                swallowed += 1  # what a wait_for racing its future's completion does

    async def failing() -> None:
        raise RuntimeError("ended with an error before it was stopped")

    tasks = [asyncio.create_task(stubborn()), asyncio.create_task(failing())]
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_all(tasks, every_s=0.05), 5)
    assert swallowed == 1 and all(t.done() for t in tasks)
    assert tasks[0].cancelled() and isinstance(tasks[1].exception(), RuntimeError)
    await cancel_all([])  # nothing to stop is nothing to wait for
