"""Postgres connections: how each kind is opened (:func:`connector`), the pool (one per process), the
schema check, and LISTEN on a dedicated connection."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiopg
import psycopg2
import psycopg2.extensions
from aiohttp import web
from aiopg.connection import Transaction

from shared.runtime.supervisor import Backoff
from shared.settings import PROCESS, SETTINGS, Settings
from shared.sql import schema_migrations as schema_sql
from shared.version import schema_refusal

DB_POOL = web.AppKey("db_pool", aiopg.Pool)


log = logging.getLogger(__name__)


class StartupError(Exception):
    """A dependency was unreachable for the whole start-up window."""


# --- how a connection is opened ---------------------------------------------------------------------

#: Session settings of every connection we open. JIT off: our statements are short OLTP ones, and on a
#: fresh database (``relay_state`` not yet analysed, estimated at ~1,800 rows) the planner JIT-compiled
#: the write statement of a batch of 64+ changes: 0.19 s per batch at 64, 1.55 s at 256 (found by
#: bench/scale.py: 252 writes/s before, 751/s after).
SESSION_OPTIONS = "-c jit=off"
#: Every connection's ``application_name`` is this plus ``<process>/<role>`` (pg_stat_activity).
APPLICATION_PREFIX = "dynconfig/"
#: The ``statement_timeout`` of dedicated connections (LISTEN, the relay's lock), whatever
#: ``POSTGRES_STATEMENT_TIMEOUT_SECONDS`` says: a request's limit, however low it is set, must not cut
#: a listener's catch-up (at most 10,000 changes). Their client gives up far sooner
#: (:data:`DEDICATED_CLIENT_TIMEOUT_SECONDS`) and reconnects; this only reaps a statement left
#: running by a client that is gone.
DEDICATED_STATEMENT_TIMEOUT_SECONDS = 60
#: How long a dedicated connection's client waits for any answer before it reconnects.
DEDICATED_CLIENT_TIMEOUT_SECONDS = 10.0
#: The ``statement_timeout`` of the one-off commands' connections (``audit verify``, ``reencrypt``):
#: they walk whole tables in pages and verify's anti-join reads all of history once, which a request's
#: limit would cut on a big database.
COMMAND_STATEMENT_TIMEOUT_SECONDS = 3600
#: A pooled connection's client waits this much longer than the server's ``statement_timeout``: the
#: server cancels a slow statement first (cleanly: the transaction rolls back, the connection stays
#: usable), and the client's own timeout (which closes the connection) is left for a server that does
#: not answer at all: frozen, or behind a network that drops packets.
CLIENT_TIMEOUT_MARGIN_SECONDS = 5.0


@dataclass(frozen=True)
class Connector:
    """How one kind of connection is opened: its DSN, its name (``<process>/<role>``), and how long its
    client waits for any answer (connect, acquire from the pool, each statement)."""

    dsn: str = field(repr=False)
    name: str
    timeout: float


def connector(settings: Settings, name: str, *, dedicated: bool = False) -> Connector:
    """The connector of the connections ``name`` (``<process>/<role>``, e.g. ``api_server/pool``) of a
    process with ``settings``: POSTGRES_URL plus

    - ``application_name`` ``dynconfig/<process>/<role>``, so pg_stat_activity tells who holds what;
    - TCP keepalives on both ends (libpq's ``keepalives_*`` and the server's ``tcp_keepalives_*``): a
      peer gone without a word (a lost node, a partition) is dropped after idle + interval × count
      seconds on either side, and the server gives its locks back (the relay's among them);
    - ``statement_timeout``: ``POSTGRES_STATEMENT_TIMEOUT_SECONDS`` for pooled connections,
      :data:`DEDICATED_STATEMENT_TIMEOUT_SECONDS` for ``dedicated`` ones;
    - ``idle_in_transaction_session_timeout`` (a transaction a stuck process left open ends), and
      :data:`SESSION_OPTIONS`.

    Dedicated connections go to ``POSTGRES_LISTEN_URL`` when it is set (a transaction-mode PgBouncer
    in front of the pools cannot carry LISTEN or a session's advisory lock). Any ``options`` the URL
    has come first; ours win where they name the same setting."""
    statement = DEDICATED_STATEMENT_TIMEOUT_SECONDS if dedicated else settings.postgres_statement_timeout_seconds
    idle, interval, count = (
        settings.postgres_keepalives_idle_seconds,
        settings.postgres_keepalives_interval_seconds,
        settings.postgres_keepalives_count,
    )
    ours = [
        SESSION_OPTIONS,
        f"-c statement_timeout={statement * 1000}",
        f"-c idle_in_transaction_session_timeout={settings.postgres_idle_in_transaction_timeout_seconds * 1000}",
        f"-c tcp_keepalives_idle={idle} -c tcp_keepalives_interval={interval} -c tcp_keepalives_count={count}",
    ]
    url = (settings.postgres_listen_url if dedicated else None) or settings.postgres_url
    theirs = psycopg2.extensions.parse_dsn(url).get("options")
    dsn = psycopg2.extensions.make_dsn(
        url,
        application_name=(APPLICATION_PREFIX + name)[:63],  # Postgres keeps 63 bytes
        keepalives=1,
        keepalives_idle=idle,
        keepalives_interval=interval,
        keepalives_count=count,
        options=" ".join([theirs, *ours] if theirs else ours),
    )
    timeout = DEDICATED_CLIENT_TIMEOUT_SECONDS if dedicated else statement + CLIENT_TIMEOUT_MARGIN_SECONDS
    return Connector(dsn, name, timeout)


def command_connector(settings: Settings, command: str) -> Connector:
    """:func:`connector` for the pool of a one-off command, with :data:`COMMAND_STATEMENT_TIMEOUT_SECONDS`."""
    long = dataclasses.replace(settings, postgres_statement_timeout_seconds=COMMAND_STATEMENT_TIMEOUT_SECONDS)
    return connector(long, f"{command}/pool")


def app_connector(app: web.Application, role: str, *, dedicated: bool = False) -> Connector:
    """:func:`connector` for the connections ``role`` of the process ``app`` is."""
    return connector(app[SETTINGS], f"{app[PROCESS]}/{role}", dedicated=dedicated)


#: Where a dedicated connection or a pool goes: a :class:`Connector`, or a bare URL (tests, one-off
#: commands), which gets the settings' defaults.
Target = Connector | str


def _as_connector(target: Target, role: str, *, dedicated: bool) -> Connector:
    """A bare URL (a one-off command, a test) gets the settings' defaults, named after the command."""
    if isinstance(target, Connector):
        return target
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    command = spec.name if spec is not None else Path(sys.argv[0]).name or "python"
    bare = {"redis_url": "", "jwks_url": "", "encryption_keys": ()}  # what a bare URL's connection never uses
    defaults = {f.name: f.default for f in dataclasses.fields(Settings) if f.default is not dataclasses.MISSING}
    settings = Settings(**{**bare, **defaults, "postgres_url": target})
    return connector(settings, f"{command}/{role}", dedicated=dedicated)


def dsn_for(target: Target, role: str, *, dedicated: bool = False) -> str:
    """The DSN a synchronous client (``dynconfig-migrate``'s psycopg2) opens ``target`` with: the same
    name, keepalives and session settings as every other connection (:func:`connector`)."""
    return _as_connector(target, role, dedicated=dedicated).dsn


# --- aiopg: a cancelled statement is an error, not a cancellation; a failed transaction ends ----------------


async def _poll(self: aiopg.Connection, waiter: asyncio.Future[None], timeout: float) -> None:  # noqa: ASYNC109
    """``aiopg.Connection._poll`` of aiopg 1.4, less its ``QueryCanceledError`` branch. aiopg turns a
    statement the server cancelled (``statement_timeout``, ``pg_cancel_backend``: SQLSTATE 57014) into
    ``asyncio.CancelledError`` and logs it through the loop as an ERROR with a traceback
    (aio-libs/aiopg#537). Every loop here reads ``CancelledError`` as "stop": one cancelled statement
    stopped the committer's contended lane for good, silently, and the writes of its batch never got
    an answer. Raised as itself (``QueryCanceled`` is an ``OperationalError``), it is a 503 for a
    request and a logged retry for a loop. tests/ops/test_outage.py holds aiopg to this."""
    assert waiter is self._waiter, (waiter, self._waiter)
    self._ready(self._weakref)  # type: ignore[attr-defined]
    try:
        # Not asyncio.wait_for: on Python 3.11 it swallows a cancellation that lands in the loop step
        # the answer does, and a listener's task then runs on after its cancel_and_wait (every test
        # app's teardown waited 2 s for the second cancel; a shutdown would too).
        async with asyncio.timeout(timeout):
            await self._waiter
    except (asyncio.CancelledError, TimeoutError):
        await asyncio.shield(self.close())
        raise
    finally:
        self._waiter = None


aiopg.Connection._poll = _poll  # type: ignore[method-assign]


def _ended_on_failure(step: Callable[[Transaction], Awaitable[Any]]) -> Callable[[Transaction], Awaitable[Any]]:
    """``step`` (``Transaction.begin``/``commit``/``rollback`` of aiopg 1.4), after which a failure
    leaves no transaction open. aiopg marks one begun before it sends BEGIN and ended only when COMMIT
    or ROLLBACK answers, so one whose connection was lost at either stayed "open" and warned
    (ResourceWarning) whenever the garbage collector reached it. Whatever the failure, nothing is open
    after it: BEGIN never ran, or the server ended the transaction (a failed COMMIT rolls back; a lost
    or cancelled connection ends it). tests/ops/test_outage.py holds aiopg to this."""

    async def run(self: Transaction) -> Any:
        try:
            return await step(self)
        except BaseException:
            self._is_begin = False
            raise

    return run


Transaction.begin = _ended_on_failure(Transaction.begin)  # type: ignore[method-assign,assignment]
Transaction.commit = _ended_on_failure(Transaction.commit)  # type: ignore[method-assign,assignment]
Transaction.rollback = _ended_on_failure(Transaction.rollback)  # type: ignore[method-assign,assignment]


# --- the pool and dedicated connections ---------------------------------------------------------------


async def connect_pool(target: Target, *, wait_seconds: float, minsize: int = 1, maxsize: int = 20) -> aiopg.Pool:
    """Open a pool, retrying while Postgres comes up (containers start in any order)."""
    pooled = _as_connector(target, "pool", dedicated=False)
    deadline = time.monotonic() + wait_seconds
    backoff = Backoff(cap=2.0)
    while True:
        try:
            return await aiopg.create_pool(pooled.dsn, minsize=minsize, maxsize=maxsize, timeout=pooled.timeout)
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
#: is narrowed down to the item that caused it (``shared.runtime.coalescer.Coalescer``, the committer). A request
#: that meets one is answered 503 (``shared.runtime.web.error_middleware``): a statement cancelled by
#: ``statement_timeout`` is an ``OperationalError`` too, and a server that does not answer in time a
#: ``TimeoutError``.
POSTGRES_UNREACHABLE = (psycopg2.OperationalError, psycopg2.InterfaceError, OSError, TimeoutError)


async def listen(
    target: Target,
    channels: Sequence[str],
    serve: Callable[[aiopg.Connection], Awaitable[None]],
    *,
    name: str = "listener",
) -> None:
    """For ever: open a dedicated connection (``target``, from :func:`connector` with
    ``dedicated=True``), ``LISTEN`` on ``channels`` and run ``serve(conn)``; when the connection fails,
    log it and reconnect with backoff. ``serve`` reads ``conn.notifies`` (a notice is a wake-up hint; a
    periodic look is the safety net) and may use ``conn`` for its own statements (the relay holds its
    advisory lock on it). ``name`` names a bare URL's connection."""
    dedicated = _as_connector(target, name, dedicated=True)
    backoff = Backoff(first=0.5)
    while True:
        try:
            async with aiopg.connect(dedicated.dsn, timeout=dedicated.timeout) as conn:
                async with conn.cursor() as cur:
                    for channel in channels:
                        await cur.execute(f"LISTEN {channel}")
                backoff.reset()
                await serve(conn)
        except CONNECTION_ERRORS as exc:
            log.warning("%s: Postgres connection lost (%s); reconnecting", dedicated.name, type(exc).__name__)
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


async def ping(cur: aiopg.Cursor) -> None:
    """One round trip (``SELECT 1``) on ``cur``'s connection: raises when the connection is dead (a session
    lock held on it is then gone too; a listener looking at its connection while no notice comes then
    reconnects)."""
    await cur.execute("SELECT 1")


async def try_session_lock(cur: aiopg.Cursor, lock: int) -> bool:
    """Take the advisory lock ``lock`` for ``cur``'s session (until it ends) without waiting; whether
    it was free: one leader among replicas."""
    await cur.execute("SELECT pg_try_advisory_lock(%s)", (lock,))
    (acquired,) = await cur.fetchone()
    return bool(acquired)


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
    pool = await connect_pool(
        app_connector(app, "pool"), wait_seconds=settings.startup_timeout_seconds, maxsize=settings.postgres_pool_size
    )
    try:
        await check_schema(pool)
        app[DB_POOL] = pool
        yield
    finally:
        pool.close()
        await pool.wait_closed()
