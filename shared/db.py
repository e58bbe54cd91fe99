"""The Postgres pool (one per process) and the migration runner."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import aiopg
import psycopg2
from aiohttp import web

from .keys import DB_POOL, SETTINGS
from .migrations import MIGRATIONS

log = logging.getLogger(__name__)

# Any constant works; every DynConfig process takes this lock to migrate, so they queue, not race.
_MIGRATION_LOCK = 0x44594E43  # "DYNC"


class StartupError(Exception):
    """A dependency was unreachable for the whole start-up window."""


async def connect_pool(dsn: str, *, wait_seconds: float, minsize: int = 1, maxsize: int = 20) -> aiopg.Pool:
    """Open a pool, retrying while Postgres comes up (containers start in any order)."""
    deadline = time.monotonic() + wait_seconds
    delay = 0.2
    while True:
        try:
            return await aiopg.create_pool(dsn, minsize=minsize, maxsize=maxsize, timeout=10.0)
        except psycopg2.OperationalError as exc:
            if time.monotonic() >= deadline:
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "connection failed"
                raise StartupError(f"Postgres unreachable at POSTGRES_URL: {reason}") from None
            log.info("waiting for Postgres: %s", str(exc).strip().splitlines()[:1])
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


async def migrate(pool: aiopg.Pool) -> list[int]:
    """Apply every migration not yet applied, under an advisory lock; return those applied."""
    applied: list[int] = []
    async with pool.acquire() as conn, conn.cursor() as cur, cur.begin():
        await cur.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        await cur.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, description text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        await cur.execute("SELECT version FROM schema_migrations")
        done = {row[0] for row in await cur.fetchall()}
        for version, description, sql in MIGRATIONS:
            if version in done:
                continue
            await cur.execute(sql)
            await cur.execute(
                "INSERT INTO schema_migrations (version, description) VALUES (%s, %s)", (version, description)
            )
            applied.append(version)
    if applied:
        log.info("applied migrations %s", applied)
    return applied


async def pool_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the process's pool, migrated before the app serves."""
    settings = app[SETTINGS]
    pool = await connect_pool(settings.postgres_url, wait_seconds=settings.startup_timeout_seconds)
    try:
        await migrate(pool)
        app[DB_POOL] = pool
        yield
    finally:
        pool.close()
        await pool.wait_closed()
