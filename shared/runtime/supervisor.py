"""Background-task helpers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from aiohttp import web
from prometheus_client import Counter

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")


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


class Backoff:
    """The one retry delay policy: doubling from ``first`` to ``cap`` seconds, with ±20% jitter so
    replicas that failed together do not retry together."""

    def __init__(self, first: float = 0.2, cap: float = 5.0) -> None:
        self.first = first
        self.cap = cap
        self._next = first

    def next(self) -> float:
        """The delay to wait now; the one after is twice as long (up to the cap)."""
        delay = self._next
        self._next = min(self._next * 2, self.cap)
        return delay * random.uniform(0.8, 1.2)

    def reset(self) -> None:
        self._next = self.first


class Supervisor:
    """Runs a process's background loops. A loop that raises anything unexpected is logged with its
    name, counted (``dynconfig_background_errors_total{loop}``), restarted with backoff, and reported
    failing (``/health`` 503: the pod leaves the Service's endpoints; the restart is this supervisor's,
    not Kubernetes', whose liveness probe asks only ``/health/live``) until it has run
    ``RECOVERED_AFTER_SECONDS`` without failing or reports :meth:`ok`."""

    RECOVERED_AFTER_SECONDS = 5.0

    def __init__(self, errors: Counter) -> None:
        self._errors = errors
        self.failing: dict[str, str] = {}
        self._started: dict[str, float] = {}

    def spawn(self, name: str, loop: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
        """Start ``loop`` under supervision; cancel the returned task (``cancel_and_wait``) to stop it."""
        return asyncio.create_task(self._supervise(name, loop), name=name)

    def ok(self, name: str) -> None:
        """``name`` just completed a round of work: it is healthy again."""
        self.failing.pop(name, None)

    @property
    def status(self) -> str:
        """The ``background`` check of ``/health``: ``"ok"``, or which loops are failing and why."""
        now = time.monotonic()
        for name, started in list(self._started.items()):
            if name in self.failing and now - started >= self.RECOVERED_AFTER_SECONDS:
                self.ok(name)
        if not self.failing:
            return "ok"
        return "failing: " + ", ".join(f"{name} ({why})" for name, why in sorted(self.failing.items()))

    async def _supervise(self, name: str, loop: Callable[[], Awaitable[None]]) -> None:
        backoff = Backoff()
        while True:
            started = self._started[name] = time.monotonic()
            try:
                await loop()
                why = "returned"
                log.error("background loop %s returned; restarting it", name)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                why = type(exc).__name__
                log.exception("background loop %s failed; restarting it", name)
            self._started.pop(name, None)
            self.failing[name] = why
            self._errors.labels(name).inc()
            if time.monotonic() - started >= self.RECOVERED_AFTER_SECONDS:
                backoff.reset()  # it had been working: this is a new failure, not the same one again
            await asyncio.sleep(backoff.next())


SUPERVISOR = web.AppKey("supervisor", Supervisor)
