"""``dynconfig-migrate`` (dynconfig_admin/migrate.py): the one step that changes the schema (SPEC §1).

The command runs for real (``python -m dynconfig_admin.migrate``) with nothing but ``POSTGRES_URL`` (and
the settings a test names); the runner is called directly where a test needs migrations of its own.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest
from support import eventually_sync

from devtools.services import free_port
from dynconfig_admin.migrate import MigrationError, migrate
from shared.migrations import MIGRATIONS, Migration
from shared.sql.schema_migrations import MIGRATION_LOCK

REPO = Path(__file__).resolve().parents[2]
LAST = MIGRATIONS[-1].version
ALL = ", ".join(str(m.version) for m in MIGRATIONS)
#: The migration built outside a transaction (CREATE INDEX CONCURRENTLY), and its index.
CONCURRENT = next(m for m in MIGRATIONS if not m.transactional)
#: What a database left at 9 (the ``at_9`` fixture) lacks: the concurrent build and those after it.
AFTER_9 = ", ".join(str(m.version) for m in MIGRATIONS if m.version > 9)


def run_migrate(url: str | None, *args: str, **settings: str) -> subprocess.CompletedProcess[str]:
    """``python -m dynconfig_admin.migrate`` with only ``POSTGRES_URL`` and ``settings`` set (no Redis, JWKS or
    keys)."""
    env = {name: os.environ[name] for name in ("PATH", "HOME", "LANG") if name in os.environ}
    env.update(settings, LOG_LEVEL=settings.get("LOG_LEVEL", "WARNING"))
    if url is not None:
        env["POSTGRES_URL"] = url
    return subprocess.run(
        [sys.executable, "-m", "dynconfig_admin.migrate", *args],
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )


def query(url: str, statement: str, *params: object) -> list[tuple[object, ...]]:
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(statement, params)
        rows = cur.fetchall()
    conn.close()
    return rows


def applied(url: str) -> list[tuple[object, ...]]:
    return query(url, "SELECT version, count(*) FROM schema_migrations GROUP BY version ORDER BY version")


def index_state(url: str, name: str) -> list[tuple[object, ...]]:
    """``[(valid,)]`` for the index ``name``, ``[]`` when there is none."""
    return query(
        url,
        "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname = %s",
        name,
    )


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


@pytest.fixture
def at_9(empty_db: str) -> str:
    """A database as the previous release's ``dynconfig-migrate`` would leave it: migrations up to 9."""
    migrate(empty_db, [m for m in MIGRATIONS if m.version <= 9])
    return empty_db


# --- the command --------------------------------------------------------------------------------


def test_the_migrations_are_numbered_in_order_and_each_concurrent_build_is_a_statement_of_its_own() -> None:
    assert [m.version for m in MIGRATIONS] == list(range(1, LAST + 1))
    for m in MIGRATIONS:
        if not m.transactional:
            assert m.indexes, f"migration {m.version}: name the indexes it builds"
            assert m.sql.strip().rstrip(";").count(";") == 0, f"migration {m.version}: one statement only"
            assert "CONCURRENTLY IF NOT EXISTS" in m.sql, m.version


def test_it_brings_an_empty_database_to_this_release_with_postgres_url_alone(empty_db: str) -> None:
    done = run_migrate(empty_db)
    assert done.returncode == 0, done.stderr
    assert lines(done.stdout) == [f"dynconfig-migrate: database schema version {LAST} (applied {ALL})"]
    assert applied(empty_db) == [(m.version, 1) for m in MIGRATIONS]
    assert index_state(empty_db, CONCURRENT.indexes[0]) == [(True,)]

    again = run_migrate(empty_db)
    assert again.returncode == 0, again.stderr
    assert lines(again.stdout) == [f"dynconfig-migrate: database schema version {LAST} (nothing to apply)"]


def test_status_says_what_is_pending_and_exits_3_until_the_schema_is_current(at_9: str) -> None:
    before = run_migrate(at_9, "--status")
    assert before.returncode == 3, before.stderr
    assert "database schema version 9;" in before.stdout and f"pending: {AFTER_9}" in before.stdout, before.stdout
    assert applied(at_9)[-1] == (9, 1), "--status changed the schema"

    assert run_migrate(at_9).returncode == 0
    after = run_migrate(at_9, "--status")
    assert after.returncode == 0, after.stderr
    assert f"database schema version {LAST};" in after.stdout and "up to date" in after.stdout, after.stdout


