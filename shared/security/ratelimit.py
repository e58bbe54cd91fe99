"""Per-username rate limit: at most N accepted requests in any 60 s window (SPEC §8), on the REST API
(``api_server.middlewares``) and on ``/watch`` (the handshake and each client message, SPEC §6).

A sliding log in a Redis sorted set, shared by every replica and timed by Redis's own clock. When
Redis is unavailable each process falls back to the same algorithm in memory.

The requests a process receives in one turn of its event loop are decided by one script call
(:class:`shared.runtime.coalescer.Coalescer`): the script takes them one by one, in arrival order, exactly as
separate calls would, so the limit stays exact across replicas; only the client's per-call cost is
shared.
"""

from __future__ import annotations

import itertools
import math
import os
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiohttp import web

from shared.errors import RateLimited
from shared.redis import REDIS, REDIS_ERRORS, REDIS_UNREACHABLE, RedisLink
from shared.runtime.coalescer import Coalescer
from shared.runtime.metrics import METRICS, ServingMetrics
from shared.settings import SETTINGS

WINDOW_SECONDS = 60
_PREFIX = "dynconfig:rl:"
# KEYS = one user's log per request (a user may appear several times); ARGV = limit, window ms, then
# one unique member per request. Returns (allowed, remaining, wait ms) per request, flattened.
_SLIDING_LOG = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local out = {}
for i, log in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', log, '-inf', now - window)
  local count = redis.call('ZCARD', log)
  if count < limit then
    redis.call('ZADD', log, now, ARGV[i + 2])
    redis.call('PEXPIRE', log, window)
    out[#out + 1] = 1
    out[#out + 1] = limit - count - 1
    out[#out + 1] = 0
  else
    local oldest = redis.call('ZRANGE', log, 0, 0, 'WITHSCORES')
    out[#out + 1] = 0
    out[#out + 1] = 0
    out[#out + 1] = tonumber(oldest[2]) + window - now
  end
end
return out
"""


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    retry_after: int  # whole seconds; 0 when allowed

    @property
    def headers(self) -> dict[str, str]:
        """``X-RateLimit-Limit`` and ``X-RateLimit-Remaining``, on every answer to a counted request."""
        return {"X-RateLimit-Limit": str(self.limit), "X-RateLimit-Remaining": str(self.remaining)}

    @property
    def message(self) -> str:
        """The seed's text of a refusal."""
        return f"Exceed {self.limit} req/min"

    def refusal(self) -> RateLimited:
        """The 429 of the seed, with ``Retry-After`` (HTTP answers and the ``/watch`` handshake)."""
        return RateLimited(self.message, headers={**self.headers, "Retry-After": str(self.retry_after)})


class RateLimiter:
    """Decides whether one more request of ``username`` is accepted now."""

    def __init__(self, link: RedisLink, limit: int, metrics: ServingMetrics | None = None) -> None:
        self.limit = limit
        self._metrics = metrics
        self._link = link
        self._script = link.client.register_script(_SLIDING_LOG)
        self._batches = Coalescer(self._hit_many, shared_failures=REDIS_UNREACHABLE)
        self._local: dict[str, deque[float]] = {}
        self._ids = itertools.count()
        self._tag = f"{os.getpid()}-{os.urandom(4).hex()}"

    async def hit(self, username: str) -> Decision:
        """Count one request of ``username`` if it is within the limit (refusals are counted in
        ``dynconfig_rate_limited``)."""
        decision = await self._decide(username)
        if not decision.allowed and self._metrics is not None:
            self._metrics.rate_limited.inc()
        return decision

    async def _decide(self, username: str) -> Decision:
        if self._link.usable:
            try:
                allowed, remaining, wait_ms = await self._batches.call(username)
            except REDIS_ERRORS as exc:
                self._link.failed(exc)
            else:
                self._link.succeeded()
                return Decision(
                    bool(allowed),
                    self.limit,
                    int(remaining),
                    max(1, math.ceil(int(wait_ms) / 1000)) if not allowed else 0,
                )
        return self._hit_local(username)

    async def _hit_many(self, usernames: list[str]) -> list[tuple[int, int, int]]:
        members = [f"{self._tag}-{next(self._ids)}" for _ in usernames]
        flat = await self._script(
            keys=[_PREFIX + name for name in usernames], args=[self.limit, WINDOW_SECONDS * 1000, *members]
        )
        return [(flat[i], flat[i + 1], flat[i + 2]) for i in range(0, len(flat), 3)]

    def _hit_local(self, username: str) -> Decision:
        now = time.monotonic()
        log = self._local.setdefault(username, deque())
        while log and log[0] <= now - WINDOW_SECONDS:
            log.popleft()
        if len(log) < self.limit:
            log.append(now)
            if len(self._local) > 100_000:
                self._prune(now)
            return Decision(True, self.limit, self.limit - len(log), 0)
        retry = max(1, math.ceil(log[0] + WINDOW_SECONDS - now))
        return Decision(False, self.limit, 0, retry)

    def _prune(self, now: float) -> None:
        for name in [n for n, log in self._local.items() if not log or log[-1] <= now - WINDOW_SECONDS]:
            del self._local[name]


RATE_LIMITER = web.AppKey("rate_limiter", RateLimiter)


async def rate_limiter_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the process's limiter (needs ``redis_ctx`` first)."""
    metrics = app[METRICS]
    app[RATE_LIMITER] = RateLimiter(
        app[REDIS], app[SETTINGS].rate_limit, metrics if isinstance(metrics, ServingMetrics) else None
    )
    yield
