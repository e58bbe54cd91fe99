"""The Postgres pool (one per process), the schema check, and LISTEN on a dedicated connection."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import aiopg
import psycopg2
import psycopg2.extensions
from aiohttp import web

from .appkeys import DB_POOL, SETTINGS
from .sql import schema_migrations as schema_sql
from .tasks import Backoff
from .version import schema_refusal

log = logging.getLogger(__name__)


class StartupError(Exception):
    """A dependency was unreachable for the whole start-up window."""


#: Session settings of every connection we open. JIT off: our statements are short OLTP ones, and on a
#: fresh database (``relay_state`` not yet analysed, estimated at ~1,800 rows) the planner JIT-compiled
#: the write statement of a batch of 64+ changes: 0.19 s per batch at 64, 1.55 s at 256 (found by
#: bench/scale.py: 252 writes/s before, 751/s after).
SESSION_OPTIONS = "-c jit=off"


def session_dsn(dsn: str) -> str:
    """``dsn`` with :data:`SESSION_OPTIONS` added to any ``options`` it has."""
    options = psycopg2.extensions.parse_dsn(dsn).get("options")
    return psycopg2.extensions.make_dsn(dsn, options=f"{options} {SESSION_OPTIONS}" if options else SESSION_OPTIONS)


async def connect_pool(dsn: str, *, wait_seconds: float, minsize: int = 1, maxsize: int = 20) -> aiopg.Pool:
    """Open a pool, retrying while Postgres comes up (containers start in any order)."""
    deadline = time.monotonic() + wait_seconds
    backoff = Backoff(cap=2.0)
    while True:
        try:
            return await aiopg.create_pool(session_dsn(dsn), minsize=minsize, maxsize=maxsize, timeout=10.0)
        except psycopg2.OperationalError as exc:
            if time.monotonic() >= deadline:
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "connection failed"
                raise StartupError(f"Postgres unreachable at POSTGRES_URL: {reason}") from None
            log.info("waiting for Postgres: %s", str(exc).strip().splitlines()[:1])
            await asyncio.sleep(backoff.next())


#: What a lost or unreachable Postgres connection raises.
CONNECTION_ERRORS = (psycopg2.Error, OSError, TimeoutError)
#: The errors of a Postgres that cannot be reached or serve now (every statement would fail alike), as
#: opposed to one that refuses one statement's data (``psycopg2.DataError``, an encoding error…): a
#: batch that fails with one of these fails for all its writers or readers at once; any other failure
#: is narrowed down to the item that caused it (``shared.tasks.Coalescer``, the committer).
POSTGRES_UNREACHABLE = (psycopg2.OperationalError, psycopg2.InterfaceError, OSError, TimeoutError)


async def listen(
    dsn: str, channels: Sequence[str], serve: Callable[[aiopg.Connection], Awaitable[None]], *, name: str
) -> None:
    """For ever: open a dedicated connection, ``LISTEN`` on ``channels`` and run ``serve(conn)``; when
    the connection fails, log it and reconnect with backoff. ``serve`` reads ``conn.notifies`` (a
    notice is a wake-up hint; a periodic look is the safety net) and may use ``conn`` for its own
    statements (the relay holds its advisory lock on it)."""
    backoff = Backoff(first=0.5)
    while True:
        try:
            async with aiopg.connect(session_dsn(dsn), timeout=10.0) as conn:
                async with conn.cursor() as cur:
                    for channel in channels:
                        await cur.execute(f"LISTEN {channel}")
                backoff.reset()
                await serve(conn)
        except CONNECTION_ERRORS as exc:
            log.warning("%s: Postgres connection lost (%s); reconnecting", name, type(exc).__name__)
        await asyncio.sleep(backoff.next())


class Hearing:
    """Writers that answer only once this process's own listener has taken in the notice their commit
    sent: Postgres sends a NOTIFY to every listening session at the same COMMIT, so once this
    process's listener has it, every other process's has been sent it too (the window left is the
    notice's own delivery). The listener calls :meth:`wake` whenever it has taken notices in; a
    writer awaits :meth:`until` a predicate on what the listener knows holds."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def wake(self) -> None:
        """The listener took notices in: let every waiter look again."""
        self._event.set()
        self._event = asyncio.Event()

    async def until(self, heard: Callable[[], bool], within: float, what: str) -> bool:
        """Wait until ``heard()`` (looked at now and after each :meth:`wake`), at most ``within``
        seconds; False (and a log line naming ``what``) when it did not hold in time."""
        try:
            async with asyncio.timeout(within):
                while not heard():
                    await self._event.wait()
        except TimeoutError:
            if not heard():
                log.warning("no notice of %s within %.1f s", what, within)
                return False
        return True


async def wait_notices(conn: aiopg.Connection, within: float) -> list[Any]:
    """The notices on ``conn``: those queued, else the next ones to arrive within ``within`` seconds
    (``[]`` when none did). Each has ``.channel`` and ``.payload``."""
    notices = []
    if conn.notifies.empty():
        try:
            async with asyncio.timeout(within):
                notices.append(await conn.notifies.get())
        except TimeoutError:
            return []
    while not conn.notifies.empty():
        notices.append(conn.notifies.get_nowait())
    return notices


async def schema_version(pool: aiopg.Pool) -> int:
    """The database's schema version (its newest applied migration; 0 before the first)."""
    async with pool.acquire() as conn, conn.cursor() as cur:
        await cur.execute(schema_sql.EXISTS)
        (exists,) = await cur.fetchone()
        if not exists:
            return 0
        await cur.execute(schema_sql.CURRENT)
        (version,) = await cur.fetchone()
        return int(version)


async def check_schema(pool: aiopg.Pool) -> int:
    """The schema's version, or :class:`StartupError` (one line naming both versions) when this
    release does not work with it (shared/version.py). Processes never migrate: ``dynconfig-migrate``
    does, before they roll out."""
    version = await schema_version(pool)
    refusal = schema_refusal(version)
    if refusal is not None:
        raise StartupError(refusal)
    return version


async def pool_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the process's pool, on a schema this release works with (else it does not start)."""
    settings = app[SETTINGS]
    pool = await connect_pool(settings.postgres_url, wait_seconds=settings.startup_timeout_seconds)
    try:
        await check_schema(pool)
        app[DB_POOL] = pool
        yield
    finally:
        pool.close()
        await pool.wait_closed()
