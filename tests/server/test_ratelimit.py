"""SPEC §8: at most RATE_LIMIT accepted requests per username in any 60 s window, shared via Redis."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from support import eventually

LIMIT = 5
RATE_LIMITED = {"error": "Rate Limited", "message": f"Exceed {LIMIT} req/min"}
LOG_PREFIX = "dynconfig:rl:"  # shared/security/ratelimit.py: one sorted set per username, scored in ms of Redis TIME


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
    async def logged() -> bool:
        if await redis_client.zcard(LOG_PREFIX + user) > 0:
            return True
        await limited.get(probe(unique_prefix), headers=auth)
        return False

    with contextlib.suppress(AssertionError):  # the assertion below says what went wrong
        await eventually(logged, 5, "a request in the user's sorted set", interval=0.2)
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
    probe_user = 0

    async def shared() -> bool:
        nonlocal probe_user
        probe_user += 1
        auth = bearer(token(username=f"{unique_prefix}-probe{probe_user}"))
        first = await one.get(probe(unique_prefix), headers=auth)
        second = await two.get(probe(unique_prefix), headers=auth)
        return first.headers.get("X-RateLimit-Remaining") == "4" and second.headers.get("X-RateLimit-Remaining") == "3"

    with contextlib.suppress(AssertionError):  # a wait only: the assertions below check the budget
        await eventually(shared, 5, "both replicas on the shared budget", interval=0.2)
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


# --- /watch (SPEC §6): the handshake and each client message count --------------------------------


#: A real WebSocket opening handshake (RFC 6455 §4.1), so the answer is what a browser would get.
HANDSHAKE = {
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Version": "13",
}


@pytest.fixture
async def limited_notifier(make_notifier, settings):
    """A notifier limited to 5 requests/min, sharing Redis (so the budget) with ``limited``."""
    return await make_notifier(settings.replace(rate_limit=LIMIT))


async def test_watch_handshake_over_the_limit_is_429(limited, limited_notifier, token, unique_prefix):
    """The attack of the issue: a user already refused on REST opened 30 watches, each replaying from
    revision 0. Now each handshake is refused with the seed's 429 before any upgrade."""
    user = f"{unique_prefix}-user"
    auth = bearer(token(username=user))
    for remaining in (4, 3, 2, 1, 0):
        await assert_accepted(await limited.get(probe(unique_prefix), headers=auth), remaining)
    url = limited_notifier.make_url("/watch")
    async with aiohttp.ClientSession() as session:
        for query in ({}, {"access_token": token(username=user)}):
            for _ in range(15):
                headers = {**HANDSHAKE, **(auth if not query else {})}
                async with session.get(url, params={**query, "since_version": "0"}, headers=headers) as resp:
                    await assert_limited(resp)


async def test_watch_handshake_counts_as_a_request(limited, limited_notifier, token, unique_prefix):
    user = f"{unique_prefix}-user"
    auth = bearer(token(username=user))
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(limited_notifier.make_url("/watch"), headers=auth)
        await ws.close()
    for remaining in (3, 2, 1, 0):
        await assert_accepted(await limited.get(probe(unique_prefix), headers=auth), remaining)
    await assert_limited(await limited.get(probe(unique_prefix), headers=auth))


async def test_watch_messages_over_the_limit_get_an_error_and_are_ignored(limited_notifier, token, unique_prefix):
    """Handshake (1) and four subscribes (2–5) are within the limit; the sixth request, a subscribe, is
    answered with a Rate Limited error event and not carried out, and the connection stays open."""
    user = f"{unique_prefix}-user"
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(limited_notifier.make_url("/watch"), headers=bearer(token(username=user)))
        for i in range(4):
            await ws.send_json({"subscribe": [f"{unique_prefix}.k{i}"]})
            answer = await ws.receive_json(timeout=10)
            assert answer["event"] == "subscribed", answer
        await ws.send_json({"subscribe": [f"{unique_prefix}.over"]})
        answer = await ws.receive_json(timeout=10)
        assert answer["event"] == "error" and answer["error"] == "Rate Limited", answer
        assert isinstance(answer["message"], str) and answer["message"]
        await ws.send_json({"unsubscribe": [f"{unique_prefix}.k0"]})
        answer = await ws.receive_json(timeout=10)
        assert answer["event"] == "error" and answer["error"] == "Rate Limited", answer
        assert not ws.closed
        await ws.close()


