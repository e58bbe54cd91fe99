"""A Redis cache of current key states (ciphertext only, SPEC §8).

Entries carry the key's version and are only ever replaced by a newer version (a Lua compare-and-set),
so a slow reader filling the cache cannot overwrite a newer write. A write that cannot update Redis
remembers the key and retries the invalidation in the background; entries also expire on their own
after ``CACHE_TTL_SECONDS`` as a last safety net.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import psycopg2
from aiohttp import web

from .keys import CACHE, DB_POOL, REDIS, SETTINGS, SUPERVISOR
from .model import KeyState
from .redis import REDIS_ERRORS, RedisLink
from .sql import keys as keys_sql
from .tasks import cancel_and_wait

log = logging.getLogger(__name__)

_PREFIX = "dynconfig:key:"


def cache_key(key: str) -> str:
    """The Redis key holding ``key``'s cached state."""
    return _PREFIX + key


# KEYS[1] = entry; ARGV = version, payload, ttl ms. Replace only with a strictly newer version.
_SET_IF_NEWER = """
local current = redis.call('HGET', KEYS[1], 'version')
if current and tonumber(current) >= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'version', ARGV[1], 'state', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""


class ValueCache:
    """Get/put key states in Redis; every failure degrades to a miss."""

    def __init__(self, link: RedisLink, ttl_seconds: int) -> None:
        self._link = link
        self._ttl_ms = ttl_seconds * 1000
        self._script = link.client.register_script(_SET_IF_NEWER)
        self.pending: set[str] = set()
        self.hits = 0
        self.misses = 0

    async def get(self, key: str) -> KeyState | None:
        """The cached state of ``key``, or None on a miss or when Redis is unavailable."""
        if not self._link.usable or key in self.pending:
            return None
        try:
            data = await self._link.client.hget(cache_key(key), "state")
        except REDIS_ERRORS as exc:
            self._link.failed(exc)
            return None
        self._link.succeeded()
        if data is None:
            self.misses += 1
            return None
        self.hits += 1
        return KeyState.from_cache(data)

    async def put(self, state: KeyState) -> None:
        """Store ``state`` unless the cache already holds a newer version."""
        if not self._link.usable:
            self.pending.add(state.key)
            return
        try:
            await self._script(keys=[cache_key(state.key)], args=[state.version, state.to_cache(), self._ttl_ms])
        except REDIS_ERRORS as exc:
            self._link.failed(exc)
            self.pending.add(state.key)
            return
        self._link.succeeded()

    async def retry_pending(self, load: Callable[[list[str]], Awaitable[list[KeyState]]]) -> None:
        """Refresh entries whose writes could not reach Redis, from Postgres, so nobody reads them stale.

        Refreshing (rather than deleting) keeps a slow reader from re-filling an older version later.
        """
        if not self.pending or not self._link.usable:
            return
        batch = list(self.pending)[:500]
        states = await load(batch)
        try:
            found = {state.key for state in states}
            gone = [cache_key(key) for key in batch if key not in found]
            if gone:
                await self._link.client.delete(*gone)
            for state in states:
                await self._script(keys=[cache_key(state.key)], args=[state.version, state.to_cache(), self._ttl_ms])
        except REDIS_ERRORS as exc:
            self._link.failed(exc)
            return
        self._link.succeeded()
        self.pending.difference_update(batch)


async def cache_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the cache and its invalidation-retry loop (needs ``redis_ctx`` first)."""
    cache = ValueCache(app[REDIS], app[SETTINGS].cache_ttl_seconds)
    app[CACHE] = cache
    pool = app[DB_POOL]

    async def load(keys: list[str]) -> list[KeyState]:
        async with pool.acquire() as conn, conn.cursor() as cur:
            await cur.execute(keys_sql.SELECT_MANY, {"keys": keys})
            return [KeyState.from_row(row) for row in await cur.fetchall()]

    async def retry_loop() -> None:
        while True:
            await asyncio.sleep(1.0)
            try:
                await cache.retry_pending(load)
            except (psycopg2.Error, OSError, TimeoutError) as exc:  # Postgres away: the next round tries again
                log.warning("cache invalidation retry failed (%s)", type(exc).__name__)

    task = app[SUPERVISOR].spawn("cache-retry", retry_loop)
    try:
        yield
    finally:
        await cancel_and_wait(task)
        try:
            await cache.retry_pending(load)
        except psycopg2.Error:
            log.warning("could not refresh %d cache entries at shutdown", len(cache.pending))
