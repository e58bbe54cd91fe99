"""The change log: outbox rows in revision order (each write gives its rows their revision as it
commits, shared/sql/writes.py), joined with their values and current ACLs.

Used by the relay (publishing), the notifier's backfill and replay, the poll fallback and snapshots,
so every path reads events the same way.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from datetime import datetime
from typing import Any

import aiopg

from shared.changes.events import ChangeEvent, ResumePoint, key_ranges, stored_audience
from shared.changes.kinds import EventKind
from shared.security.acl import Acl
from shared.timeutil import utcnow
from shared.validation import MAX_TXN_OPS

# Columns of an event row, decoded by _event (below).
_EVENT_COLUMNS = """
o.revision, o.key, o.version, o.event, o.at, h.value_enc, k.acl_read, k.acl_write, k.creator,
h.read_entries, h.read_owner, o.txn
"""


HEAD = "SELECT head, pruned_through FROM relay_state"

# Where a client resuming after revision %(since)s stands: the head, the newest revision pruned, and
# whether %(since)s is a revision of this log. Revisions have no gaps, except the one a restore leaves
# (dynconfig_admin/backup.py moves the head far past the backup's): a revision in it was handed out by the
# database the backup came from, after the backup, and names a state this log never had. The revision
# the log resumed from after a restore is the head clients were given until the next change, so it
# counts too: the log holds the revision after it.
RESUME_POINT = """
SELECT head, pruned_through,
       %(since)s IN (head, pruned_through)
       OR EXISTS (SELECT 1 FROM outbox WHERE revision IN (%(since)s, %(since)s + 1))
  FROM relay_state
"""

# After a restore (dynconfig_admin/backup.py): new changes take revisions after %(skip)s more, so none is
# ever handed out twice, and a client resuming from one of the skipped revisions starts over.
SKIP_REVISIONS = "UPDATE relay_state SET head = head + %(skip)s RETURNING head - %(skip)s, head"

# --- relay ---------------------------------------------------------------------------------------

# Wakes notifiers that are catching up from Postgres (while Redis is down).
REVISIONS_CHANNEL = "dynconfig_revisions"
NOTIFY_REVISIONS = f"SELECT pg_notify('{REVISIONS_CHANNEL}', %(head)s::text)"

# One bounded batch of the oldest relayed rows past retention, in revision order (so everything up to
# pruned_through is gone); returns how many went. Called until it removes fewer than %(limit)s.
PRUNE = """
WITH gone AS (
    DELETE FROM outbox WHERE id IN (
        SELECT id FROM outbox WHERE revision IS NOT NULL AND at < %(before)s ORDER BY revision LIMIT %(limit)s
    ) RETURNING revision
), mark AS (
    UPDATE relay_state SET pruned_through = GREATEST(pruned_through, (SELECT max(revision) FROM gone))
     WHERE EXISTS (SELECT 1 FROM gone)
)
SELECT count(*) FROM gone
"""

# --- change notices (followed by every api_server: api_server/fence.py) ---------------------------

# Every write statement (shared/sql/writes.py) tells, at COMMIT, which keys it changed at which
# positions of the log: "<position> <key> <position> <key> ..." (keys hold no spaces; a position is
# the change's revision, or for a change in a transaction one at or before the transaction's).
# Notices are delivered in commit order, which is log order, with no gap.
CHANGES_CHANNEL = "dynconfig_changes"
#: Changes per notice: 25 of at most 256 + 21 bytes stay well under Postgres's 8,000-byte payload limit.
CHANGES_PER_NOTICE = 25

# A WITH query of the write statement, over its changes ``c`` (columns key, position, n); the notices
# in order (a follower takes one that skips positions for a gap, and reads the outbox).
NOTIFY_CHANGES = f"""
SELECT pg_notify('{CHANGES_CHANNEL}', chunk.changes)
  FROM (SELECT min(n) AS first, string_agg(position || ' ' || key, ' ' ORDER BY n) AS changes
          FROM c GROUP BY (n - 1) / {CHANGES_PER_NOTICE} ORDER BY first) AS chunk