def test_several_runs_at_once_apply_each_migration_exactly_once(empty_db: str) -> None:
    results: list[subprocess.CompletedProcess[str]] = []
    runners = [threading.Thread(target=lambda: results.append(run_migrate(empty_db))) for _ in range(4)]
    for runner in runners:
        runner.start()
    for runner in runners:
        runner.join()
    assert [r.returncode for r in results] == [0] * 4, [r.stderr for r in results]
    assert applied(empty_db) == [(m.version, 1) for m in MIGRATIONS]
    said = sorted(line for r in results for line in lines(r.stdout))  # the runs queue: one applies them all
    assert (
        said
        == [f"dynconfig-migrate: database schema version {LAST} (applied {ALL})"]
        + [f"dynconfig-migrate: database schema version {LAST} (nothing to apply)"] * 3
    ), said


def test_a_run_waiting_for_the_lock_does_not_deadlock_the_concurrent_build(at_9: str) -> None:
    """Two runs queue while a third session holds the migration lock; when it lets go, one builds the
    index CONCURRENTLY, which waits for every transaction with an older snapshot. A run that waited in
    ``pg_advisory_lock`` held its snapshot all the while: Postgres found a deadlock, killed one side,
    and a killed build left an INVALID index and an output line that hid what that run had applied
    (the failure of a clean-clone CI run). Each run answers once, with no retry."""
    holder = psycopg2.connect(at_9)
    holder.autocommit = True
    results: list[subprocess.CompletedProcess[str]] = []
    runners = [
        threading.Thread(target=lambda: results.append(run_migrate(at_9, LOG_LEVEL="WARNING"))) for _ in range(2)
    ]
    try:
        with holder.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
            for runner in runners:
                runner.start()
            eventually_sync(
                lambda: (
                    query(
                        at_9,
                        "SELECT count(*) FROM pg_stat_activity"
                        " WHERE application_name LIKE '%%/migrate%%' AND query LIKE '%%advisory_lock%%'",
                    )
                    == [(2,)]
                ),
                10,
                "both runs waiting for the lock",
                interval=0.02,
            )
            cur.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
        for runner in runners:
            runner.join()
    finally:
        holder.close()
    assert [r.returncode for r in results] == [0, 0], [r.stderr for r in results]
    assert [r.stderr for r in results] == ["", ""], "a run had to try again"
    assert sorted(line for r in results for line in lines(r.stdout)) == [
        f"dynconfig-migrate: database schema version {LAST} (applied {AFTER_9})",
        f"dynconfig-migrate: database schema version {LAST} (nothing to apply)",
    ]
    assert index_state(at_9, CONCURRENT.indexes[0]) == [(True,)]


@pytest.mark.parametrize(
    ("variable", "url", "settings"),
    [
        ("POSTGRES_URL", None, {}),
        ("POSTGRES_URL", "mysql://u@host/db", {}),
        ("MIGRATE_LOCK_TIMEOUT_SECONDS", "", {"MIGRATE_LOCK_TIMEOUT_SECONDS": "soon"}),
    ],
)
def test_a_bad_setting_is_one_line_naming_it_and_exit_2(
    empty_db: str, variable: str, url: str | None, settings: dict[str, str]
) -> None:
    done = run_migrate(empty_db if url == "" else url, **settings)
    assert done.returncode == 2, done.stderr
    assert len(lines(done.stderr)) == 1 and variable in done.stderr, done.stderr


def test_postgres_unreachable_is_one_line_and_exit_1() -> None:
    done = run_migrate(f"postgresql://u:secret-pw@127.0.0.1:{free_port()}/db", MIGRATE_ATTEMPTS="2")
    assert done.returncode == 1, done.stderr
    *tries, line = lines(done.stderr)  # a warning per failed try, then the one line that counts
    assert line.startswith("dynconfig-migrate: gave up after 2 attempts: Postgres unreachable"), line
    assert len(tries) == 1 and "trying again" in tries[0], tries
    assert "secret-pw" not in done.stderr and "Traceback" not in done.stderr


# --- locks: never queue behind a long transaction -------------------------------------------------


@pytest.fixture
def open_transaction(at_9: str) -> Iterator[psycopg2.extensions.connection]:
    """A transaction that wrote to key_history and stays open (a slow writer, a forgotten session)."""
    conn = psycopg2.connect(at_9)
    with conn.cursor() as cur:
        cur.execute("INSERT INTO key_history (key, version, event, actor, at) VALUES ('slow', 1, 'update', 'a', now())")
    try:
        yield conn
    finally:
        conn.close()


