"""Background-task helpers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

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


class Coalescer(Generic[T, R]):
    """Calls made in the same turn of the event loop are sent together: ``run(items)`` gets them all and
    returns one result per item, in order. Used for Redis, where one script or pipeline for a batch
    costs about what one call costs (the client's per-call overhead dominates, not Redis's work).

    A caller waits at most one loop turn more than alone; under load many requests reach the same
    point in one turn, so the cost per call falls with the load. A caller that is cancelled only gives
    up its own result.

    One bad item never fails the others (SPEC §7): when ``run`` raises for a batch of several, the
    batch is split in halves and each is tried on its own, down to the item that fails alone. Only an
    exception of ``shared_failures`` (the server is unreachable: every item would fail alike) is
    raised to every caller of the batch at once.
    """

    def __init__(
        self,
        run: Callable[[list[T]], Awaitable[Sequence[R]]],
        max_batch: int = 512,
        *,
        shared_failures: tuple[type[BaseException], ...] = (OSError, TimeoutError),
    ) -> None:
        self._run = run
        self._max_batch = max_batch
        self._shared_failures = shared_failures
        self._waiting: list[tuple[T, asyncio.Future[R]]] = []
        self._flights: set[asyncio.Task[None]] = set()

    async def call(self, item: T) -> R:
        """``item``'s result, computed in a batch with the other calls of this loop turn."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        if not self._waiting:
            loop.call_soon(self._flush)
        self._waiting.append((item, future))
        return await future

    def _flush(self) -> None:
        waiting, self._waiting = self._waiting, []
        for start in range(0, len(waiting), self._max_batch):
            task = asyncio.get_running_loop().create_task(self._send(waiting[start : start + self._max_batch]))
            self._flights.add(task)
            task.add_done_callback(self._flights.discard)

    async def _send(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            results = await self._run([item for item, _ in batch])
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as exc:
            if len(batch) > 1 and not isinstance(exc, self._shared_failures):
                log.warning("a batch of %d calls failed (%s); trying its halves apart", len(batch), type(exc).__name__)
                middle = len(batch) // 2
                await asyncio.gather(self._send(batch[:middle]), self._send(batch[middle:]))
                return
            for _, future in batch:  # every caller sees the failure, as if it had called alone
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)
