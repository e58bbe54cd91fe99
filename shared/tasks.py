"""Background-task helpers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable
from typing import TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


async def cancel_and_wait(task: asyncio.Task[object]) -> None:
    """Cancel a task we started and wait for it to finish (its CancelledError is expected).

    Cancels again until the task is done: on Python 3.11 ``asyncio.wait_for`` (used inside aiopg and
    redis-py) can swallow a cancellation that lands in the same loop step as its result, and a
    ``while True`` loop would then run for ever.
    """
    task.cancel()
    # Give the task time to unwind (roll back an open transaction, close a socket) before insisting:
    # cancelling again in the middle of a rollback would leave the transaction open.
    await asyncio.wait({task}, timeout=2.0)
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.5)
    with contextlib.suppress(asyncio.CancelledError):
        if task.exception() is not None:
            log.error("background task %s had failed", task.get_name(), exc_info=task.exception())


async def complete_then_cancel(work: Awaitable[T]) -> T:
    """Run ``work`` (a transaction) to the end even if our task is cancelled meanwhile, then re-raise.

    Background loops wrap each transaction in this, so shutting them down never interrupts a BEGIN,
    COMMIT or ROLLBACK half way (which would leave the connection mid-transaction).
    """
    task = asyncio.ensure_future(work)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.cancelled():
                raise
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    return task.result()
