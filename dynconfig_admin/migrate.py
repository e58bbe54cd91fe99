"""``dynconfig-migrate`` (``python -m dynconfig_admin.migrate``): bring the database's schema up to this release.

    dynconfig-migrate             apply every pending migration; exit 0 once the schema is current
    dynconfig-migrate --status    print the database's schema version and this release's; exit 0 when
                                  nothing is pending, 3 when migrations are pending

It needs only ``POSTGRES_URL`` (and reads ``MIGRATE_LOCK_TIMEOUT_SECONDS``, ``MIGRATE_STATEMENT_TIMEOUT_SECONDS``,
``MIGRATE_ATTEMPTS``, ``LOG_LEVEL``). Exit 1 with one line when it cannot finish (a lock not had in time
after every attempt, a statement refused, Postgres unreachable); 2 when a setting is bad.

Run it before a release's processes roll out (deploy/: a Kubernetes Job, a compose one-shot): no
process migrates, each refuses a schema outside its release's range (shared/version.py). Runs queue on
an advisory lock, so several at once are safe; each migration is recorded in ``schema_migrations`` as
it completes, so a run that stopped half way is finished by the next one.

Every statement waits at most ``lock_timeout`` for a lock: a migration that needs a table lock while
a long transaction holds one would otherwise queue, and every writer would queue behind it. When the
wait runs out, the migration is rolled back and tried again after a backoff, up to ``MIGRATE_ATTEMPTS``
times. An index built ``CONCURRENTLY`` (outside a transaction) that was interrupted leaves an INVALID
index behind; the next run drops it and builds it again.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from typing import Any, NoReturn

import psycopg2
import psycopg2.errors
import psycopg2.extensions
from psycopg2 import sql as pgsql

from shared.db import dsn_for
from shared.migrations import MIGRATIONS, Migration
from shared.runtime.logs import flush_logs, setup_logging
from shared.runtime.supervisor import Backoff
from shared.settings import Settings, SettingsError, exit_on_bad_settings
from shared.sql import schema_migrations as sql
from shared.version import VERSION, schema_refusal, version_line

log = logging.getLogger(__name__)

PROG = "dynconfig-migrate"
#: Of OPTIONAL_PARTS (shared/settings.py), what this command reads: none. POSTGRES_URL is enough.
USES: frozenset[str] = frozenset()
#: Exit status of ``--status`` when migrations are pending.
PENDING_STATUS = 3


class MigrationError(Exception):
    """The schema could not be brought up to date; the message is the one line to print."""


def load_settings(env: Any = None) -> Settings:
    """This command's settings: only what it uses (deploy/'s Job and compose service are checked
    against this)."""
    return Settings.from_env(env, uses=USES)


def _connect(dsn: str) -> psycopg2.extensions.connection:
    # Dedicated: the session's own SET statement_timeout/lock_timeout then bound each migration.
    conn = psycopg2.connect(dsn_for(dsn, "migrate", dedicated=True), connect_timeout=10)
    conn.autocommit = True  # each migration opens its own transaction, or runs outside one
    return conn


def schema_version(cur: psycopg2.extensions.cursor) -> int:
    """The database's schema version: its newest applied migration, 0 before the first."""
    cur.execute(sql.EXISTS)
    if not cur.fetchone()[0]:
        return 0
    cur.execute(sql.CURRENT)
    return int(cur.fetchone()[0])


def _applied(cur: psycopg2.extensions.cursor) -> set[int]:
    cur.execute(sql.EXISTS)
    if not cur.fetchone()[0]:
        return set()
    cur.execute(sql.APPLIED)
    return {row[0] for row in cur.fetchall()}


def _milliseconds(seconds: float) -> str:
    return str(int(seconds * 1000))


def _apply(cur: psycopg2.extensions.cursor, migration: Migration, statement_timeout: float) -> None:
    record = {"version": migration.version, "description": migration.description}
    if migration.transactional:
        # A failure leaves the transaction open; closing the connection (apply_pending) rolls it back.
        cur.execute("BEGIN")
        cur.execute(migration.sql)
        cur.execute(sql.RECORD, record)
        cur.execute("COMMIT")
        return
    # Outside a transaction (CREATE INDEX CONCURRENTLY): an index an interrupted build left INVALID
    # would satisfy IF NOT EXISTS while no query can use it: drop it, then build it again.
    cur.execute(sql.INVALID_INDEXES, {"names": list(migration.indexes)})
    for (name,) in cur.fetchall():
        log.warning("migration %d: dropping index %s, left INVALID by an interrupted build", migration.version, name)
        cur.execute(pgsql.SQL(sql.DROP_INDEX).format(name=pgsql.Identifier(name)))
    cur.execute(sql.SET_STATEMENT_TIMEOUT, {"statement_ms": "0"})  # a concurrent build blocks no writer
    try:
        cur.execute(migration.sql)
    finally:
        cur.execute(sql.SET_STATEMENT_TIMEOUT, {"statement_ms": _milliseconds(statement_timeout)})
    cur.execute(sql.RECORD, record)


class LockBusy(Exception):
    """Another run held the migration lock for all of ``lock_timeout``."""


#: How often a run waiting for the migration lock tries it again.
LOCK_POLL_SECONDS = 0.05


def _take_lock(cur: psycopg2.extensions.cursor, lock_timeout: float) -> None:
    """Take the session's migration lock, trying it again (each try a statement of its own, so no
    snapshot is held while waiting: see sql.TRY_LOCK) until ``lock_timeout`` has passed."""
    deadline = time.monotonic() + lock_timeout
    while True:
        cur.execute(sql.TRY_LOCK, {"lock": sql.MIGRATION_LOCK})
        if cur.fetchone()[0]:
            return
        if time.monotonic() >= deadline:
            raise LockBusy
        time.sleep(LOCK_POLL_SECONDS)


