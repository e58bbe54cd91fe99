"""Where a change is written: key state + history row + outbox row + audit row, in one transaction.

Every function here takes a cursor that is already inside ``async with cur.begin()``; the caller owns
the transaction. The API server's committer and the expiry worker both write through
:func:`write_changes`; :func:`change` and :func:`expiry` make what they write, each change once, with
the state it leaves its key in (what a later change in the same batch builds on).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import aiopg

from shared.audit.chain import AuditChain, Entry
from shared.audit.writer import AuditRecord, safe_record
from shared.changes.kinds import AuditAction, EventKind
from shared.changes.state import KeyState
from shared.security.acl import Acl, Audience, audience
from shared.sql import audit as audit_sql
from shared.sql import writes as writes_sql

EXPIRY_ACTOR = "system:expiry"


@dataclass(frozen=True)
class NewState:
    """What a change sets. ``value_enc`` None means the key is deleted."""

    value_enc: bytes | None
    ttl: int | None
    acl: Acl | None
    creator: str


@dataclass(frozen=True)
class Change:
    """One new version of a locked key: what it becomes, why, by whom, when, and who may read it."""

    before: KeyState
    new: NewState
    event: EventKind
    action: AuditAction
    actor: str
    request_id: str | None
    now: datetime
    readers: Audience
    #: The state it leaves its key in (its revision is given when it is written).
    after: KeyState
    #: The transaction it belongs to, numbered within the batch written (None: a write of its own).
    #: A transaction's changes share one revision (shared/sql/writes.py).
    txn: int | None = None


def change(
    before: KeyState,
    new: NewState,
    *,
    event: EventKind,
    action: AuditAction | str,
    actor: str,
    request_id: str | None,
    now: datetime,
    namespace_acls: Mapping[str, Acl],
    txn: int | None = None,
) -> Change:
    """A :class:`Change`, with the readers of the new version decided now (SPEC §5: a past version is
    served only to readers it had then as well as now); ``txn`` numbers its transaction in the batch."""
    readers = audience("read", key=before.key, key_acl=new.acl, creator=new.creator, namespace_acls=namespace_acls)
    after = _after(before, new, now)
    return Change(before, new, event, AuditAction(action), actor, request_id, now, readers, after, txn)


def _after(before: KeyState, new: NewState, now: datetime) -> KeyState:
    deleted = new.value_enc is None
    return replace(
        before,
        version=before.version + 1,
        value_enc=new.value_enc,
        ttl=new.ttl,
        expires_at=now + timedelta(seconds=new.ttl) if new.ttl and not deleted else None,
        acl=new.acl,
        creator=new.creator,
        deleted=deleted,
        created_at=now if before.deleted and not deleted else before.created_at,
        last_modified=now,
        revision=None,
    )


async def write_changes(cur: aiopg.Cursor, changes: Sequence[Change], chain: AuditChain) -> list[KeyState]:
    """Write the next version of each locked key, with its history, outbox and audit rows (sealed
    into ``chain``), in one statement after the chain's head is locked; return the new states in the
    same order. A key changed twice in a batch: the second change's ``before`` is the first's
    ``after``."""
    columns: dict[str, Any] = {name: [] for name in writes_sql.COLUMNS}
    entries: list[Entry] = []
    deadline = False
    for c in changes:
        new = c.after
        deadline = deadline or new.expires_at is not None
        acl, readers = c.new.acl, c.readers
        audit = safe_record(AuditRecord(c.actor, c.action, c.before.key, "ok", c.request_id))
        row = {
            "key": c.before.key,
            "version": new.version,
            "value_enc": new.value_enc,
            "ttl": new.ttl,
            "expires_at": new.expires_at,
            "acl_read": json.dumps(acl.read) if acl else None,
            "acl_write": json.dumps(acl.write) if acl else None,
            "creator": new.creator,
            "deleted": new.deleted,
            "created_at": new.created_at,
            "now": c.now,
            "event": c.event,
            "actor": audit.actor,
            "action": audit.action,
            "request_id": audit.request_id,
            "read_entries": json.dumps(readers.entries) if readers.owner is None else None,
            "read_owner": readers.owner,
            "txn": c.txn,
        }
        for name, value in row.items():
            columns[name].append(value)
        entries.append(Entry(c.now, audit.actor, audit.action, c.before.key, new.version, "ok", audit.request_id))
    columns.update(chain.columns(await audit_sql.lock_head(cur), entries))
    return await writes_sql.write(cur, columns, deadline=deadline)


def expiry(state: KeyState, now: datetime, namespace_acls: Mapping[str, Acl], request_id: str | None = None) -> Change:
    """The change that soft-deletes an expired key (version +1, ``expired`` event), as the system."""
    tombstone = NewState(value_enc=None, ttl=state.ttl, acl=state.acl, creator=state.creator)
    return change(
        state,
        tombstone,
        event=EventKind.EXPIRED,
        action=AuditAction.EXPIRE,
        actor=EXPIRY_ACTOR,
        request_id=request_id,
        now=now,
        namespace_acls=namespace_acls,
    )
