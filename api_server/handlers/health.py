"""``GET /health``: Postgres must answer; Redis is reported but optional (writes work without it)."""

from __future__ import annotations

from aiohttp import web

from shared.audit.writer import AUDIT
from shared.redis import REDIS
from shared.runtime.web import base_checks, health_response


async def health(request: web.Request) -> web.Response:
    """200 ``{"status": "healthy"}`` while Postgres answers; 503 naming the failing check otherwise."""
    redis_ok = await request.app[REDIS].ping()
    return health_response(
        {
            **await base_checks(request.app),
            "audit": request.app[AUDIT].status,
            "redis": "ok" if redis_ok else "unavailable (degraded: cache and shared rate limit off)",
        }
    )