def apply_pending(
    dsn: str,
    migrations: Sequence[Migration] = MIGRATIONS,
    *,
    lock_timeout: float = 5.0,
    statement_timeout: float = 60.0,
    into: list[int] | None = None,
) -> list[int]:
    """One attempt: take the migration lock, apply each migration not yet applied (in order, each
    recorded as it completes), return the versions applied. Raises psycopg2's errors as they come
    (``LockNotAvailable`` when a lock was not had within ``lock_timeout``; :class:`LockBusy` when that
    lock was the migration lock). Each migration applied is appended to ``into`` as it completes, so
    a caller that tries again still knows what an attempt that failed had done."""
    applied: list[int] = [] if into is None else into
    conn = _connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(
                sql.SET_TIMEOUTS,
                {"lock_ms": _milliseconds(lock_timeout), "statement_ms": _milliseconds(statement_timeout)},
            )
            _take_lock(cur, lock_timeout)
            cur.execute(sql.CREATE)
            done = _applied(cur)
            for migration in migrations:
                if migration.version in done:
                    continue
                log.info("applying migration %d: %s", migration.version, migration.description)
                started = time.monotonic()
                _apply(cur, migration, statement_timeout)
                log.info("applied migration %d in %.2f s", migration.version, time.monotonic() - started)
                applied.append(migration.version)
    finally:
        conn.close()  # ends the session's advisory lock (and rolls back a failed migration), however we leave
    return applied


def migrate(
    dsn: str,
    migrations: Sequence[Migration] = MIGRATIONS,
    *,
    lock_timeout: float = 5.0,
    statement_timeout: float = 60.0,
    attempts: int = 5,
) -> list[int]:
    """Apply every pending migration, trying again with backoff (up to ``attempts`` times) when a lock
    was not had within ``lock_timeout`` or Postgres could not be reached; return the versions applied.
    Raises :class:`MigrationError` (one line) when it could not."""
    backoff = Backoff(first=1.0, cap=15.0)
    applied: list[int] = []  # across attempts: an attempt that failed may have applied some
    for attempt in range(1, attempts + 1):
        try:
            return apply_pending(
                dsn, migrations, lock_timeout=lock_timeout, statement_timeout=statement_timeout, into=applied
            )
        except (psycopg2.errors.LockNotAvailable, LockBusy):
            why = (
                f"a lock was not had within lock_timeout ({lock_timeout:g} s): a long transaction, or "
                "another dynconfig-migrate, holds it"
            )
        except psycopg2.errors.QueryCanceled:
            raise MigrationError(
                f"a migration ran past statement_timeout ({statement_timeout:g} s, MIGRATE_STATEMENT_TIMEOUT_SECONDS);"
                " nothing of it was kept"
            ) from None
        except psycopg2.OperationalError as exc:  # unreachable (no SQLSTATE), a deadlock, a restart…
            why = _first_line(exc) if exc.pgcode else f"Postgres unreachable at POSTGRES_URL: {_first_line(exc)}"
        except psycopg2.Error as exc:
            raise MigrationError(f"Postgres refused a migration: {_first_line(exc)}") from None
        if attempt == attempts:
            raise MigrationError(f"gave up after {attempts} attempts: {why}")
        delay = backoff.next()
        log.warning("attempt %d of %d: %s; trying again in %.1f s", attempt, attempts, why, delay)
        time.sleep(delay)
    raise AssertionError("unreachable")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def status(dsn: str, migrations: Sequence[Migration] = MIGRATIONS) -> tuple[int, list[int]]:
    """The database's schema version and the migrations of this release it still lacks."""
    conn = _connect(dsn)
    try:
        with conn.cursor() as cur:
            current = schema_version(cur)
            done = _applied(cur)
    finally:
        conn.close()
    return current, [m.version for m in migrations if m.version not in done]


def _status_line(current: int, pending: list[int], target: int) -> str:
    line = f"database schema version {current}; this release ({VERSION}) migrates it to {target}"
    if pending:
        return f"{line}; pending: {', '.join(map(str, pending))}"
    refusal = schema_refusal(current)
    return f"{line}; up to date" + (f" (but its processes refuse it: {refusal})" if refusal else "")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--status", action="store_true", help="print current and target versions; exit 3 if pending")
    parser.add_argument("--version", action="version", version=version_line(PROG))
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Entry point of ``dynconfig-migrate``."""
    args = parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as exc:
        exit_on_bad_settings(PROG, exc)
    setup_logging(settings.log_level)
    target = MIGRATIONS[-1].version
    try:
        if args.status:
            current, pending = status(settings.postgres_url)
            flush_logs()
            print(_status_line(current, pending, target))
            sys.exit(PENDING_STATUS if pending else 0)
        applied = migrate(
            settings.postgres_url,
            lock_timeout=settings.migrate_lock_timeout_seconds,
            statement_timeout=settings.migrate_statement_timeout_seconds,
            attempts=settings.migrate_attempts,
        )
        current, _ = status(settings.postgres_url)
    except MigrationError as exc:
        _fail(str(exc))
    except psycopg2.Error as exc:  # --status, or the last look
        _fail(f"Postgres unreachable at POSTGRES_URL: {_first_line(exc)}")
    except KeyboardInterrupt:
        _fail("interrupted; run it again to finish (each migration is kept or rolled back whole)")
    flush_logs()
    done = f"applied {', '.join(map(str, applied))}" if applied else "nothing to apply"
    print(f"{PROG}: database schema version {current} ({done})")
    sys.exit(0)


def _fail(line: str) -> NoReturn:
    flush_logs()
    print(f"{PROG}: {line}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
    main()
