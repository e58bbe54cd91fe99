"""Background-task helpers."""

from __future__ import annotations

import asyncio
import contextlib


async def cancel_and_wait(task: asyncio.Task[object]) -> None:
    """Cancel a task we started and wait for it to finish (its CancelledError is expected)."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