async def test_watch_token_message_counts_for_its_user(limited, limited_notifier, token, unique_prefix):
    """A browser sends its token in the first message: that message is the user's first request."""
    user = f"{unique_prefix}-user"
    auth = bearer(token(username=user))
    for remaining in (4, 3, 2, 1):
        await assert_accepted(await limited.get(probe(unique_prefix), headers=auth), remaining)
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(limited_notifier.make_url("/watch"))
        await ws.send_json({"token": token(username=user), "subscribe": [f"{unique_prefix}.a"]})
        assert (await ws.receive_json(timeout=10))["event"] == "subscribed"  # the 5th request
        await ws.send_json({"subscribe": [f"{unique_prefix}.b"]})
        answer = await ws.receive_json(timeout=10)
        assert answer["event"] == "error" and answer["error"] == "Rate Limited", answer
        await ws.close()


# --- a burst from one user ----------------------------------------------------------------------
# Held to the rate limit whatever the concurrency: exhausting the Redis connection pool is
# back-pressure, not an outage that switches to a per-process count.

BURST_LIMIT = 1000
BURST_TOTAL = 1150
BURST_PARALLEL = 300
BURST_LIMITED = {"error": "Rate Limited", "message": f"Exceed {BURST_LIMIT} req/min"}


async def burst(urls: list[str], path: str, auth: dict[str, str]) -> list[tuple[int, Any, dict[str, str]]]:
    """Send BURST_TOTAL GETs of ``path``, BURST_PARALLEL in flight, alternating over ``urls``:
    (status, JSON body of a 429 or None, headers) per request."""
    gate = asyncio.Semaphore(BURST_PARALLEL)
    connector = aiohttp.TCPConnector(limit=BURST_PARALLEL)
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one(i: int) -> tuple[int, Any, dict[str, str]]:
            async with gate, session.get(urls[i % len(urls)] + path, headers=auth) as response:
                body = await response.json() if response.status == 429 else None
                await response.read()
                return response.status, body, dict(response.headers)

        return await asyncio.gather(*(one(i) for i in range(BURST_TOTAL)))


def assert_held_to_limit(answers: list[tuple[int, Any, dict[str, str]]]) -> None:
    statuses = Counter(status for status, _, _ in answers)
    assert statuses == {200: BURST_LIMIT, 429: BURST_TOTAL - BURST_LIMIT}, f"statuses: {dict(statuses)}"
    for status, body, headers in answers:
        if status == 429:
            assert body == BURST_LIMITED, body
            assert headers["Retry-After"].isdigit() and 1 <= int(headers["Retry-After"]) <= 60, headers
            assert headers["X-RateLimit-Remaining"] == "0", headers


async def test_burst_from_one_user_is_held_to_the_limit(
    spawn: Callable[..., Any], token: Callable[..., str], unique_prefix: str
) -> None:
    server = spawn("api_server", RATE_LIMIT=str(BURST_LIMIT))
    auth = bearer(token(f"burst-{unique_prefix}"))
    assert_held_to_limit(await burst([server.url], f"/keys?namespace={unique_prefix}", auth))


async def test_burst_across_two_replicas_is_held_to_the_limit(
    spawn: Callable[..., Any], token: Callable[..., str], unique_prefix: str
) -> None:
    replicas = [spawn("api_server", RATE_LIMIT=str(BURST_LIMIT)) for _ in range(2)]
    auth = bearer(token(f"burst2-{unique_prefix}"))
    assert_held_to_limit(await burst([r.url for r in replicas], f"/keys?namespace={unique_prefix}", auth))
