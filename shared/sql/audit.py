"""The ``audit_log`` table and the audit chain's head (``audit_chain``, one row)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

import aiopg

from shared.audit.chain import AuditChain, Entry, Head, Row

#: The sealed columns, in the order shared.audit.chain.Entry and the statements below take them.
SEALED = "at, actor, action, key, version, outcome, request_id"

#: Sealed too, when set (migration 9): ``detail`` of the chain's own records (adoptions, key
#: switches) and, on the first row of each batch, the head it was appended after (``link_*``).
LINKED = "detail, link_seq, link_seal"

#: Moves the chain's head past the rows just sealed and seals it (shared.audit.chain.seal_head); ends
#: every statement that appends sealed rows.
ADVANCE = """
UPDATE audit_chain
   SET seq = %(head_seq)s, mac = %(head_mac)s, sealed_seq = %(head_seq)s, sealed_mac = %(head_mac)s,
       seal = %(seal)s, seal_key = %(seal_key)s, adopted_through = %(adopted_through)s
"""

#: A batch in one statement: one array per column, rows in order, each sealed by the audit chain
#: (``seq``, ``mac``, ``mac_key``, ``link_*``, from shared.audit.chain.AuditChain.columns), and the
#: chain's head moved past them. The head must have been locked in this transaction (``HEAD_FOR_UPDATE``).
INSERT_MANY = f"""
WITH rows AS (
    INSERT INTO audit_log ({SEALED}, {LINKED}, seq, mac, mac_key)
    SELECT * FROM unnest(%(at)s::timestamptz[], %(actor)s::text[], %(action)s::text[], %(key)s::text[],
                         %(version)s::bigint[], %(outcome)s::text[], %(request_id)s::text[],
                         %(detail)s::text[], %(link_seq)s::bigint[], %(link_seal)s::bytea[],
                         %(seq)s::bigint[], %(mac)s::bytea[], %(mac_key)s::text[])
)
{ADVANCE}
"""

_HEAD = "seq, mac, sealed_seq, sealed_mac, seal, seal_key, adopted_through"

#: The chain's head (shared.audit.chain.Head), locked until COMMIT: appenders queue here, so seq order
#: is commit order.
HEAD_FOR_UPDATE = f"SELECT {_HEAD} FROM audit_chain FOR UPDATE"

#: The head as it is now, and the last id written before the chain began (migration 8).
HEAD = f"SELECT {_HEAD}, legacy_through FROM audit_chain"

#: A page of sealed rows in chain order, as shared.audit.chain.Row.from_db reads them.
SEALED_PAGE = f"""
SELECT id, seq, {SEALED}, {LINKED}, mac, mac_key FROM audit_log
 WHERE seq > %(after)s AND (%(through)s::bigint IS NULL OR seq <= %(through)s)
 ORDER BY seq
 LIMIT %(limit)s
"""

#: The first sealed row past the head, if any: none can be there honestly (a row and the head that
#: names it commit together), and the walk, which stops at the head, would never look at it.
SEALED_BEYOND_HEAD = f"""
SELECT id, seq, {SEALED}, {LINKED}, mac, mac_key FROM audit_log
 WHERE seq > (SELECT seq FROM audit_chain)
 ORDER BY seq
 LIMIT 1
"""

#: A page of rows without a seal, in id order (ids after ``after``, up to ``through`` when given), as
#: shared.audit.adopt digests them.
UNSEALED_PAGE = f"""
SELECT id, {SEALED} FROM audit_log
 WHERE seq IS NULL AND id > %(after)s AND (%(through)s::bigint IS NULL OR id <= %(through)s)
 ORDER BY id
 LIMIT %(limit)s
"""

LAST_UNSEALED_ID = "SELECT max(id) FROM audit_log WHERE seq IS NULL"

#: Every version of a key (``key_history``) that no audit row records as written (same key and
#: version, outcome ok), in a fixed order, with its time; only those written at ``since`` or later
#: when it is given (after a prune: shared/audit/prune.py). One statement: one snapshot, and a change
#: commits its version and its audit row together, so a write in flight is never half seen.
UNAUDITED_VERSIONS = """
SELECT h.key, h.version, h.at FROM key_history h
 WHERE (%(since)s::timestamptz IS NULL OR h.at >= %(since)s)
   AND NOT EXISTS (
       SELECT 1 FROM audit_log a WHERE a.key = h.key AND a.version = h.version AND a.outcome = 'ok')
 ORDER BY h.key COLLATE "C", h.version
