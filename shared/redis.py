"""The Redis client of a process, with a short circuit breaker.

Redis is an accelerator here, never the source of truth: when it is down, callers fall back (to
Postgres, to a local rate limiter) and we stop paying a connect timeout on every request for a second.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import redis.asyncio as aioredis
from aiohttp import web
from prometheus_client import Gauge
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.runtime.metrics import METRICS, ServingMetrics
from shared.settings import SETTINGS

log = logging.getLogger(__name__)

REDIS_ERRORS = (RedisError, OSError, asyncio.TimeoutError)
#: The errors of a Redis that cannot be reached (every call would fail alike), as opposed to one that
#: refuses one call's data: a batch that fails with one of these fails for all its callers at once
#: (``shared.runtime.coalescer.Coalescer``); any other failure is narrowed down to the call that caused it.
REDIS_UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError, asyncio.TimeoutError)
_RETRY_AFTER_FAILURE = 1.0
#: Connections per process. A burst beyond this waits for a free connection (back-pressure) instead
#: of failing: a full pool is not an outage, and must never switch on the per-process fallbacks.
POOL_SIZE = 64
#: How long a call may wait for a connection before Redis counts as unavailable.
POOL_WAIT_SECONDS = 10.0


class RedisLink:
    """A Redis client plus whether it is worth trying right now."""

    def __init__(self, client: aioredis.Redis, up: Gauge | None = None) -> None:
        self.client = client
        self._down_until = 0.0
        self._down = False
        self._up = up  # dynconfig_redis_up

    @property
    def usable(self) -> bool:
        """False for a moment after a failure, so requests don't each wait for a timeout."""
        return time.monotonic() >= self._down_until

    def failed(self, exc: BaseException) -> None:
        """Record a failed call (logs once per outage)."""
        self._down_until = time.monotonic() + _RETRY_AFTER_FAILURE
        if self._up is not None:
            self._up.set(0)
        if not self._down:
            self._down = True
            log.warning("Redis unavailable (%s: %s); falling back", exc.__class__.__name__, exc)

    def succeeded(self) -> None:
        """Record a successful call."""
        if self._up is not None:
            self._up.set(1)
        if self._down:
            self._down = False
            log.warning("Redis is back")

    async def ping(self) -> bool:
        """True when Redis answers now (used by /health)."""
        try:
            await self.client.ping()
        except REDIS_ERRORS as exc:
            self.failed(exc)
            return False
        self.succeeded()
        return True


REDIS = web.AppKey("redis", RedisLink)


async def redis_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: one Redis client for the process, on a blocking connection pool."""
    pool = aioredis.BlockingConnectionPool.from_url(
        app[SETTINGS].redis_url,
        max_connections=POOL_SIZE,
        timeout=POOL_WAIT_SECONDS,
        socket_connect_timeout=0.5,
        socket_timeout=1.0,
        health_check_interval=10,
    )
    client = aioredis.Redis.from_pool(pool)
    metrics = app[METRICS]
    app[REDIS] = RedisLink(client, metrics.redis_up if isinstance(metrics, ServingMetrics) else None)
    try:
        yield
    finally:
        await client.aclose()