"""

# What a follower missed: the head, and the key of every revision after %(after)s up to it (at most
# %(limit)s). A row short of head - after means the log was pruned past %(after)s.
CHANGES_AFTER = """
SELECT r.head, o.revision, o.key
  FROM relay_state r
  LEFT JOIN LATERAL (
        SELECT revision, key FROM outbox WHERE revision > %(after)s AND revision <= r.head
         ORDER BY revision LIMIT %(limit)s
       ) o ON true
"""

# --- readers -------------------------------------------------------------------------------------

# Events after a revision, optionally limited to keys matching LIKE patterns (``{}`` = all keys).
EVENTS_AFTER = f"""
SELECT {_EVENT_COLUMNS}
  FROM outbox o
  JOIN key_history h ON h.key = o.key AND h.version = o.version
  JOIN keys k ON k.key = o.key
 WHERE o.revision > %(after)s AND o.revision <= %(through)s
   AND (%(all)s OR o.key LIKE ANY(%(patterns)s))
 ORDER BY o.revision
 LIMIT %(limit)s
"""

# Snapshot at revision %(through)s: per matching key, its newest version relayed by then, if live.
# A snapshot at revision %(through)s: for every live key in the ranges [low, high) (byte order, on the
# index of migration 5), the newest version relayed by then; leaving out a key whose deadline has
# passed even if the expiry worker has not got to it yet. First its index, (revision, key) in revision
# order; then its events a page of keys at a time (snapshot_pages, below).
_SNAPSHOT_LATEST = f"""
 CROSS JOIN LATERAL (
        SELECT revision, version, event, at, value_enc, read_entries, read_owner FROM key_history
         WHERE key = k.key AND revision IS NOT NULL AND revision <= %(through)s
         ORDER BY version DESC LIMIT 1
       ) h
 WHERE k.version > 0 AND h.event = '{EventKind.UPDATE}'
   AND (k.expires_at IS NULL OR k.expires_at > %(now)s OR k.version <> h.version)
"""

SNAPSHOT_INDEX = f"""
SELECT h.revision, k.key
  FROM unnest(%(lows)s::text[], %(highs)s::text[]) AS r(low, high)
  JOIN keys k ON k.key COLLATE "C" >= r.low AND k.key COLLATE "C" < r.high
{_SNAPSHOT_LATEST}
 ORDER BY h.revision
"""

SNAPSHOT_PAGE = f"""
SELECT h.revision, k.key, h.version, h.event, h.at, h.value_enc, k.acl_read, k.acl_write, k.creator,
       h.read_entries, h.read_owner
  FROM keys k
{_SNAPSHOT_LATEST}
   AND k.key = ANY(%(keys)s)
 ORDER BY h.revision
