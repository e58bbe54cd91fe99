"""The ``keys`` table: the current state of every key."""

from shared.model import KEY_COLUMNS

SELECT = f"SELECT {KEY_COLUMNS} FROM keys WHERE key = %(key)s"

SELECT_MANY = f"SELECT {KEY_COLUMNS} FROM keys WHERE key = ANY(%(keys)s)"

SELECT_FOR_UPDATE = SELECT + " FOR UPDATE"

# Locks the key's row, inserting a deleted placeholder first if it never existed, so two concurrent
# creates of one key serialise on it. (DO UPDATE ... WHERE false locks the existing row, writes nothing.)
CLAIM = """
INSERT INTO keys (key, version, creator, deleted, created_at, last_modified)
VALUES (%(key)s, 0, %(actor)s, true, clock_timestamp(), clock_timestamp())
ON CONFLICT (key) DO UPDATE SET version = keys.version WHERE false
"""

UPSERT = f"""
UPDATE keys SET version = %(version)s, value_enc = %(value_enc)s, ttl = %(ttl)s, expires_at = %(expires_at)s,
       acl_read = %(acl_read)s, acl_write = %(acl_write)s, creator = %(creator)s, deleted = %(deleted)s,
       created_at = %(created_at)s, last_modified = %(now)s
 WHERE key = %(key)s
RETURNING {KEY_COLUMNS}
"""

# Live keys in a namespace (or all), after a cursor, in key order. %(pattern_dot)s etc. are LIKE patterns.
LIST_LIVE = """
SELECT key, acl_read, acl_write, creator FROM keys
 WHERE NOT deleted AND (expires_at IS NULL OR expires_at > %(now)s)
   AND (%(all)s OR key LIKE %(pattern_dot)s OR key LIKE %(pattern_slash)s)
   AND key > %(after)s
 ORDER BY key
"""
