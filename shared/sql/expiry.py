"""Expiry: keys past their deadline, claimed with SKIP LOCKED so replicas share the work."""

from __future__ import annotations

from datetime import datetime

import aiopg

from shared.changes.state import KeyState
from shared.sql.keys import KEY_COLUMNS

# Due keys by Postgres's clock (the clock every writer uses), and that clock, for the expiry's time.
DUE = f"""
SELECT {KEY_COLUMNS}, statement_timestamp() FROM keys
 WHERE NOT deleted AND expires_at <= statement_timestamp()
 ORDER BY expires_at
 LIMIT %(limit)s
 FOR UPDATE SKIP LOCKED
"""

# The next deadline, and how far away it is by Postgres's clock (negative: due already).
NEXT_DEADLINE = """
SELECT min(expires_at), extract(epoch FROM min(expires_at) - clock_timestamp())
  FROM keys WHERE NOT deleted AND expires_at IS NOT NULL
"""

# Sent by a write that sets a deadline, so a sleeping worker re-reads the next one.
CHANNEL = "dynconfig_ttl"
NOTIFY = f"SELECT pg_notify('{CHANNEL}', '')"


# --- access: the statements above, run, their rows read into types ---------------------------------


async def lock_due(cur: aiopg.Cursor, limit: int) -> tuple[list[KeyState], datetime | None]:
    """Lock up to ``limit`` due keys no one else holds, oldest deadline first, and Postgres's clock
    (None when none is due)."""
    await cur.execute(DUE, {"limit": limit})
    rows = await cur.fetchall()
    return [KeyState.from_row(row[:-1]) for row in rows], (rows[0][-1] if rows else None)


async def seconds_to_next_deadline(cur: aiopg.Cursor) -> float | None:
    """How long until the next deadline by Postgres's clock (≤ 0: one is due), None without one."""
    await cur.execute(NEXT_DEADLINE)
    row = await cur.fetchone()
    return None if row is None or row[1] is None else float(row[1])
