"""Re-encryption of stored values under the active key (SPEC §8); batches lock with SKIP LOCKED."""

from __future__ import annotations

import aiopg

KEYS_BATCH = """
SELECT key, value_enc FROM keys
 WHERE value_enc IS NOT NULL AND substring(value_enc from 2 for get_byte(value_enc, 0)) <> %(active)s
 ORDER BY key LIMIT %(limit)s FOR UPDATE SKIP LOCKED
"""

UPDATE_KEY = "UPDATE keys SET value_enc = %(blob)s WHERE key = %(key)s"

HISTORY_BATCH = """
SELECT key, version, value_enc FROM key_history
 WHERE value_enc IS NOT NULL AND substring(value_enc from 2 for get_byte(value_enc, 0)) <> %(active)s
 ORDER BY key, version LIMIT %(limit)s FOR UPDATE SKIP LOCKED
"""

UPDATE_HISTORY = "UPDATE key_history SET value_enc = %(blob)s WHERE key = %(key)s AND version = %(version)s"


# --- access: the statements above, run, their rows read into types ---------------------------------


async def lock_keys_to_reseal(cur: aiopg.Cursor, active: bytes, limit: int) -> list[tuple[str, bytes]]:
    """Lock up to ``limit`` current values not sealed by key id ``active`` (no one else's): (key, value)."""
    await cur.execute(KEYS_BATCH, {"active": active, "limit": limit})
    return [(key, bytes(blob)) for key, blob in await cur.fetchall()]


async def update_key(cur: aiopg.Cursor, key: str, blob: bytes) -> None:
    await cur.execute(UPDATE_KEY, {"blob": blob, "key": key})


async def lock_history_to_reseal(cur: aiopg.Cursor, active: bytes, limit: int) -> list[tuple[str, int, bytes]]:
    """The same for past versions: (key, version, value)."""
    await cur.execute(HISTORY_BATCH, {"active": active, "limit": limit})
    return [(key, version, bytes(blob)) for key, version, blob in await cur.fetchall()]


async def update_history(cur: aiopg.Cursor, key: str, version: int, blob: bytes) -> None:
    await cur.execute(UPDATE_HISTORY, {"blob": blob, "key": key, "version": version})
