"""A Redis cache of current key states (ciphertext only, SPEC §8) that never serves a version older than
one a write has committed and acknowledged, on any replica (read-your-writes; README "How it works"),
even when Redis itself goes back to an older state (SPEC §7: a restart from an older snapshot, a
failover to a replica that missed the last writes).

The fence (what this replica serves). Redis is not trusted to remember anything: Postgres is.
- Every entry carries ``as_of``, a revision at which its state was the key's current state: for a
  writer's entry its own revision, for a fill after a miss the head read in the same statement as the
  row (api_server/state_reader.py).
- Every api_server follows the change log (:class:`api_server.fence.CacheFence`): each write statement
  NOTIFYs, at COMMIT, the keys it changed and their revisions, and the follower keeps, for changes
  above a floor that trails the head by ~30 s, the newest revision of each key changed.
- A hit is served only if ``as_of >= floor`` and no change of the key newer than ``as_of`` has been
  heard; otherwise it is a miss, and the fill stores the state again with a newer ``as_of`` (the PUT
  script takes the same version with a newer ``as_of``). Whatever Redis brings back — an entry from
  an old snapshot, one a writer never updated — is either older than the floor or older than a change
  the follower heard, so it is read again from Postgres.
- The cache is not trusted while the follower is not connected and caught up; a writer answers only
  once its own follower has heard its commit (sub-millisecond; at most ``HEARD_WAIT_SECONDS``), so a
  replica a client reads from next has heard it too (each listener gets the notice at the same COMMIT;
  the window left is the notice's own delivery, as for the namespace ACLs).
Why this and not something in Redis: anything Redis holds (a version, an epoch, a generation counter)
goes back with it in a failover or a restore, so it cannot tell a current entry from a resurrected
one; only Postgres knows what was acknowledged. Why a moving floor and not one revision per key for
ever: memory stays bounded by the changes of the window (at most ``fence.MAX_TRACKED`` keys), and an
entry older than the window costs one Postgres read, shared by every replica through the refill.
Why notices that carry the keys and not a poll of the outbox per commit: a hit needs no round trip and
no wait, and the follower reads the outbox only on a gap, a reconnect, and once a second.

The previous release's protocol, kept for its pods during a rolling upgrade (they serve from the same
entries), to drop one release later with ``pending`` and ``cache_dirty``:
- Every entry holds the cached ``version`` and ``pending``, the highest version a writer has announced.
  It is served only while clean (``version >= pending``), and only ever replaced by a newer version
  that is not older than ``pending`` (Lua), so a slow reader's fill cannot bring an old version back.
- A writer announces the version it is about to commit inside its transaction, before COMMIT
  (api_server/committer.py calls :meth:`ValueCache.mark_unclean`), and stores the new state after it
  (:meth:`ValueCache.written`). One that dies in between leaves the entry unclean: readers go to
  Postgres, and their fill cleans it.
- A writer that cannot reach Redis records the key in Postgres instead, in the same transaction (the
  committer, with ``shared.sql.cache.record_unclean``: ``cache_dirty`` + ``NOTIFY dynconfig_cache``).
  Every api_server listens (:class:`CacheGuard`): a key it hears of is not served from the cache
  until a replica that reaches Redis has made the entry unclean and removed the row. Such a writer
  answers only once its own listener has heard its notice.
- A replica trusts the cache only while its listener is connected and has scanned ``cache_dirty``
  since it connected and since its own last Redis failure. Entries also expire after
  ``CACHE_TTL_SECONDS``.
An entry an old pod writes keeps the ``as_of`` of the state before it, so this release reads it as
older than its change and fills it again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiopg
from aiohttp import web

from api_server.fence import CacheFence
from api_server.metrics import API_METRICS, ApiMetrics
from shared.changes.state import KeyState
from shared.db import DB_POOL, Hearing, Target, app_connector, listen, wait_notices
from shared.redis import REDIS, REDIS_ERRORS, REDIS_UNREACHABLE, RedisLink
from shared.runtime.coalescer import Coalescer
from shared.runtime.supervisor import SUPERVISOR, cancel_and_wait
from shared.settings import SETTINGS
from shared.sql import cache as sql

log = logging.getLogger(__name__)

_PREFIX = "dynconfig:key:"
#: How long a writer that could not reach Redis waits for its own notice before answering.
HEARD_WAIT_SECONDS = 1.0
SCAN_SECONDS = 1.0


CACHE: web.AppKey[ValueCache] = web.AppKey("cache")


def cache_key(key: str) -> str:
    """The Redis key holding ``key``'s cached state."""
    return _PREFIX + key


# The scripts take many entries at once: a batch of a write (announce) or the calls of one event-loop
# turn (get, put; shared.runtime.coalescer.Coalescer) cost one round trip.