"""

# Newest first by time, then id; each filter is skipped when its parameter is NULL. The cursor is the
# (at, id) of the last record of the previous page.
PAGE = """
SELECT id, at, actor, action, key, version, outcome, request_id, seq IS NOT NULL FROM audit_log
 WHERE (%(key)s::text IS NULL OR key = %(key)s)
   AND (%(actor)s::text IS NULL OR actor = %(actor)s)
   AND (%(action)s::text IS NULL OR action = %(action)s)
   AND (%(outcome)s::text IS NULL OR outcome = %(outcome)s)
   AND (%(since)s::timestamptz IS NULL OR at >= %(since)s)
   AND (%(before_at)s::timestamptz IS NULL OR (at, id) < (%(before_at)s, %(before_id)s::bigint))
 ORDER BY at DESC, id DESC
 LIMIT %(limit)s
"""

# --- retention (shared/audit/prune.py, api_server/retention/history.py) -----------------------------------------

#: The newest few of the chain's own records of one kind (``actor`` system:audit, so the index on
#: (actor, at, id) finds them among millions), newest first; the caller takes the highest seq.
LATEST_RECORDS = f"""
SELECT id, seq, {SEALED}, {LINKED}, mac, mac_key FROM audit_log
 WHERE actor = %(actor)s AND action = %(action)s AND seq IS NOT NULL
 ORDER BY at DESC, id DESC
 LIMIT %(limit)s
"""

#: The oldest of the chain's own records of one kind (the genesis, for ``audit.adopt``).
FIRST_RECORD = f"""
SELECT id, seq, {SEALED}, {LINKED}, mac, mac_key FROM audit_log
 WHERE actor = %(actor)s AND action = %(action)s AND seq IS NOT NULL
 ORDER BY at, id
 LIMIT 1
"""

#: Deleting pruned rows (seq up to a prune record's anchor) waits for no verification in progress: each
#: batch takes this lock exclusively (``pg_try_advisory_xact_lock``, never waiting), ``verify`` holds it
#: shared for its whole walk (on a session, so a long walk never sits idle in a transaction).
PRUNE_DELETE_LOCK = 0x44594E56  # "DYNV"
TRY_DELETE_LOCK = f"SELECT pg_try_advisory_xact_lock({PRUNE_DELETE_LOCK})"
HOLD_AGAINST_DELETES = f"SELECT pg_advisory_lock_shared({PRUNE_DELETE_LOCK})"
RELEASE_AGAINST_DELETES = f"SELECT pg_advisory_unlock_shared({PRUNE_DELETE_LOCK})"

#: One batch of the oldest sealed rows a prune record removed (seq up to ``through``): a short
#: transaction on the unique index on seq, touching no row a writer touches; how many went.
DELETE_PRUNED = """
WITH gone AS (
    DELETE FROM audit_log WHERE id IN (
        SELECT id FROM audit_log WHERE seq <= %(through)s ORDER BY seq LIMIT %(limit)s
    ) RETURNING 1
)
SELECT count(*) FROM gone
"""


# --- access: the statements above, run, their rows read into types ---------------------------------


async def lock_head(cur: aiopg.Cursor) -> Head:
    """Lock the chain's head for this transaction and return it (rows appended now follow it)."""
    await cur.execute(HEAD_FOR_UPDATE)
    return Head.from_db(await cur.fetchone())


async def read_head(cur: aiopg.Cursor) -> tuple[Head, int]:
    """The head as it is now (not locked), and the last id written before the chain began."""
    await cur.execute(HEAD)
    row = await cur.fetchone()
    return Head.from_db(row), int(row[7])


async def append(
    cur: aiopg.Cursor, chain: AuditChain, entries: Sequence[Entry], *, adopted_through: int | None = None
) -> Head:
    """Seal ``entries`` into ``chain`` and write them after the head, which this locks (inside the
    caller's transaction, which holds it until it ends); return the head as it was."""
    head = await lock_head(cur)
    params: dict[str, Any] = {f.name: [getattr(e, f.name) for e in entries] for f in fields(Entry)}
    params.update(chain.columns(head, entries, adopted_through=adopted_through))
    await cur.execute(INSERT_MANY, params)
    return head


