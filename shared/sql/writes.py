"""Writing changes: one statement writes a batch of key versions across ``keys``, ``key_history``,
``outbox`` and ``audit_log`` (one round trip whatever the batch size), inside the caller's transaction.

It also gives each change its place in the change log: ``relay_state.head`` is the counter, and the
row lock the statement takes on it is held until COMMIT, so transactions that write commit one after
the other in log order — positions become visible in order, with no gap, and a write's answer can
carry its revision. Call it last before COMMIT: the lock is everyone's.

A change's position (``outbox.revision``) is its revision, except in a transaction (``POST /txn``:
the changes with the same ``txn`` number in the batch): its changes take consecutive positions and
share one revision, the last of them, which ``keys``, ``key_history``, the outbox row's ``txn`` and
the answer carry. The log stays gap-free for those who follow it (the fence, the relay, the hubs);
clients see one revision for the whole transaction, never shared with another write.

A key may be changed several times in one batch (each change builds on the one before it): history,
outbox and audit get every change, ``keys`` the last one; every change's state comes back, in order
(Postgres runs a data-modifying WITH to completion whether or not the result reads it).

At COMMIT it tells every api_server which keys changed at which revisions (``NOTIFY_CHANGES``): the
fence of their value caches (api_server/fence.py).

The audit rows come sealed (``seq``, ``mac``, ``mac_key``, and on the first the head it follows:
``link_seq``, ``link_seal``; shared.audit.chain), the chain's head locked earlier in the transaction,
and the statement moves the head past them and seals it.

Parameters are one array per column, a change per index. ACL lists vary in length, which Postgres
arrays of arrays cannot hold, so they travel as JSON arrays (``jsonb[]``, NULL for "no ACL").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import aiopg

from shared.changes.state import KeyState
from shared.sql import audit as audit_sql
from shared.sql import changelog as changelog_sql
from shared.sql.expiry import NOTIFY as NOTIFY_TTL
from shared.sql.outbox import NOTIFY as NOTIFY_OUTBOX

COLUMNS = (
    "key",
    "version",
    "value_enc",
    "ttl",
    "expires_at",
    "acl_read",
    "acl_write",
    "creator",
    "deleted",
    "created_at",
    "now",
    "event",
    "actor",
    "action",
    "request_id",
    "read_entries",
    "read_owner",
    "seq",
    "mac",
    "mac_key",
    "link_seq",
    "link_seal",
    "txn",
)


def _text_array(column: str, row: str = "c") -> str:
    value = f"{row}.{column}"
    return f"CASE WHEN {value} IS NULL THEN NULL ELSE ARRAY(SELECT jsonb_array_elements_text({value})) END"


_WRITE = f"""
WITH input AS (
    SELECT * FROM unnest(
        %(key)s::text[], %(version)s::bigint[], %(value_enc)s::bytea[], %(ttl)s::integer[],
        %(expires_at)s::timestamptz[], %(acl_read)s::jsonb[], %(acl_write)s::jsonb[], %(creator)s::text[],
        %(deleted)s::boolean[], %(created_at)s::timestamptz[], %(now)s::timestamptz[], %(event)s::text[],
        %(actor)s::text[], %(action)s::text[], %(request_id)s::text[], %(read_entries)s::jsonb[],
        %(read_owner)s::text[], %(seq)s::bigint[], %(mac)s::bytea[], %(mac_key)s::text[],
        %(link_seq)s::bigint[], %(link_seal)s::bytea[], %(txn)s::integer[]
    ) WITH ORDINALITY AS input({", ".join(COLUMNS)}, n)
), counter AS (
    UPDATE relay_state SET head = head + (SELECT count(*) FROM input) RETURNING head
), placed AS (
    SELECT input.*, counter.head - (SELECT count(*) FROM input) + input.n AS position FROM input CROSS JOIN counter
), c AS (
    SELECT placed.*,
           CASE WHEN txn IS NULL THEN position ELSE max(position) OVER (PARTITION BY txn) END AS revision
      FROM placed
), changed AS (
    UPDATE keys k
       SET version = last.version, value_enc = last.value_enc, ttl = last.ttl, expires_at = last.expires_at,
           acl_read = {_text_array("acl_read", "last")}, acl_write = {_text_array("acl_write", "last")},
           creator = last.creator, deleted = last.deleted, created_at = last.created_at, last_modified = last.now,
           revision = last.revision
      FROM (SELECT DISTINCT ON (key) * FROM c ORDER BY key, n DESC) AS last
     WHERE k.key = last.key
), history AS (
    INSERT INTO key_history (key, version, event, value_enc, actor, at, read_entries, read_owner, revision)
    SELECT key, version, event, value_enc, actor, now, {_text_array("read_entries")}, read_owner, revision
      FROM c ORDER BY n
), outbox AS (
    INSERT INTO outbox (key, version, event, at, revision, txn)
    SELECT key, version, event, now, position, CASE WHEN txn IS NULL THEN NULL ELSE revision END FROM c ORDER BY n
), audit AS (
    INSERT INTO audit_log ({audit_sql.SEALED}, seq, mac, mac_key, link_seq, link_seal)
    SELECT now, actor, action, key, version, 'ok', request_id, seq, mac, mac_key, link_seq, link_seal
      FROM c ORDER BY n
), chain AS (
    {audit_sql.ADVANCE}
), notices AS (
    {changelog_sql.NOTIFY_CHANGES}
)
SELECT key, version, value_enc, ttl, expires_at, {_text_array("acl_read")}, {_text_array("acl_write")}, creator,
       deleted, created_at, now, revision
  FROM c
 WHERE (SELECT count(*) FROM notices) > 0  -- a WITH query that only reads runs only if used
 ORDER BY n
"""

#: Wakes the relay; the new states come back in batch order.
WRITE = NOTIFY_OUTBOX + ";\n" + _WRITE

#: The same, also waking the expiry worker (a change in the batch sets a deadline).
WRITE_WITH_DEADLINE = NOTIFY_OUTBOX + ";\n" + NOTIFY_TTL + ";\n" + _WRITE


async def write(cur: aiopg.Cursor, columns: Mapping[str, list[Any]], *, deadline: bool) -> list[KeyState]:
    """Run :data:`WRITE` (:data:`WRITE_WITH_DEADLINE` when a change sets a ``deadline``) with one list
    per name of :data:`COLUMNS` and the chain's; the new states, in order."""
    await cur.execute(WRITE_WITH_DEADLINE if deadline else WRITE, columns)
    return [KeyState.from_row(row) for row in await cur.fetchall()]