# KEYS = entries; ARGV = ttl ms, then a version per entry. Raise ``pending`` to the version about to
# be committed.
_ANNOUNCE = """
for i, entry in ipairs(KEYS) do
  local pending = tonumber(redis.call('HGET', entry, 'pending') or '0')
  if tonumber(ARGV[i + 1]) > pending then redis.call('HSET', entry, 'pending', ARGV[i + 1]) end
  redis.call('PEXPIRE', entry, ARGV[1])
end
return 1
"""

# KEYS = entries; ARGV = ttl ms, then (version, as_of, payload) per entry. Store a state newer than the
# cached one (or the same version known current as of a newer revision) and not older than an
# announced one.
_PUT = """
for i, entry in ipairs(KEYS) do
  local version = tonumber(ARGV[3 * i - 1])
  local as_of = tonumber(ARGV[3 * i])
  local fields = redis.call('HMGET', entry, 'version', 'pending', 'as_of')
  local current = tonumber(fields[1] or '-1')
  local pending = tonumber(fields[2] or '0')
  local current_as_of = tonumber(fields[3] or '-1')
  if version >= pending and (version > current or (version == current and as_of > current_as_of)) then
    redis.call('HSET', entry, 'version', ARGV[3 * i - 1], 'as_of', ARGV[3 * i], 'state', ARGV[3 * i + 1])
    redis.call('PEXPIRE', entry, ARGV[1])
  end
end
return 1
"""

# KEYS = entries. (version, pending, as_of, state) per entry, flattened; false (nil) where missing.
_GET = """
local out = {}
for _, entry in ipairs(KEYS) do
  local fields = redis.call('HMGET', entry, 'version', 'pending', 'as_of', 'state')
  for j = 1, 4 do out[#out + 1] = fields[j] or false end
end
return out
"""

_Entry = tuple[bytes | None, bytes | None, bytes | None, bytes | None]


class ValueCache:
    """Get/put key states in Redis; every failure degrades to a miss (Postgres answers)."""

    def __init__(self, link: RedisLink, ttl_seconds: int, metrics: ApiMetrics) -> None:
        self._link = link
        self._ttl_ms = ttl_seconds * 1000
        self._metrics = metrics
        self._announce = link.client.register_script(_ANNOUNCE)
        self._put = link.client.register_script(_PUT)
        self._get = link.client.register_script(_GET)
        self._gets = Coalescer(self._get_many, shared_failures=REDIS_UNREACHABLE)
        self._puts = Coalescer(self._put_many, shared_failures=REDIS_UNREACHABLE)
        self.guard = CacheGuard(self)
        self.fence = CacheFence()

    async def get(self, key: str) -> KeyState | None:
        """The cached state of ``key`` if it can be trusted, else None (read Postgres)."""
        if not self._link.usable or not self.guard.trusted or not self.fence.trusted:
            return None
        try:
            version, pending, as_of, data = await self._gets.call(key)
        except REDIS_ERRORS as exc:
            self._failed(exc)
            return None
        self._link.succeeded()
        clean = data is not None and version is not None and int(version) >= int(pending or 0)
        # Notices that reached us while we waited for Redis count: a write acknowledged before this
        # read began has been heard by now.
        if not clean or self.guard.recorded_unclean(key) or not self.fence.admits(key, int(as_of or -1)):
            self._metrics.cache_lookups.labels("miss").inc()
            return None
        self._metrics.cache_lookups.labels("hit").inc()
        assert data is not None
        return KeyState.from_cache(data)

    async def put(self, state: KeyState, as_of: int) -> bool:
        """Store ``state``, the key's current state as of revision ``as_of`` (a fill after a miss: the
        head read with it; a writer's: its own revision); True when Redis took the call."""
        if not self._link.usable:
            return False
        try:
            await self._puts.call((state, as_of))
        except REDIS_ERRORS as exc:
            self._failed(exc)
            return False
        self._link.succeeded()
        return True

    async def _get_many(self, keys: list[str]) -> list[_Entry]:
        flat = await self._get(keys=[cache_key(key) for key in keys])
        return [(flat[i], flat[i + 1], flat[i + 2], flat[i + 3]) for i in range(0, len(flat), 4)]

    async def _put_many(self, states: list[tuple[KeyState, int]]) -> list[None]:
        args: list[Any] = [self._ttl_ms]
        for state, as_of in states:
            args += [state.version, as_of, state.to_cache()]
        await self._put(keys=[cache_key(state.key) for state, _ in states], args=args)
        return [None] * len(states)

    async def mark_unclean(self, versions: list[tuple[str, int]]) -> bool:
        """Announce each (key, version) in Redis, in one call: no replica serves an older cached state
        of those keys from now on. False when Redis did not take it."""
        if not self._link.usable:
            return False
        try:
            await self._announce(
                keys=[cache_key(key) for key, _ in versions], args=[self._ttl_ms, *(v for _, v in versions)]
            )
        except REDIS_ERRORS as exc:
            self._failed(exc)
            return False
        self._link.succeeded()
        return True

    async def written(self, states: list[tuple[KeyState, bool]]) -> None:
        """After COMMIT of a batch, before its answers: store each new state (with whether it was
        recorded in Postgres), and wait until this process's listeners have heard the commit (so has
        every replica's), at most ``HEARD_WAIT_SECONDS``."""
        if not states:
            return
        await asyncio.gather(*(self.put(state, state.revision or 0) for state, _ in states))
        newest = max(state.revision or 0 for state, _ in states)
        await self.fence.wait_heard(newest, HEARD_WAIT_SECONDS)
        recorded = [state for state, in_postgres in states if in_postgres]
        await asyncio.gather(*(self.guard.wait_heard(s.key, s.version, HEARD_WAIT_SECONDS) for s in recorded))

    def _failed(self, exc: BaseException) -> None:
        self._link.failed(exc)
        self.guard.redis_failed()