async def sealed_page(cur: aiopg.Cursor, after: int | None, through: int | None, limit: int) -> list[Row]:
    """Up to ``limit`` sealed rows with ``after`` < seq ≤ ``through`` (None: no bound), in seq order."""
    await cur.execute(SEALED_PAGE, {"after": after, "through": through, "limit": limit})
    return [Row.from_db(r) for r in await cur.fetchall()]


async def sealed_beyond_head(cur: aiopg.Cursor) -> Row | None:
    """The first sealed row past the head, if any (none can be there honestly)."""
    await cur.execute(SEALED_BEYOND_HEAD)
    found = await cur.fetchone()
    return None if found is None else Row.from_db(found)


async def unsealed_page(cur: aiopg.Cursor, after: int, through: int | None, limit: int) -> list[tuple[int, Entry]]:
    """Up to ``limit`` rows without a seal with ``after`` < id ≤ ``through`` (None: no bound), in id
    order: (id, sealed fields)."""
    await cur.execute(UNSEALED_PAGE, {"after": after, "through": through, "limit": limit})
    return [(r[0], Entry(*r[1:])) for r in await cur.fetchall()]


async def last_unsealed_id(cur: aiopg.Cursor) -> int | None:
    """The highest id of a row without a seal, or None."""
    await cur.execute(LAST_UNSEALED_ID)
    (last,) = await cur.fetchone()
    return None if last is None else int(last)


async def unaudited_versions(cur: aiopg.Cursor, since: datetime | None) -> list[tuple[str, int, datetime]]:
    """Every version of a key (written at ``since`` or later, when given) that no audit row records as
    written: (key, version, at), in key and version order."""
    await cur.execute(UNAUDITED_VERSIONS, {"since": since})
    return [(key, int(version), at) for key, version, at in await cur.fetchall()]


@dataclass(frozen=True)
class Record:
    """One audit row as ``GET /audit`` lists it; ``sealed``: it has a seal (a seq)."""

    id: int
    entry: Entry
    sealed: bool


async def records_page(
    cur: aiopg.Cursor,
    *,
    key: str | None,
    actor: str | None,
    since: datetime | None,
    before: tuple[datetime, int] | None,
    limit: int,
    action: str | None = None,
    outcome: str | None = None,
) -> list[Record]:
    """Up to ``limit`` records matching the filters (None: any), newest first, older than ``before``
    (the (at, id) of the last record of the previous page)."""
    before_at, before_id = before if before is not None else (None, None)
    params = {
        "key": key,
        "actor": actor,
        "action": action,
        "outcome": outcome,
        "since": since,
        "before_at": before_at,
        "before_id": before_id,
        "limit": limit,
    }
    await cur.execute(PAGE, params)
    return [
        Record(id_, Entry(at, actor, action, key, version, outcome, request_id), bool(sealed))
        for id_, at, actor, action, key, version, outcome, request_id, sealed in await cur.fetchall()
    ]


async def latest_records(cur: aiopg.Cursor, actor: str, action: str, limit: int) -> list[Row]:
    """The newest ``limit`` sealed records of ``actor`` and ``action`` by time, newest first."""
    await cur.execute(LATEST_RECORDS, {"actor": actor, "action": action, "limit": limit})
    return [Row.from_db(r) for r in await cur.fetchall()]


async def first_record(cur: aiopg.Cursor, actor: str, action: str) -> Row | None:
    """The oldest sealed record of ``actor`` and ``action``, or None."""
    await cur.execute(FIRST_RECORD, {"actor": actor, "action": action})
    first = await cur.fetchone()
    return None if first is None else Row.from_db(first)


async def try_delete_lock(cur: aiopg.Cursor) -> bool:
    """Take the lock against verification for this transaction, without waiting; False if held."""
    await cur.execute(TRY_DELETE_LOCK)
    (free,) = await cur.fetchone()
    return bool(free)


async def hold_against_deletes(cur: aiopg.Cursor) -> None:
    """Hold pruned rows against deletion (shared, on this session) until :func:`release_against_deletes`."""
    await cur.execute(HOLD_AGAINST_DELETES)


async def release_against_deletes(cur: aiopg.Cursor) -> None:
    await cur.execute(RELEASE_AGAINST_DELETES)


async def delete_pruned(cur: aiopg.Cursor, through: int, limit: int) -> int:
    """Delete up to ``limit`` of the oldest sealed rows up to seq ``through``; how many went."""
    await cur.execute(DELETE_PRUNED, {"through": through, "limit": limit})
    (gone,) = await cur.fetchone()
    return int(gone)
