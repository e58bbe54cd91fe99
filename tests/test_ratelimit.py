"""SPEC §8: at most RATE_LIMIT accepted requests per username in any 60 s window, shared via Redis."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

LIMIT = 5
RATE_LIMITED = {"error": "Rate Limited", "message": f"Exceed {LIMIT} req/min"}
LOG_PREFIX = "dynconfig:rl:"  # api_server/ratelimit.py: one sorted set per username, scored in ms of Redis TIME


@pytest.fixture
async def limited(make_client, settings):
    """A client of an app limited to 5 requests/min."""
    return await make_client(settings.replace(rate_limit=LIMIT))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def probe(prefix: str) -> str:
    return f"/keys?namespace={prefix}"


async def assert_accepted(response: Any, remaining: int, status: int = 200) -> None:
    assert response.status == status, await response.text()
    assert response.headers["X-RateLimit-Limit"] == str(LIMIT)
    assert response.headers["X-RateLimit-Remaining"] == str(remaining)


async def assert_limited(response: Any) -> int:
    """Check the 429 of the seed; return Retry-After."""
    assert response.status == 429, await response.text()
    assert await response.json() == RATE_LIMITED
    assert response.headers["X-RateLimit-Limit"] == str(LIMIT)
    assert response.headers["X-RateLimit-Remaining"] == "0"
    retry_after = response.headers["Retry-After"]
    assert retry_after.isdigit(), retry_after
    assert 1 <= int(retry_after) <= 60
    return int(retry_after)


async def redis_now_ms(redis_client: Any) -> int:
    seconds, micros = await redis_client.time()
    return int(seconds) * 1000 + int(micros) // 1000


# --- the limit ----------------------------------------------------------------------------------


async def test_limit_headers_count_down_then_429(limited, token, unique_prefix):
    auth = bearer(token(username=f"{unique_prefix}-user"))
    for remaining in (4, 3, 2, 1, 0):
        await assert_accepted(await limited.get(probe(unique_prefix), headers=auth), remaining)
    await assert_limited(await limited.get(probe(unique_prefix), headers=auth))


async def test_limit_is_per_username(limited, token, unique_prefix):
    first = bearer(token(username=f"{unique_prefix}-user"))
    for remaining in (4, 3, 2, 1, 0):
        await assert_accepted(await limited.get(probe(unique_prefix), headers=first), remaining)
    await assert_limited(await limited.get(probe(unique_prefix), headers=first))
    other = bearer(token(username=f"{unique_prefix}-other"))
    await assert_accepted(await limited.get(probe(unique_prefix), headers=other), 4)


async def test_limit_is_per_username_not_per_token(limited, token, unique_prefix):
    user = f"{unique_prefix}-user"
    for remaining, key in zip((4, 3, 2, 1, 0), ("ec", "rsa", "ec", "rsa", "ec"), strict=True):
        # A fresh token each time (different key, different iat): the budget follows the username.
        fresh = bearer(token(username=user, key=key, jti=f"{unique_prefix}-{remaining}"))
        await assert_accepted(await limited.get(probe(unique_prefix), headers=fresh), remaining)
    await assert_limited(await limited.get(probe(unique_prefix), headers=bearer(token(username=user, key="rsa"))))


async def test_limit_is_shared_across_replicas(make_client, settings, token, unique_prefix):
    one = await make_client(settings.replace(rate_limit=LIMIT))
    two = await make_client(settings.replace(rate_limit=LIMIT))
    auth = bearer(token(username=f"{unique_prefix}-user"))
    for remaining in (4, 3, 2):
        await assert_accepted(await one.get(probe(unique_prefix), headers=auth), remaining)
    for remaining in (1, 0):
        await assert_accepted(await two.get(probe(unique_prefix), headers=auth), remaining)
    await assert_limited(await one.get(probe(unique_prefix), headers=auth))
    await assert_limited(await two.get(probe(unique_prefix), headers=auth))


async def test_window_is_sliding_not_fixed(limited, token, redis_client, unique_prefix):
    user = f"{unique_prefix}-user"
    auth = bearer(token(username=user))
    log_key = LOG_PREFIX + user
    now = await redis_now_ms(redis_client)
    old = now - 59_000  # 59 s ago: still inside the window for about one more second
    recent = now - 30_000
    await redis_client.zadd(log_key, {f"seed-old-{i}": old for i in range(3)})
    await redis_client.zadd(log_key, {f"seed-recent-{i}": recent for i in range(2)})
    await redis_client.pexpire(log_key, 60_000)

    # All five seeded requests count: the window is the last 60 s, whatever the clock minute.
    assert await assert_limited(await limited.get(probe(unique_prefix), headers=auth)) == 1

    # Wait (by Redis's clock) until the three old entries are more than 60 s old.
    boundary = old + 60_000 + 50
    await asyncio.sleep(max(0, boundary - await redis_now_ms(redis_client)) / 1000)
    assert await redis_now_ms(redis_client) > old + 60_000
    for remaining in (2, 1, 0):
        await assert_accepted(await limited.get(probe(unique_prefix), headers=auth), remaining)
    # The two entries from 30 s ago still count.
    retry_after = await assert_limited(await limited.get(probe(unique_prefix), headers=auth))
    assert 25 <= retry_after <= 30


async def test_refused_requests_are_not_counted(limited, token, redis_client, unique_prefix):
    user = f"{unique_prefix}-user"
    auth = bearer(token(username=user))
    for remaining in (4, 3, 2, 1, 0):
        await assert_accepted(await limited.get(probe(unique_prefix), headers=auth), remaining)
    for _ in range(3):
        await assert_limited(await limited.get(probe(unique_prefix), headers=auth))
    # "accepted requests": the 429s did not add to the log.
    assert await redis_client.zcard(LOG_PREFIX + user) == LIMIT


# --- Redis down ---------------------------------------------------------------------------------


async def test_redis_down_falls_back_to_per_process_limit(limited, token, redis_client, redis_server, unique_prefix):
    user = f"{unique_prefix}-user"
    auth = bearer(token(username=user))
    redis_server.stop()
    for remaining in (4, 3, 2, 1, 0):
        await assert_accepted(await limited.get(probe(unique_prefix), headers=auth), remaining)
    await assert_limited(await limited.get(probe(unique_prefix), headers=auth))

    redis_server.start()
    # Once Redis answers again the shared log is used: the request lands in the user's sorted set.
    deadline = time.monotonic() + 5
    while await redis_client.zcard(LOG_PREFIX + user) == 0 and time.monotonic() < deadline:
        await limited.get(probe(unique_prefix), headers=auth)
        await asyncio.sleep(0.2)
    assert await redis_client.zcard(LOG_PREFIX + user) >= 1


async def test_redis_back_restores_shared_budget(make_client, settings, token, redis_server, unique_prefix):
    one = await make_client(settings.replace(rate_limit=LIMIT))
    two = await make_client(settings.replace(rate_limit=LIMIT))
    warm = bearer(token(username=f"{unique_prefix}-warm"))
    redis_server.stop()
    await assert_accepted(await one.get(probe(unique_prefix), headers=warm), 4)
    await assert_accepted(await two.get(probe(unique_prefix), headers=warm), 4)
    redis_server.start()
    # Wait until both replicas use Redis again (their own short circuit breakers reopen).
    deadline = time.monotonic() + 5
    probe_user = 0
    while time.monotonic() < deadline:
        probe_user += 1
        auth = bearer(token(username=f"{unique_prefix}-probe{probe_user}"))
        first = await one.get(probe(unique_prefix), headers=auth)
        second = await two.get(probe(unique_prefix), headers=auth)
        if first.headers.get("X-RateLimit-Remaining") == "4" and second.headers.get("X-RateLimit-Remaining") == "3":
            break
        await asyncio.sleep(0.2)
    auth = bearer(token(username=f"{unique_prefix}-user"))
    for remaining in (4, 3, 2):
        await assert_accepted(await one.get(probe(unique_prefix), headers=auth), remaining)
    for remaining in (1, 0):
        await assert_accepted(await two.get(probe(unique_prefix), headers=auth), remaining)
    await assert_limited(await one.get(probe(unique_prefix), headers=auth))
    await assert_limited(await two.get(probe(unique_prefix), headers=auth))


# --- what counts --------------------------------------------------------------------------------


async def test_unauthenticated_requests_are_401_and_not_counted(limited, jwks, token, unique_prefix):
    user = f"{unique_prefix}-user"
    forged = bearer(token(username=user, key=jwks.new_key("ec", "test-key-1")))
    expired = bearer(token(username=user, exp_in=-120))
    for headers in ({}, forged, expired, forged, expired, forged, expired):
        response = await limited.get(probe(unique_prefix), headers=headers)
        assert response.status == 401
        body = await response.json()
        assert set(body) == {"error", "message"} and body["error"] == "Unauthorized"
    auth = bearer(token(username=user))
    for remaining in (4, 3, 2, 1, 0):
        await assert_accepted(await limited.get(probe(unique_prefix), headers=auth), remaining)
    await assert_limited(await limited.get(probe(unique_prefix), headers=auth))


async def test_every_method_and_failed_requests_count(limited, client, token, unique_prefix):
    user = f"{unique_prefix}-user"
    # An admin (on an unlimited app) lets the user read and write the test's namespace, so misses are 404s.
    granted = await client.put(
        f"/namespaces/{unique_prefix}", headers=bearer(token()), json={"acls": {"read": [user], "write": [user]}}
    )
    assert granted.status == 201, await granted.text()
    auth = bearer(token(username=user))
    missing = f"/keys/{unique_prefix}.missing"
    await assert_accepted(await limited.put(f"/keys/{unique_prefix}.k", headers=auth, json={"value": 1}), 4, 201)
    await assert_accepted(await limited.get(missing, headers=auth), 3, status=404)
    await assert_accepted(await limited.delete(missing, headers=auth), 2, status=404)
    await assert_accepted(await limited.patch(missing, headers=auth, json={"value": 1}), 1, status=404)
    bad_json = {**auth, "Content-Type": "application/json"}
    await assert_accepted(await limited.put(f"/keys/{unique_prefix}.k2", headers=bad_json, data=b"{"), 0, 400)
    await assert_limited(await limited.put(f"/keys/{unique_prefix}.k3", headers=auth, json={"value": 1}))
    await assert_limited(await limited.get(f"/keys/{unique_prefix}.k", headers=auth))
    # The refused write changed nothing.
    assert (await client.get(f"/keys/{unique_prefix}.k3", headers=bearer(token()))).status == 404