class CacheGuard:
    """Listens on ``dynconfig_cache`` and works off ``cache_dirty``; decides whether hits are trusted."""

    def __init__(self, cache: ValueCache) -> None:
        self._cache = cache
        self._conn: aiopg.Connection | None = None
        self._scanned = False
        self._unclean: dict[str, int] = {}
        self._heard: dict[str, int] = {}
        self._hearing = Hearing()

    @property
    def trusted(self) -> bool:
        """Listening, and ``cache_dirty`` worked off since connecting and since the last Redis failure."""
        return self._conn is not None and not self._conn.closed and self._scanned

    def redis_failed(self) -> None:
        self._scanned = False

    def recorded_unclean(self, key: str) -> bool:
        """Is ``key`` recorded unclean (by a notice taken in now, or the last scan)?"""
        self._take_notices()
        return key in self._unclean

    async def wait_heard(self, key: str, version: int, within: float) -> None:
        """Until our listener has heard that ``version`` of ``key`` was recorded (at most ``within`` s)."""

        def heard() -> bool:
            self._take_notices()
            return self._heard.get(key, 0) >= version

        await self._hearing.until(heard, within, f"the cache record of {key} v{version}")

    def _take_notices(self) -> None:
        conn = self._conn
        if conn is None:
            return
        while not conn.notifies.empty():
            self._note(conn.notifies.get_nowait())

    def _note(self, notice: Any) -> None:
        version_text, _, key = notice.payload.partition(":")
        version = int(version_text)
        self._unclean[key] = max(version, self._unclean.get(key, 0))
        if len(self._heard) > 10_000:
            self._heard.clear()
        self._heard[key] = max(version, self._heard.get(key, 0))

    async def run(self, listener: Target, pool: aiopg.Pool) -> None:
        """Listen, and scan ``cache_dirty`` every ``SCAN_SECONDS``, for ever (reconnecting)."""
        await listen(listener, [sql.CHANNEL], lambda conn: self._serve(conn, pool))

    async def _serve(self, conn: aiopg.Connection, pool: aiopg.Pool) -> None:
        self._conn = conn
        try:
            while True:
                await self._scan(pool)
                for notice in await wait_notices(conn, SCAN_SECONDS):
                    self._note(notice)
                self._hearing.wake()
        finally:
            self._conn = None
            self._scanned = False

    async def _scan(self, pool: aiopg.Pool) -> None:
        """Make every recorded key unclean in Redis, then drop its row; what remains stays unclean."""
        async with pool.acquire() as conn, conn.cursor() as cur:
            rows = await sql.recorded_unclean(cur)
            remaining: dict[str, int] = {}
            if rows and await self._cache.mark_unclean(rows):
                await sql.delete_cleaned(cur, rows)
            else:
                remaining = dict(rows)
        self._take_notices()
        # Notices newer than the rows we cleaned stay unclean until the next scan.
        cleaned = dict(rows)
        fresh = {k: v for k, v in self._unclean.items() if v > cleaned.get(k, 0)}
        self._unclean = {**remaining, **fresh}
        if not remaining and self._cache._link.usable:
            self._scanned = True


async def cache_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the cache and its guard (needs ``redis_ctx`` and ``pool_ctx`` first)."""
    cache = ValueCache(app[REDIS], app[SETTINGS].cache_ttl_seconds, app[API_METRICS])
    app[CACHE] = cache
    guard, fence = app_connector(app, "cache-guard", dedicated=True), app_connector(app, "cache-fence", dedicated=True)
    tasks = [
        app[SUPERVISOR].spawn("cache-guard", lambda: cache.guard.run(guard, app[DB_POOL])),
        app[SUPERVISOR].spawn("cache-fence", lambda: cache.fence.run(fence)),
    ]
    try:
        yield
    finally:
        for task in tasks:
            await cancel_and_wait(task)
