"""Calls made in the same turn of the event loop, sent together (Redis scripts, group commit)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


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