def test_an_interrupted_concurrent_build_leaves_an_invalid_index_that_the_next_run_rebuilds(
    at_9: str, open_transaction: psycopg2.extensions.connection
) -> None:
    """CREATE INDEX CONCURRENTLY waits for the writers of its table; with one that does not finish,
    the build gives up at lock_timeout (each try), exits 1 with one line, and leaves an INVALID index
    behind (IF NOT EXISTS would then skip it for ever). The next run drops it and builds it again."""
    index = CONCURRENT.indexes[0]
    done = run_migrate(at_9, MIGRATE_LOCK_TIMEOUT_SECONDS="1", MIGRATE_ATTEMPTS="2")
    assert done.returncode == 1, done.stderr
    assert lines(done.stderr)[-1] == (
        "dynconfig-migrate: gave up after 2 attempts: a lock was not had within lock_timeout (1 s): "
        "a long transaction, or another dynconfig-migrate, holds it"
    ), done.stderr
    assert index_state(at_9, index) == [(False,)]
    assert applied(at_9)[-1] == (9, 1)

    open_transaction.commit()
    again = run_migrate(at_9, LOG_LEVEL="INFO")
    assert again.returncode == 0, again.stderr
    assert f"dropping index {index}, left INVALID by an interrupted build" in again.stderr
    assert index_state(at_9, index) == [(True,)]
    assert applied(at_9)[-1] == (LAST, 1)


#: A test-only migration that needs an exclusive lock on ``keys`` (as adding a column does).
NEEDS_KEYS_EXCLUSIVELY = Migration(LAST + 1, "test: a column on keys", "ALTER TABLE keys ADD COLUMN test_note text")


def test_a_migration_that_cannot_have_its_lock_lets_writers_through_and_gives_up(private_db: str) -> None:
    """A reader holds ``keys`` in a long transaction; the migration's ALTER queues for the table, and
    every writer would queue behind it until the reader ends. With lock_timeout the migration steps
    aside: a write goes through while the reader still holds the table."""
    reader = psycopg2.connect(private_db)
    writer = psycopg2.connect(private_db)
    writer.autocommit = True
    outcome: list[BaseException | list[int]] = []

    def run() -> None:
        try:
            outcome.append(migrate(private_db, [*MIGRATIONS, NEEDS_KEYS_EXCLUSIVELY], lock_timeout=1.0, attempts=2))
        except MigrationError as exc:
            outcome.append(exc)

    try:
        with reader.cursor() as cur:
            cur.execute("SELECT count(*) FROM keys")
        migration = threading.Thread(target=run)
        migration.start()
        eventually_sync(
            lambda: query(private_db, "SELECT 1 FROM pg_stat_activity WHERE query LIKE 'ALTER TABLE keys%%'"),
            10,
            "the migration waiting for its lock",
            interval=0.02,
        )
        with writer.cursor() as cur:  # waits behind the ALTER until it gives up, not behind the reader
            cur.execute(
                "INSERT INTO keys (key, version, creator, created_at, last_modified) VALUES ('w', 1, 'a', now(), now())"
            )
        assert reader.status == psycopg2.extensions.STATUS_IN_TRANSACTION, "the reader's transaction ended"
        migration.join()
    finally:
        reader.close()
        writer.close()
    (result,) = outcome
    assert isinstance(result, MigrationError) and "lock_timeout (1 s)" in str(result), result
    assert query(private_db, "SELECT max(version) FROM schema_migrations") == [(LAST,)]

    assert migrate(private_db, [*MIGRATIONS, NEEDS_KEYS_EXCLUSIVELY], lock_timeout=1.0) == [LAST + 1]


def test_a_statement_past_statement_timeout_is_rolled_back_whole(private_db: str) -> None:
    slow = Migration(
        LAST + 1, "test: slow", "CREATE TABLE test_slow (x int); SELECT pg_sleep(5); INSERT INTO test_slow VALUES (1)"
    )
    with pytest.raises(MigrationError, match=r"statement_timeout \(1 s"):
        migrate(private_db, [*MIGRATIONS, slow], statement_timeout=1.0)
    assert query(private_db, "SELECT to_regclass('test_slow')") == [(None,)]
    assert query(private_db, "SELECT max(version) FROM schema_migrations") == [(LAST,)]
