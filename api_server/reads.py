"""Point reads of key states from Postgres (cache misses), batched: the reads of one event-loop turn
share one query and one pooled connection (:class:`shared.tasks.Coalescer`), instead of paying a
checkout and a round trip each. Each read still sees every write committed before it began: the
query runs after all of them were asked for."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiopg
from aiohttp import web

from shared.appkeys import DB_POOL
from shared.db import POSTGRES_UNREACHABLE
from shared.model import KeyState
from shared.sql import keys as keys_sql
from shared.tasks import Coalescer


class StateReader:
    """``await reader.get(key)``: the key's row from Postgres, or None."""

    def __init__(self, pool: aiopg.Pool) -> None:
        self._pool = pool
        self._batches = Coalescer(self._select_many, shared_failures=POSTGRES_UNREACHABLE)

    async def get(self, key: str) -> KeyState | None:
        return await self._batches.call(key)

    async def _select_many(self, keys: list[str]) -> list[KeyState | None]:
        async with self._pool.acquire() as conn, conn.cursor() as cur:
            await cur.execute(keys_sql.SELECT_MANY, {"keys": sorted(set(keys))})
            found = {row[0]: KeyState.from_row(row) for row in await cur.fetchall()}
        return [found.get(key) for key in keys]


STATE_READER = web.AppKey("state_reader", StateReader)


async def state_reader_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the process's batched point reader (needs ``pool_ctx``)."""
    app[STATE_READER] = StateReader(app[DB_POOL])
    yield
