"""The ``keys`` table: the current state of every key."""

from shared.model import KEY_COLUMNS

SELECT = f"SELECT {KEY_COLUMNS} FROM keys WHERE key = %(key)s"

# The rows, each with the head revision in the same snapshot: the revision as of which it is current
# (the value cache's ``as_of``, api_server/cache.py).
SELECT_MANY_WITH_HEAD = f"SELECT {KEY_COLUMNS}, (SELECT head FROM relay_state) FROM keys WHERE key = ANY(%(keys)s)"

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

# Live keys in a namespace (or all). The keys of namespace ``ns`` are those that start with ``ns.`` or
# ``ns/``: in byte order ('.' 0x2E, '/' 0x2F, '0' 0x30) exactly the range [ns + '.', ns + '0'), which
# the index of migration 5 (COLLATE "C", byte order as Python compares strings) scans directly, so
# a page costs the same wherever the namespace sorts among all keys.
_LIVE_IN_NAMESPACE = """
 WHERE NOT deleted AND (expires_at IS NULL OR expires_at > %(now)s)
   AND (%(all)s OR (key COLLATE "C" >= %(low)s AND key COLLATE "C" < %(high)s))
"""

# One keyset page: the next %(limit)s live keys after %(after)s, in key order.
LIST_PAGE = f"""
SELECT key, acl_read, acl_write, creator FROM keys {_LIVE_IN_NAMESPACE}
   AND key COLLATE "C" > %(after)s
 ORDER BY key COLLATE "C"
 LIMIT %(limit)s
"""

COUNT_LIVE = f"SELECT count(*) FROM keys {_LIVE_IN_NAMESPACE}"

# The live keys counted by what decides who may read them: their ACL, their creator and their parent
# namespace (the namespace ACL that governs a key depends on nothing else). One row per group, with
# one of its keys, so a non-admin's total takes one access check per group, not per key.
COUNT_LIVE_BY_ACCESS = f"""
SELECT min(key COLLATE "C"), acl_read, acl_write, creator, count(*) FROM keys {_LIVE_IN_NAMESPACE}
 GROUP BY substring(key from '^(.*)[./][^./]*$'), acl_read, acl_write, creator
"""
