"""The values the keyring check looks at (shared/keyring_check.py): a few, found without a scan.

The first two read only the head of each value (``%(head)s`` bytes: the key id that sealed it, which
Postgres reads without decompressing a large value whole); the third fetches the few values opened.
"""

# The keys changed most recently, newest change first, with the head of their current value. The
# outbox's revision index finds them by reading %(limit)s index entries, however many keys there are.
RECENT_HEADS = """
SELECT k.key, substring(k.value_enc from 1 for %(head)s)
  FROM (SELECT key, max(revision) AS revision
          FROM (SELECT key, revision FROM outbox WHERE revision IS NOT NULL
                 ORDER BY revision DESC LIMIT %(limit)s) AS newest
         GROUP BY key) AS recent
  JOIN keys k ON k.key = recent.key
 WHERE k.value_enc IS NOT NULL
 ORDER BY recent.revision DESC
"""

# When the outbox holds none (nothing changed within the change log's retention): the first stored
# values in key order (the index of migration 5).
SOME_HEADS = """
SELECT key, substring(value_enc from 1 for %(head)s) FROM keys
 WHERE value_enc IS NOT NULL ORDER BY key COLLATE "C" LIMIT %(limit)s
"""

VALUES = "SELECT key, value_enc FROM keys WHERE key = ANY(%(keys)s) AND value_enc IS NOT NULL"
