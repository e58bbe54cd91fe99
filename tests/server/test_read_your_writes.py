"""Read-your-writes across api_server replicas (SPEC §7, step 5): after a 2xx write, a GET through any
replica returns that version or a newer one, even when the writing replica could not reach Redis, or
was killed right after its commit, while another replica holds the old version in the shared cache.

Two real ``python -m api_server`` processes share the test Postgres and Redis.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from typing import Any

import aiohttp
import aiopg
import redis.asyncio as aioredis
from support import ADMIN, eventually

from api_server.cache import cache_key
from devtools.services import free_port

Token = Callable[..., str]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def put(session: aiohttp.ClientSession, base: str, key: str, value: Any, auth: dict[str, str]) -> int:
    async with session.put(f"{base}/keys/{key}", json={"value": value}, headers=auth) as resp:
        body = await resp.json()
        assert resp.status in (200, 201), body
        return int(body["version"])


async def get_version(session: aiohttp.ClientSession, base: str, key: str, auth: dict[str, str]) -> int:
    async with session.get(f"{base}/keys/{key}", headers=auth) as resp:
        body = await resp.json()
        assert resp.status == 200, body
        return int(body["version"])


async def committed_version(pg: aiopg.Pool, key: str) -> int:
    async with pg.acquire() as conn, conn.cursor() as cur:
        await cur.execute("SELECT version FROM keys WHERE key = %s", (key,))
        row = await cur.fetchone()
    return int(row[0]) if row else 0


async def test_a_replica_that_cannot_reach_redis_does_not_leave_others_serving_the_old_version(
    spawn: Callable[..., Any], token: Token, redis_client: aioredis.Redis, unique_prefix: str
) -> None:
    key = f"{unique_prefix}.ryw"
    auth = bearer(token(ADMIN))
    one = spawn("api_server")
    two = spawn("api_server", REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")  # Redis unreachable from here
    async with aiohttp.ClientSession() as session:
        assert await put(session, one.url, key, "v1", auth) == 1
        for _ in range(2):
            assert await get_version(session, one.url, key, auth) == 1
        assert await redis_client.hget(cache_key(key), "version") == b"1"  # replica one serves it from Redis

        assert await put(session, two.url, key, "v2", auth) == 2
        for _ in range(3):
            assert await get_version(session, one.url, key, auth) >= 2, "replica one serves the old version"
            assert await get_version(session, two.url, key, auth) >= 2


async def test_a_writer_killed_right_after_its_commit_does_not_leave_others_serving_the_old_version(
    spawn: Callable[..., Any], token: Token, redis_client: aioredis.Redis, pg: aiopg.Pool, unique_prefix: str
) -> None:
    key = f"{unique_prefix}.killed"
    auth = bearer(token(ADMIN))
    one = spawn("api_server")
    two = spawn("api_server")
    async with aiohttp.ClientSession() as session:
        assert await put(session, one.url, key, "v1", auth) == 1
        assert await get_version(session, one.url, key, auth) == 1
        assert await redis_client.hget(cache_key(key), "version") == b"1"

        # Redis stops taking writes (reads still work): the writer's cache update cannot land.
        await redis_client.execute_command("CLIENT", "PAUSE", "20000", "WRITE")
        try:
            write = asyncio.create_task(put(session, two.url, key, "v2", auth))

            async def committed() -> bool:
                return await committed_version(pg, key) >= 2

            await eventually(committed, 10, "the write committing", interval=0.005)
            two.popen.send_signal(signal.SIGKILL)  # right after the commit
            two.popen.wait(5)
            write.cancel()
        finally:
            await redis_client.execute_command("CLIENT", "UNPAUSE")
        assert await redis_client.hget(cache_key(key), "version") != b"2"  # the writer never updated it
        for _ in range(3):
            assert await get_version(session, one.url, key, auth) >= 2, "replica one serves the old version"


async def test_reads_are_served_from_the_cache_once_it_is_trusted(
    client: Any, token: Token, unique_prefix: str
) -> None:
    """The guard must not leave the cache off for good: a replica with Redis and its listener serves hits."""
    key = f"{unique_prefix}.hits"
    auth = bearer(token(ADMIN))
    assert (await client.put(f"/keys/{key}", json={"value": 1}, headers=auth)).status == 201

    async def hit() -> bool:
        assert (await client.get(f"/keys/{key}", headers=auth)).status == 200
        text = await (await client.get("/metrics")).text()
        hits = [line for line in text.splitlines() if line.startswith('dynconfig_cache_lookups_total{result="hit"}')]
        return bool(hits and float(hits[0].split()[-1]) >= 1)

    await eventually(hit, 5, "a cache hit", interval=0.1)


async def cache_hits(session: aiohttp.ClientSession, base: str) -> float:
    """The replica's ``dynconfig_cache_lookups_total{result="hit"}``."""
    async with session.get(f"{base}/metrics") as resp:
        text = await resp.text()
    lines = [line for line in text.splitlines() if line.startswith('dynconfig_cache_lookups_total{result="hit"}')]
    return float(lines[0].split()[-1]) if lines else 0.0


async def test_a_redis_that_goes_back_to_an_older_state_does_not_bring_back_an_old_version(
    spawn: Callable[..., Any], token: Token, redis_client: aioredis.Redis, unique_prefix: str
) -> None:
    """SPEC §7: Redis loses an acknowledged write (a failover to a replica that missed it, a restart from
    an older snapshot; here DUMP of the entry after v1, RESTORE ... REPLACE after v2). No replica may
    serve v1 again: the cache is fenced by what Postgres says has changed."""
    key = f"{unique_prefix}.rollback"
    auth = bearer(token(ADMIN))
    one = spawn("api_server")
    two = spawn("api_server")
    async with aiohttp.ClientSession() as session:
        assert await put(session, one.url, key, "v1", auth) == 1
        for replica in (one, two):
            before = await cache_hits(session, replica.url)

            async def cached(replica: Any = replica, before: float = before) -> bool:
                # served from the cache (the guard trusts it once its listener has scanned)
                assert await get_version(session, replica.url, key, auth) == 1
                return await cache_hits(session, replica.url) > before

            await eventually(cached, 5, "v1 served from the cache")
        entry = cache_key(key)
        snapshot, ttl_ms = await redis_client.dump(entry), await redis_client.pttl(entry)
        assert snapshot is not None and ttl_ms > 0

        assert await put(session, one.url, key, "v2", auth) == 2  # acknowledged
        await redis_client.restore(entry, ttl_ms, snapshot, replace=True)  # with the TTL it had
        assert await redis_client.hget(entry, "version") == b"1"  # Redis went back to v1

        for _ in range(3):
            for replica in (two, one):
                assert await get_version(session, replica.url, key, auth) == 2, f"{replica.port} served v1"

        # The fence does not turn the cache off: v2 is cached again and served from it.
        hits = await cache_hits(session, two.url)

        async def refilled() -> bool:
            if await cache_hits(session, two.url) > hits:
                return True
            assert await get_version(session, two.url, key, auth) == 2
            return False

        await eventually(refilled, 5, "a cache hit after the refill")
