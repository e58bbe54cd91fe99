"""What ``dynconfig-backup`` (dynconfig_admin/backup.py) reads: the facts a backup's manifest records,
read in the snapshot the dump is taken from, and read again from the restored database to compare."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg2.extensions

from shared.audit.chain import Head
from shared.sql import audit as audit_sql
from shared.sql import changelog as changelog_sql

# Run first in the dump's REPEATABLE READ transaction: pg_dump --snapshot takes the same snapshot.
EXPORT_SNAPSHOT = "SELECT pg_export_snapshot()"

SCHEMA_VERSION = "SELECT coalesce(max(version), 0) FROM schema_migrations"

# The change log's head and pruned revision, and how many keys (not deleted), versions and audit rows.
COUNTS = """
SELECT r.head, r.pruned_through,
       (SELECT count(*) FROM keys WHERE NOT deleted),
       (SELECT count(*) FROM key_history),
       (SELECT count(*) FROM audit_log)
  FROM relay_state r
"""

# The ids of the encryption keys that sealed any stored value, current or past (shared/security/crypto.py:
# a blob starts with the length of its key id, then the id).
ENCRYPTION_KEY_IDS = """
SELECT DISTINCT convert_from(substring(v.value_enc from 2 for get_byte(v.value_enc, 0)), 'UTF8') AS id
  FROM (SELECT value_enc FROM keys WHERE value_enc IS NOT NULL
        UNION ALL
        SELECT value_enc FROM key_history WHERE value_enc IS NOT NULL) AS v
 ORDER BY id
"""

# The ids of the audit keys that sealed any audit row or the chain's head (shared/audit/chain.py).
AUDIT_KEY_IDS = """
SELECT id FROM (SELECT mac_key AS id FROM audit_log UNION SELECT seal_key FROM audit_chain) AS k
 WHERE id IS NOT NULL ORDER BY id
"""

# A restore goes into a database without tables only: never over one in use.
TABLES = """
SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
   AND n.nspname !~ '^pg_(toast|temp)'
"""

# Sessions on this database other than ours: processes that would keep what they remember of the
# changes a restore discards (they must be stopped while a restore is marked).
OTHER_SESSIONS = """
SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()
"""


# --- access: the statements above, run, their rows read into types ---------------------------------
# Synchronous: ``dynconfig-backup`` is a command on psycopg2, with no event loop.


@dataclass(frozen=True)
class Facts:
    """What a manifest records of a database, as one transaction sees it."""

    schema_version: int
    revision: int
    pruned_through: int
    keys: int
    versions: int
    audit_rows: int
    audit_head: Head
    encryption_key_ids: list[str]
    audit_key_ids: list[str]


def read_facts(cur: psycopg2.extensions.cursor) -> Facts:
    """The :class:`Facts` of the database as ``cur``'s transaction sees it."""
    cur.execute(SCHEMA_VERSION)
    (schema,) = cur.fetchone()
    cur.execute(COUNTS)
    head, pruned, keys, versions, audit_rows = cur.fetchone()
    cur.execute(audit_sql.HEAD)
    audit_head = Head.from_db(cur.fetchone())
    cur.execute(ENCRYPTION_KEY_IDS)
    encryption_ids = [row[0] for row in cur.fetchall()]
    cur.execute(AUDIT_KEY_IDS)
    audit_ids = [row[0] for row in cur.fetchall()]
    return Facts(schema, head, pruned, keys, versions, audit_rows, audit_head, encryption_ids, audit_ids)


def export_snapshot(cur: psycopg2.extensions.cursor) -> str:
    """The id of this transaction's snapshot, for ``pg_dump --snapshot``."""
    cur.execute(EXPORT_SNAPSHOT)
    (snapshot,) = cur.fetchone()
    return str(snapshot)


def table_count(cur: psycopg2.extensions.cursor) -> int:
    """How many tables the database holds (a restore goes only into one without)."""
    cur.execute(TABLES)
    (tables,) = cur.fetchone()
    return int(tables)


def other_sessions(cur: psycopg2.extensions.cursor) -> int:
    """How many sessions other than ours are connected to this database."""
    cur.execute(OTHER_SESSIONS)
    (others,) = cur.fetchone()
    return int(others)


def skip_revisions(cur: psycopg2.extensions.cursor, skip: int) -> tuple[int, int]:
    """Move the change log's head ``skip`` revisions on (after a restore): (head before, head after)."""
    cur.execute(changelog_sql.SKIP_REVISIONS, {"skip": skip})
    before, after = cur.fetchone()
    return int(before), int(after)
