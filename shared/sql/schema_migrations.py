"""The ``schema_migrations`` table (one row per applied migration, shared/migrations.py) and the
statements of the migration runner (dynconfig_admin/migrate.py)."""

#: Any constant works: every ``dynconfig-migrate`` takes this session lock, so runs queue, not race.
MIGRATION_LOCK = 0x44594E43  # "DYNC"

CREATE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer PRIMARY KEY,
    description text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""

#: Whether the table exists at all (a database nothing has migrated yet is at version 0).
EXISTS = "SELECT to_regclass('schema_migrations') IS NOT NULL"

APPLIED = "SELECT version FROM schema_migrations ORDER BY version"

#: The schema's version: its newest migration (they are applied in order).
CURRENT = "SELECT coalesce(max(version), 0) FROM schema_migrations"

RECORD = "INSERT INTO schema_migrations (version, description) VALUES (%(version)s, %(description)s)"

#: The runner's session: waits for a lock and runs a statement at most this long (milliseconds).
SET_TIMEOUTS = (
    "SELECT set_config('lock_timeout', %(lock_ms)s, false), set_config('statement_timeout', %(statement_ms)s, false)"
)
SET_STATEMENT_TIMEOUT = "SELECT set_config('statement_timeout', %(statement_ms)s, false)"

#: Tried, not waited for: a run waiting inside ``pg_advisory_lock`` holds a snapshot all the while, and
#: the other run's ``CREATE INDEX CONCURRENTLY`` waits for every older snapshot to end (a deadlock).
TRY_LOCK = "SELECT pg_try_advisory_lock(%(lock)s)"

#: Those of ``names`` that exist as INVALID indexes (a ``CREATE INDEX CONCURRENTLY`` that was
#: interrupted) in the schema the session writes to.
INVALID_INDEXES = """
SELECT c.relname
  FROM pg_index i
  JOIN pg_class c ON c.oid = i.indexrelid
 WHERE NOT i.indisvalid
   AND c.relname = ANY(%(names)s)
   AND c.relnamespace = current_schema()::regnamespace
"""

#: Drops an INVALID index before it is built again (``{name}``: a ``psycopg2.sql.Identifier``).
DROP_INDEX = "DROP INDEX CONCURRENTLY IF EXISTS {name}"
