"""shared.runtime.coalescer.Coalescer: the calls of one event-loop turn go out as one batch (used for Redis)."""

from __future__ import annotations

import asyncio

import pytest

from shared.runtime.coalescer import Coalescer


async def test_calls_of_one_turn_form_one_batch_and_each_gets_its_own_result() -> None:
    batches: list[list[int]] = []

    async def run(items: list[int]) -> list[int]:
        batches.append(items)
        await asyncio.sleep(0)
        return [item * 10 for item in items]

    coalescer = Coalescer(run)
    assert await asyncio.gather(*(coalescer.call(i) for i in range(5))) == [0, 10, 20, 30, 40]
    assert batches == [[0, 1, 2, 3, 4]]
    assert await coalescer.call(7) == 70  # a later turn: a batch of its own
    assert batches[-1] == [7]


async def test_batches_are_capped() -> None:
    sizes: list[int] = []

    async def run(items: list[int]) -> list[int]:
        sizes.append(len(items))
        return items

    coalescer = Coalescer(run, max_batch=4)
    assert await asyncio.gather(*(coalescer.call(i) for i in range(10))) == list(range(10))
    assert sizes == [4, 4, 2]


async def test_a_failed_batch_raises_to_every_caller_of_it() -> None:
    async def run(items: list[int]) -> list[int]:
        raise ConnectionError("redis went away")

    coalescer = Coalescer(run)
    results = await asyncio.gather(*(coalescer.call(i) for i in range(3)), return_exceptions=True)
    assert [type(r) for r in results] == [ConnectionError] * 3


async def test_an_item_that_breaks_its_batch_fails_alone() -> None:
    """A failure that is not the server's (here a ValueError for item 3) is narrowed down by halving the
    batch: every other caller gets its result, and only the halves on the way to item 3 are re-sent."""
    batches: list[list[int]] = []

    async def run(items: list[int]) -> list[int]:
        batches.append(items)
        if 3 in items:
            raise ValueError("cannot encode item 3")
        return [item * 10 for item in items]

    coalescer = Coalescer(run)
    results = await asyncio.gather(*(coalescer.call(i) for i in range(8)), return_exceptions=True)
    assert isinstance(results.pop(3), ValueError)
    assert results == [0, 10, 20, 40, 50, 60, 70]
    assert len(batches) == 7  # 8, then 4 + 4, then 2 + 2 of the bad half, then 1 + 1


async def test_a_shared_failure_is_not_retried_item_by_item() -> None:
    calls = 0

    async def run(items: list[int]) -> list[int]:
        nonlocal calls
        calls += 1
        raise TimeoutError("redis did not answer")

    coalescer = Coalescer(run, shared_failures=(TimeoutError,))
    results = await asyncio.gather(*(coalescer.call(i) for i in range(8)), return_exceptions=True)
    assert [type(r) for r in results] == [TimeoutError] * 8
    assert calls == 1


async def test_a_cancelled_caller_does_not_disturb_the_others() -> None:
    release = asyncio.Event()

    async def run(items: list[int]) -> list[int]:
        await release.wait()
        return items

    coalescer = Coalescer(run)
    calls = [asyncio.create_task(coalescer.call(i)) for i in range(3)]
    await asyncio.sleep(0.01)
    calls[1].cancel()
    release.set()
    assert await calls[0] == 0 and await calls[2] == 2
    with pytest.raises(asyncio.CancelledError):
        await calls[1]
