"""What ``dynconfig-backup`` (api_server/backup.py) reads: the facts a backup's manifest records, read
in the snapshot the dump is taken from, and read again from the restored database to compare."""

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

# The ids of the encryption keys that sealed any stored value, current or past (shared/crypto.py:
# a blob starts with the length of its key id, then the id).
ENCRYPTION_KEY_IDS = """
SELECT DISTINCT convert_from(substring(v.value_enc from 2 for get_byte(v.value_enc, 0)), 'UTF8') AS id
  FROM (SELECT value_enc FROM keys WHERE value_enc IS NOT NULL
        UNION ALL
        SELECT value_enc FROM key_history WHERE value_enc IS NOT NULL) AS v
 ORDER BY id
"""

# The ids of the audit keys that sealed any audit row or the chain's head (shared/auditchain.py).
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
