"""The ``key_history`` table: every version of every key."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import aiopg

from shared.changes.events import stored_audience
from shared.changes.kinds import EventKind
from shared.security.acl import Audience

PAGE = """
SELECT version, event, value_enc, actor, at, read_entries, read_owner FROM key_history
 WHERE key = %(key)s AND version < %(before)s
 ORDER BY version DESC
 LIMIT %(limit)s
"""

#: One version: what a rollback restores, and who could read it then.
ONE = """
SELECT event, value_enc, read_entries, read_owner FROM key_history WHERE key = %(key)s AND version = %(version)s
"""

#: A key's current version and this many past versions are kept whatever their age (SPEC §8).
KEEP_PAST = 10

#: Retention (api_server/retention/history.py): the next ``limit`` versions older than ``before`` in (at, key,
#: version) order after the cursor ``after_*`` (all NULL: from the oldest), of which those that are
#: neither among their key's current and ``KEEP_PAST`` newest past versions (versions are numbered
#: 1, 2, 3… per key, so that is ``version < current - KEEP_PAST``) nor still in the change log (its
#: outbox row not yet pruned: replay and polling join it to its history row) are deleted. Returns how
#: many went, how many were looked at, and the cursor for the next batch. Walks an index on
#: key_history (at) (migration 10) a batch at a time; without one each batch is a sequential scan.
#: Versions are never written with an old time, so the rows it looks at are no writer's.
PRUNE = f"""
WITH scanned AS (
    SELECT key, version, at, revision FROM key_history
     WHERE at < %(before)s
       AND (%(after_at)s::timestamptz IS NULL OR (at, key, version) > (%(after_at)s, %(after_key)s, %(after_version)s))
     ORDER BY at, key, version
     LIMIT %(limit)s
), gone AS (
    DELETE FROM key_history h
     USING scanned s, keys k
     WHERE h.key = s.key AND h.version = s.version AND k.key = s.key
       AND s.version < k.version - {KEEP_PAST}
       AND (s.revision IS NULL OR s.revision <= (SELECT pruned_through FROM relay_state))
    RETURNING 1
), last AS (
    SELECT at, key, version FROM scanned ORDER BY at DESC, key DESC, version DESC LIMIT 1
)
SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM scanned), last.at, last.key, last.version
  FROM (SELECT 1) AS one LEFT JOIN last ON true
"""


# --- access: the statements above, run, their rows read into types ---------------------------------


@dataclass(frozen=True)
class HistoryRow:
    """One version of a key as history keeps it."""

    version: int
    event: EventKind
    value_enc: bytes | None
    actor: str
    at: datetime
    #: Who could read it when it was written (None: not recorded then).
    readers: Audience | None


async def history_page(cur: aiopg.Cursor, key: str, before: int, limit: int) -> list[HistoryRow]:
    """The versions of ``key`` below ``before``, newest first, at most ``limit``."""
    await cur.execute(PAGE, {"key": key, "before": before, "limit": limit})
    return [
        HistoryRow(
            version,
            EventKind(event),
            bytes(blob) if blob is not None else None,
            actor,
            at,
            stored_audience(read_entries, read_owner),
        )
        for version, event, blob, actor, at, read_entries, read_owner in await cur.fetchall()
    ]


@dataclass(frozen=True)
class PastVersion:
    """What a rollback needs of one version: its kind, its value and who could read it then."""

    event: EventKind
    value_enc: bytes | None
    readers: Audience | None


async def one_version(cur: aiopg.Cursor, key: str, version: int) -> PastVersion | None:
    """``version`` of ``key``, or None when it has no such version."""
    await cur.execute(ONE, {"key": key, "version": version})
    row = await cur.fetchone()
    if row is None:
        return None
    event, blob, read_entries, read_owner = row
    return PastVersion(
        EventKind(event), bytes(blob) if blob is not None else None, stored_audience(read_entries, read_owner)
    )


#: Where a pass of :func:`prune_batch` stands: the (at, key, version) of the last version looked at.
PruneCursor = tuple[datetime, str, int]


async def prune_batch(
    cur: aiopg.Cursor, before: datetime, limit: int, after: PruneCursor | None
) -> tuple[int, int, PruneCursor | None]:
    """One batch of :data:`PRUNE`: the next ``limit`` versions older than ``before`` after ``after``
    (None: from the oldest). (How many went, how many were looked at, the cursor for the next batch.)"""
    after_at, after_key, after_version = after if after is not None else (None, None, None)
    params = {
        "before": before,
        "limit": limit,
        "after_at": after_at,
        "after_key": after_key,
        "after_version": after_version,
    }
    await cur.execute(PRUNE, params)
    gone, scanned, at, key, version = await cur.fetchone()
    return int(gone), int(scanned), (at, key, version) if at is not None else None
