"""Where a change is written: key state + history row + outbox row + audit row, in one transaction.

Every function here takes a cursor that is already inside ``async with cur.begin()``; the caller owns
the transaction. The API server and the expiry worker both write through :func:`write_change`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

import aiopg

from .acl import Acl, audience
from .audit import AuditRecord, record
from .model import KeyState
from .sql import expiry as expiry_sql
from .sql import history as history_sql
from .sql import keys as keys_sql
from .sql import namespaces as ns_sql
from .sql import outbox as outbox_sql
from .validation import namespaces_of

EXPIRY_ACTOR = "system:expiry"


@dataclass(frozen=True)
class NewState:
    """What a change sets. ``value_enc`` None means the key is deleted."""

    value_enc: bytes | None
    ttl: int | None
    acl: Acl | None
    creator: str


async def lock_key(cur: aiopg.Cursor, key: str) -> KeyState | None:
    """Lock and return the key's row (None if it never existed)."""
    await cur.execute(keys_sql.SELECT_FOR_UPDATE, {"key": key})
    row = await cur.fetchone()
    return KeyState.from_row(row) if row else None


async def claim_key(cur: aiopg.Cursor, key: str, actor: str) -> KeyState:
    """Lock the key's row, inserting a deleted placeholder first if it never existed."""
    await cur.execute(keys_sql.CLAIM, {"key": key, "actor": actor})
    await cur.execute(keys_sql.SELECT, {"key": key})  # the lock is ours: this sees the latest version
    row = await cur.fetchone()
    return KeyState.from_row(row)


async def namespace_acls_for(cur: aiopg.Cursor, key: str) -> dict[str, Acl]:
    """The ACLs of every namespace above ``key`` that has one."""
    await cur.execute(ns_sql.SELECT_MANY, {"namespaces": namespaces_of(key)})
    return {ns: Acl.from_lists(read, write) for ns, read, write in await cur.fetchall()}


async def namespace_acls_and_now(
    cur: aiopg.Cursor, key: str, state: KeyState | None
) -> tuple[dict[str, Acl], datetime]:
    """The namespace ACLs above ``key``, and the time of a change to it. Call it holding the key's row
    lock: the time is Postgres's clock after any wait for that lock (a writer that queued past a
    deadline sees the key expired, as readers did), and never earlier than the key's last change."""
    await cur.execute(ns_sql.SELECT_MANY_AND_NOW, {"namespaces": namespaces_of(key)})
    now, acls = await cur.fetchone()
    if state is not None and state.version > 0:
        now = max(now, state.last_modified)
    return {ns: Acl.from_lists(read, write) for ns, read, write in acls}, now


async def all_namespace_acls(cur: aiopg.Cursor) -> dict[str, Acl]:
    """Every namespace ACL (the table is small: one row per namespace with an ACL)."""
    await cur.execute(ns_sql.SELECT_ALL)
    return {ns: Acl.from_lists(read, write) for ns, read, write in await cur.fetchall()}


async def write_change(
    cur: aiopg.Cursor,
    before: KeyState,
    new: NewState,
    *,
    event: str,
    action: str,
    actor: str,
    request_id: str | None,
    now: datetime,
    namespace_acls: Mapping[str, Acl] | None = None,
) -> KeyState:
    """Write the next version of a locked key and its history, outbox and audit rows.

    The history row records who may read this version (SPEC §5: a past version is served only to
    readers it had then as well as now); ``namespace_acls`` saves a query when the caller has them.
    """
    if new.acl is None and namespace_acls is None:
        namespace_acls = await namespace_acls_for(cur, before.key)
    readers = audience(
        "read", key=before.key, key_acl=new.acl, creator=new.creator, namespace_acls=namespace_acls or {}
    )
    deleted = new.value_enc is None
    version = before.version + 1
    expires_at = now + timedelta(seconds=new.ttl) if new.ttl and not deleted else None
    created_at = now if before.deleted and not deleted else before.created_at
    await cur.execute(
        keys_sql.UPSERT,
        {
            "key": before.key,
            "version": version,
            "value_enc": new.value_enc,
            "ttl": new.ttl,
            "expires_at": expires_at,
            "acl_read": list(new.acl.read) if new.acl else None,
            "acl_write": list(new.acl.write) if new.acl else None,
            "creator": new.creator,
            "deleted": deleted,
            "created_at": created_at,
            "now": now,
        },
    )
    row = await cur.fetchone()
    params = {"key": before.key, "version": version, "event": event, "now": now}
    await cur.execute(
        history_sql.INSERT,
        {
            **params,
            "value_enc": new.value_enc,
            "actor": actor,
            "read_entries": list(readers.entries) if readers.owner is None else None,
            "read_owner": readers.owner,
        },
    )
    await cur.execute(outbox_sql.INSERT, params)
    await record(cur, AuditRecord(actor, action, before.key, "ok", request_id, version, now))
    await cur.execute(outbox_sql.NOTIFY)
    if expires_at is not None:
        await cur.execute(expiry_sql.NOTIFY)
    return KeyState.from_row(row)


async def expire(cur: aiopg.Cursor, state: KeyState, now: datetime, request_id: str | None = None) -> KeyState:
    """Soft-delete an expired key as the expiry worker would (version +1, ``expired`` event)."""
    tombstone = NewState(value_enc=None, ttl=state.ttl, acl=state.acl, creator=state.creator)
    return await write_change(
        cur, state, tombstone, event="expired", action="expire", actor=EXPIRY_ACTOR, request_id=request_id, now=now
    )