"""


# --- access: the statements above, run, their rows read into types ---------------------------------


def _event(row: Sequence[Any]) -> ChangeEvent:
    """An event row (``_EVENT_COLUMNS``, or ``SNAPSHOT_PAGE``'s in the same order, without ``txn``)."""
    revision, key, version, event, at, value_enc, acl_read, acl_write, creator, read_entries, read_owner = row[:11]
    blob = bytes(value_enc) if value_enc is not None and event == EventKind.UPDATE else None
    acl = Acl.from_columns(acl_read, acl_write)
    txn = row[11] if len(row) > 11 else None
    audience = stored_audience(read_entries, read_owner)
    return ChangeEvent(revision, key, version, event, at, blob, acl, creator, audience, txn)


async def head(cur: aiopg.Cursor) -> tuple[int, int]:
    """(last assigned revision, newest revision pruned from the log)."""
    await cur.execute(HEAD)
    row = await cur.fetchone()
    return (int(row[0]), int(row[1])) if row else (0, 0)


async def resume_point(cur: aiopg.Cursor, since: int) -> ResumePoint:
    """Where a client resuming after revision ``since`` stands: must it start over?"""
    await cur.execute(RESUME_POINT, {"since": since})
    row = await cur.fetchone()
    if row is None:
        return ResumePoint(0, 0, since == 0, since)
    return ResumePoint(int(row[0]), int(row[1]), bool(row[2]) and since <= int(row[0]), since)


async def events_after(
    cur: aiopg.Cursor, after: int, *, through: int | None = None, patterns: list[str] | None = None, limit: int = 500
) -> list[ChangeEvent]:
    """Relayed events with ``after < position <= through`` for keys matching LIKE ``patterns``, about
    ``limit`` of them: never a part of a transaction (the rest of one the limit cut comes too), so
    every reader of the log gets whole transactions. ``after`` and ``through`` are revisions clients
    have seen or the head, which never fall inside a transaction."""
    query = {
        "after": after,
        "through": through if through is not None else 2**62,
        "all": patterns is None,
        "patterns": patterns or [],
        "limit": limit,
    }
    await cur.execute(EVENTS_AFTER, query)
    events = [_event(row) for row in await cur.fetchall()]
    if len(events) == limit and (last := events[-1]).txn is not None and last.txn > last.revision:
        await cur.execute(EVENTS_AFTER, {**query, "after": last.revision, "through": last.txn, "limit": MAX_TXN_OPS})
        events.extend(_event(row) for row in await cur.fetchall())
    return events


async def snapshot_pages(
    pool: aiopg.Pool, patterns: Iterable[str], through: int, page: int = 1000
) -> AsyncIterator[list[ChangeEvent]]:
    """The state at revision ``through``: the newest version (relayed by then) of every live key
    matching the watch ``patterns``, as ``update`` events in revision order, a page at a time.

    One query reads the snapshot's index, (revision, key), through the key ranges of the patterns;
    then each page's events are read on their own, so neither the memory nor a pooled connection is
    held for the values of the whole snapshot while the caller sends them. Revisions up to
    ``through`` never change, so the pages need no shared transaction; a key written or deleted
    meanwhile is still served as it was at ``through`` (its history row), one that passed its deadline
    meanwhile is left out."""
    lows, highs = key_ranges(patterns)
    now = utcnow()
    async with pool.acquire() as conn, conn.cursor() as cur:
        await cur.execute(SNAPSHOT_INDEX, {"lows": lows, "highs": highs, "through": through, "now": now})
        index = await cur.fetchall()
    for start in range(0, len(index), page):
        keys = [key for _, key in index[start : start + page]]
        async with pool.acquire() as conn, conn.cursor() as cur:
            await cur.execute(SNAPSHOT_PAGE, {"keys": keys, "through": through, "now": now})
            rows = await cur.fetchall()
        yield [_event(row) for row in rows]


async def notify_revisions(cur: aiopg.Cursor, head: int) -> None:
    """Wake the notifiers catching up from Postgres: the log holds revisions up to ``head``."""
    await cur.execute(NOTIFY_REVISIONS, {"head": head})


async def prune(cur: aiopg.Cursor, before: datetime, limit: int) -> int:
    """Remove up to ``limit`` of the oldest relayed rows older than ``before``; how many went."""
    await cur.execute(PRUNE, {"before": before, "limit": limit})
    (removed,) = await cur.fetchone()
    return int(removed)


async def changes_after(cur: aiopg.Cursor, after: int, limit: int) -> tuple[int, list[tuple[int, str]]]:
    """The head, and the first ``limit`` changes after revision ``after`` up to it: (revision, key)."""
    await cur.execute(CHANGES_AFTER, {"after": after, "limit": limit})
    rows = await cur.fetchall()
    return int(rows[0][0]), [(revision, key) for _, revision, key in rows if revision is not None]
