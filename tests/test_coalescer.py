"""shared.tasks.Coalescer: the calls of one event-loop turn go out as one batch (used for Redis)."""

from __future__ import annotations

import asyncio

import pytest

from shared.tasks import Coalescer


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
