"""The values the keyring check looks at (shared/security/keyring_check.py): a few, found without a scan.

The first two read only the head of each value (``%(head)s`` bytes: the key id that sealed it, which
Postgres reads without decompressing a large value whole); the third fetches the few values opened.
"""

from __future__ import annotations

import aiopg

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


# --- access: the statements above, run, their rows read into types ---------------------------------


async def value_heads(cur: aiopg.Cursor, limit: int, head: int) -> list[tuple[str, bytes]]:
    """(key, the first ``head`` bytes of its value) for up to ``limit`` keys: the most recently
    changed, or, when the change log holds none, the first in key order."""
    await cur.execute(RECENT_HEADS, {"limit": limit, "head": head})
    rows = await cur.fetchall()
    if not rows:
        await cur.execute(SOME_HEADS, {"limit": limit, "head": head})
        rows = await cur.fetchall()
    return [(key, bytes(blob)) for key, blob in rows]


async def values(cur: aiopg.Cursor, keys: list[str]) -> list[tuple[str, bytes]]:
    """(key, its stored value) for those of ``keys`` that hold one."""
    await cur.execute(VALUES, {"keys": keys})
    return [(key, bytes(blob)) for key, blob in await cur.fetchall()]
