"""Point reads of key states from Postgres (cache misses), batched: the reads of one event-loop turn
share one query and one pooled connection (:class:`shared.runtime.coalescer.Coalescer`), instead of paying a
checkout and a round trip each. Each read still sees every write committed before it began: the
query runs after all of them were asked for. Each row comes with the head revision read in the same
statement: the state is the key's current one as of that revision (what the value cache needs)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiopg
from aiohttp import web

from shared.changes.state import KeyState
from shared.db import DB_POOL, POSTGRES_UNREACHABLE
from shared.runtime.coalescer import Coalescer
from shared.sql import keys as keys_sql


class StateReader:
    """``await reader.get(key)``: the key's row from Postgres and the revision it is current as of, or None."""

    def __init__(self, pool: aiopg.Pool) -> None:
        self._pool = pool
        self._batches = Coalescer(self._select_many, shared_failures=POSTGRES_UNREACHABLE)

    async def get(self, key: str) -> tuple[KeyState, int] | None:
        return await self._batches.call(key)

    async def _select_many(self, keys: list[str]) -> list[tuple[KeyState, int] | None]:
        async with self._pool.acquire() as conn, conn.cursor() as cur:
            found = await keys_sql.get_many_with_head(cur, keys)
        return [found.get(key) for key in keys]


STATE_READER = web.AppKey("state_reader", StateReader)


async def state_reader_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the process's batched point reader (needs ``pool_ctx``)."""
    app[STATE_READER] = StateReader(app[DB_POOL])
    yield
