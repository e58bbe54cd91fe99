"""``GET /health``: Postgres must answer; Redis is reported but optional (writes work without it)."""

from __future__ import annotations

import asyncio

import psycopg2
from aiohttp import web

from shared.keys import DB_POOL, REDIS
from shared.web import json_response


async def health(request: web.Request) -> web.Response:
    """200 ``{"status": "healthy"}`` while Postgres answers; 503 naming the failing check otherwise."""
    checks: dict[str, str] = {}
    try:
        async with request.app[DB_POOL].acquire() as conn, conn.cursor() as cur:
            await asyncio.wait_for(cur.execute("SELECT 1"), timeout=2.0)
        checks["postgres"] = "ok"
    except (TimeoutError, psycopg2.Error, OSError):
        checks["postgres"] = "unavailable"
    checks["redis"] = (
        "ok" if await request.app[REDIS].ping() else "unavailable (degraded: cache and shared rate limit off)"
    )
    if checks["postgres"] != "ok":
        return json_response(
            {
                "status": "unhealthy",
                "error": "Service Unavailable",
                "message": "Postgres is unavailable",
                "checks": checks,
            },
            status=503,
        )
    return json_response({"status": "healthy", "checks": checks})
