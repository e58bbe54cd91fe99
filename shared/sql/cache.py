"""``cache_dirty``: Postgres's record of keys whose Redis entry a writer could not make unclean before
committing (see api_server/cache.py), and the channel that tells every api_server at once. The table
keeps its schema name; in the code such a key is *unclean*, the one word (README's glossary)."""

from __future__ import annotations

from collections.abc import Sequence

import aiopg

CHANNEL = "dynconfig_cache"

# In the writer's transaction: record the key and tell every listener ("<version>:<key>") at commit.
RECORD_UNCLEAN = f"""
INSERT INTO cache_dirty (key, version) VALUES (%(key)s, %(version)s)
ON CONFLICT (key) DO UPDATE SET version = GREATEST(cache_dirty.version, EXCLUDED.version), at = now();
SELECT pg_notify('{CHANNEL}', %(notice)s)
"""

SELECT_UNCLEAN = "SELECT key, version FROM cache_dirty ORDER BY at LIMIT 1000"

# Only the version we made unclean: a newer record stays for the next scan.
DELETE_CLEANED = "DELETE FROM cache_dirty WHERE key = %(key)s AND version <= %(version)s"


# --- access: the statements above, run, their rows read into types ---------------------------------


async def record_unclean(cur: aiopg.Cursor, versions: Sequence[tuple[str, int]]) -> None:
    """In a writer's transaction: record each (key, version) whose entry Redis could not make unclean,
    and tell every api_server at COMMIT."""
    for key, version in versions:
        await cur.execute(RECORD_UNCLEAN, {"key": key, "version": version, "notice": f"{version}:{key}"})


async def recorded_unclean(cur: aiopg.Cursor) -> list[tuple[str, int]]:
    """The oldest recorded (key, version) pairs, at most 1000."""
    await cur.execute(SELECT_UNCLEAN)
    return [(key, int(version)) for key, version in await cur.fetchall()]


async def delete_cleaned(cur: aiopg.Cursor, versions: Sequence[tuple[str, int]]) -> None:
    """Drop the records of (key, version) pairs made unclean in Redis (a newer record stays)."""
    for key, version in versions:
        await cur.execute(DELETE_CLEANED, {"key": key, "version": version})
