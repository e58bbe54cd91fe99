"""Background-task helpers."""

from __future__ import annotations

import asyncio
import contextlib
import logging

log = logging.getLogger(__name__)


async def cancel_and_wait(task: asyncio.Task[object]) -> None:
    """Cancel a task we started and wait for it to finish (its CancelledError is expected).

    Cancels again until the task is done: on Python 3.11 ``asyncio.wait_for`` (used inside aiopg and
    redis-py) can swallow a cancellation that lands in the same loop step as its result, and a
    ``while True`` loop would then run for ever.
    """
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.1)
    with contextlib.suppress(asyncio.CancelledError):
        if task.exception() is not None:
            log.error("background task %s had failed", task.get_name(), exc_info=task.exception())
