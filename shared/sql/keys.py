"""The ``keys`` table: the current state of every key."""

from shared.model import KEY_COLUMNS

SELECT = f"SELECT {KEY_COLUMNS} FROM keys WHERE key = %(key)s"

SELECT_MANY = f"SELECT {KEY_COLUMNS} FROM keys WHERE key = ANY(%(keys)s)"

# A batch's existing rows, locked in key order (every batch locks in the same order).
LOCK_MANY = f"SELECT {KEY_COLUMNS} FROM keys WHERE key = ANY(%(keys)s) ORDER BY key FOR UPDATE"

# The same without waiting: rows another transaction holds are left out (see EXISTING).
LOCK_MANY_FREE = LOCK_MANY + " SKIP LOCKED"

EXISTING = "SELECT key FROM keys WHERE key = ANY(%(keys)s)"

# Placeholders (version 0) a batch inserted for creates it then refused.
DROP_PLACEHOLDERS = "DELETE FROM keys WHERE key = ANY(%(keys)s) AND version = 0"

# Locks the rows of new keys a batch creates, inserting deleted placeholders (in key order); a row a
# concurrent writer inserted first is locked as it is. Read them with LOCK_MANY afterwards.
CLAIM_MANY = """
INSERT INTO keys (key, version, creator, deleted, created_at, last_modified)
SELECT k, 0, a, true, clock_timestamp(), clock_timestamp()
  FROM unnest(%(keys)s::text[], %(actors)s::text[]) AS u(k, a) ORDER BY k
ON CONFLICT (key) DO UPDATE SET version = keys.version WHERE false
"""

# Live keys in a namespace (or all); %(pattern_dot)s etc. are LIKE patterns. Byte order (COLLATE "C",
# as Python compares strings) whatever the database's collation, on the index of migration 5.
_LIVE_IN_NAMESPACE = """
 WHERE NOT deleted AND (expires_at IS NULL OR expires_at > %(now)s)
   AND (%(all)s OR key COLLATE "C" LIKE %(pattern_dot)s OR key COLLATE "C" LIKE %(pattern_slash)s)
"""

# One keyset page: the next %(limit)s live keys after %(after)s, in key order.
LIST_PAGE = f"""
SELECT key, acl_read, acl_write, creator FROM keys {_LIVE_IN_NAMESPACE}
   AND key COLLATE "C" > %(after)s
 ORDER BY key COLLATE "C"
 LIMIT %(limit)s
"""

COUNT_LIVE = f"SELECT count(*) FROM keys {_LIVE_IN_NAMESPACE}"
