"""The ``namespaces`` table: namespace ACLs for inheritance."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiopg

from shared.security.acl import Acl
from shared.validation import namespaces_of

SELECT_ALL = "SELECT namespace, acl_read, acl_write FROM namespaces"

SELECT_MANY = "SELECT namespace, acl_read, acl_write FROM namespaces WHERE namespace = ANY(%(namespaces)s)"

# The same, with the time of the change in one round trip: run by a writer once it holds the key's row
# lock, so the clock is read after any wait for that lock (Postgres's clock, the same for every replica).
SELECT_MANY_AND_NOW = """
SELECT clock_timestamp(),
       coalesce(json_agg(json_build_array(namespace, acl_read, acl_write)), '[]')
  FROM namespaces WHERE namespace = ANY(%(namespaces)s)
"""

SELECT_ONE = "SELECT namespace, acl_read, acl_write, updated_by, updated_at FROM namespaces WHERE namespace = %(ns)s"

# Every namespace ACL with who set it and when, by name (one per team or app: a few hundred at most).
LIST = 'SELECT namespace, acl_read, acl_write, updated_by, updated_at FROM namespaces ORDER BY namespace COLLATE "C"'

UPSERT = """
INSERT INTO namespaces (namespace, acl_read, acl_write, updated_by, updated_at)
VALUES (%(ns)s, %(read)s, %(write)s, %(actor)s, %(now)s)
ON CONFLICT (namespace) DO UPDATE
   SET acl_read = EXCLUDED.acl_read, acl_write = EXCLUDED.acl_write,
       updated_by = EXCLUDED.updated_by, updated_at = EXCLUDED.updated_at
RETURNING (xmax = 0) AS created
"""

DELETE = "DELETE FROM namespaces WHERE namespace = %(ns)s"

# Tells notifiers to reload namespace ACLs (watch deliveries check them per event).
CHANNEL = "dynconfig_namespaces"
# The payload names the write (a token of the writer's), so its process can wait until its own
# listener has heard it (shared.security.nsacls.NamespaceAcls.wait_heard).
NOTIFY = f"SELECT pg_notify('{CHANNEL}', %(token)s)"


# --- access: the statements above, run, their rows read into types ---------------------------------


@dataclass(frozen=True)
class NamespaceAcl:
    """One namespace's ACL, with who set it and when."""

    namespace: str
    acl: Acl
    updated_by: str
    updated_at: datetime


def _acls(rows: Iterable[Sequence[Any]]) -> dict[str, Acl]:
    return {ns: Acl.from_lists(read, write) for ns, read, write in rows}


async def all_acls(cur: aiopg.Cursor) -> dict[str, Acl]:
    """Every namespace ACL."""
    await cur.execute(SELECT_ALL)
    return _acls(await cur.fetchall())


async def acls_of(cur: aiopg.Cursor, namespaces: list[str]) -> dict[str, Acl]:
    """The ACLs of those of ``namespaces`` that have one."""
    await cur.execute(SELECT_MANY, {"namespaces": namespaces})
    return _acls(await cur.fetchall())


async def acls_above_and_clock(cur: aiopg.Cursor, keys: Iterable[str]) -> tuple[dict[str, Acl], datetime]:
    """The ACLs of every namespace above ``keys``, and Postgres's clock now (read by a writer after its
    row locks: the time of its changes)."""
    namespaces = sorted({ns for key in keys for ns in namespaces_of(key)})
    await cur.execute(SELECT_MANY_AND_NOW, {"namespaces": namespaces})
    now, acls = await cur.fetchone()
    return _acls(acls), now


async def get_one(cur: aiopg.Cursor, namespace: str) -> NamespaceAcl | None:
    """``namespace``'s ACL with who set it and when, or None."""
    await cur.execute(SELECT_ONE, {"ns": namespace})
    row = await cur.fetchone()
    return None if row is None else _namespace_acl(row)


async def list_all(cur: aiopg.Cursor) -> list[NamespaceAcl]:
    """Every namespace ACL with who set it and when, by name."""
    await cur.execute(LIST)
    return [_namespace_acl(row) for row in await cur.fetchall()]


def _namespace_acl(row: Sequence[Any]) -> NamespaceAcl:
    ns, read, write, updated_by, updated_at = row
    return NamespaceAcl(ns, Acl.from_lists(read, write), updated_by, updated_at)


async def upsert(cur: aiopg.Cursor, namespace: str, acl: Acl, actor: str, now: datetime) -> bool:
    """Set ``namespace``'s ACL; True when it had none."""
    params = {"ns": namespace, "read": list(acl.read), "write": list(acl.write), "actor": actor, "now": now}
    await cur.execute(UPSERT, params)
    (created,) = await cur.fetchone()
    return bool(created)


async def delete(cur: aiopg.Cursor, namespace: str) -> bool:
    """Remove ``namespace``'s ACL; False when it had none."""
    await cur.execute(DELETE, {"ns": namespace})
    return bool(cur.rowcount)


async def notify(cur: aiopg.Cursor, token: str) -> None:
    """Tell every holder of the ACLs, at COMMIT, to reload (``token`` names the write)."""
    await cur.execute(NOTIFY, {"token": token})
