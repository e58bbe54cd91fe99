"""Batching (SPEC §7): one bad request never fails another. Requests are batched in three places — the rate
limiter's and the cache's Redis calls (one script call per event-loop turn) and the committer's group
commit (one Postgres transaction per batch) — so an item that the server below refuses must fail
alone, and the others of its batch go through. Real Redis and Postgres; the bad items are ones that
authentication now keeps out (a lone surrogate in a username), fed in below it, as defence in depth."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Any

import aiohttp
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient
from support import ADMIN

from api_server.domain import Caller
from api_server.domain import keys as domain
from api_server.handlers.common import app_store
from shared.changes.state import KeyState
from shared.redis import RedisLink
from shared.security.acl import Principal
from shared.security.ratelimit import Decision, RateLimiter

BAD_NAME = "eve\ud800"  # a legal JSON escape; neither redis-py nor psycopg2 can encode it
Client = TestClient[Any, Any]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_a_username_nothing_can_encode_fails_no_other_request(
    client: Client, token: Callable[..., str], unique_prefix: str
) -> None:
    """The attack of the issue: the odd token is refused (401) and 20 other users' GETs, sent at the
    same moment, all answer as they would alone (the rate limiter's batch used to fail with 500)."""
    odd = bearer(token(BAD_NAME, sub="eve"))
    others = [bearer(token(f"{unique_prefix}-user{i}")) for i in range(20)]
    for round_ in range(5):
        calls = [client.get(f"/keys?namespace={unique_prefix}", headers=h) for h in others]
        calls.insert(10, client.get(f"/keys?namespace={unique_prefix}", headers=odd))
        statuses = [r.status for r in await asyncio.gather(*calls)]
        assert statuses[10] == 401, (round_, statuses)
        assert statuses[:10] + statuses[11:] == [200] * 20, (round_, statuses)


async def test_a_batched_redis_call_one_item_breaks_fails_only_that_item(redis_server: Any, unique_prefix: str) -> None:
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        limiter = RateLimiter(RedisLink(client), 100)
        names = [f"{unique_prefix}-u{i}" for i in range(20)]
        calls = [limiter.hit(name) for name in names]
        calls.insert(7, limiter.hit(BAD_NAME))
        results = await asyncio.gather(*calls, return_exceptions=True)  # one event-loop turn: one batch
        bad = results.pop(7)
        assert isinstance(bad, UnicodeEncodeError), bad
        assert all(isinstance(r, Decision) and r.allowed and r.remaining == 99 for r in results), results
        # Counted by Redis, the shared limiter (not the per-process fallback):
        for name in names:
            assert await client.zcard(f"dynconfig:rl:{name}") == 1
    finally:
        await client.aclose()


async def test_a_write_postgres_refuses_fails_alone_and_its_batch_commits(
    client: Client, token: Callable[..., str], unique_prefix: str
) -> None:
    """21 creates queued in one turn form one batch; the one Postgres cannot take (its creator's name
    cannot be encoded) fails alone, and the 20 others are committed and answered."""
    store = app_store(client.app)
    admin = Principal(ADMIN, True)
    calls = [
        domain.put_key(store, Caller(admin, f"r{i}"), f"{unique_prefix}.k{i}", {"value": i}, None) for i in range(20)
    ]
    calls.insert(
        10, domain.put_key(store, Caller(Principal(BAD_NAME, True), "bad"), f"{unique_prefix}.eve", {"value": 0}, None)
    )
    results = await asyncio.gather(*calls, return_exceptions=True)
    bad = results.pop(10)
    assert isinstance(bad, Exception), bad
    assert all(isinstance(r, tuple) and isinstance(r[0], KeyState) and r[1] for r in results), results
    auth = bearer(token(ADMIN))
    for i in range(20):
        async with client.get(f"/keys/{unique_prefix}.k{i}", headers=auth) as resp:
            assert resp.status == 200 and (await resp.json())["value"] == i
    async with client.get(f"/keys/{unique_prefix}.eve", headers=auth) as resp:
        assert resp.status == 404


async def test_a_write_batch_is_bounded_by_bytes(client: Client, token: Callable[..., str], unique_prefix: str) -> None:
    """256 values of 1 MiB would make one statement of about half a gigabyte: a batch stops at
    MAX_BATCH_BYTES of values (one value is always taken), as the batch histogram shows."""
    from api_server.committer import MAX_BATCH_BYTES  # late: new in this change

    auth = bearer(token(ADMIN))
    big = "x" * (1024 * 1024 - 16)
    count = 2 * MAX_BATCH_BYTES // len(big) + 2

    async def put(i: int) -> int:
        async with client.put(f"/keys/{unique_prefix}.big{i}", json={"value": big}, headers=auth) as resp:
            return resp.status

    before = await batch_histogram(client)
    assert await asyncio.gather(*(put(i) for i in range(count))) == [201] * count
    after = await batch_histogram(client)
    batches = after["count"] - before["count"]
    within = after[str(float(MAX_BATCH_BYTES))] - before[str(float(MAX_BATCH_BYTES))]
    assert batches >= 3, (batches, count)
    assert within == batches, "a batch carried more than MAX_BATCH_BYTES of values"


async def batch_histogram(client: Client) -> dict[str, float]:
    """``dynconfig_write_batch_bytes``: its count and cumulative bucket counts by ``le``."""
    async with aiohttp.ClientSession() as session, session.get(client.make_url("/metrics")) as resp:
        text = await resp.text()
    out = {"count": 0.0}
    for line in text.splitlines():
        if line.startswith("dynconfig_write_batch_bytes_count"):
            out["count"] = float(line.rsplit(" ", 1)[1])
        match = re.match(r'dynconfig_write_batch_bytes_bucket\{le="([^"]+)"\} (\S+)', line)
        if match:
            out[str(float(match.group(1)))] = float(match.group(2))
    return out
