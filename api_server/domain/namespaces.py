"""Namespace ACLs, which keys without their own ACL inherit (SPEC §5): set, read, remove."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import aiopg

from shared.audit import AuditRecord, record
from shared.auditchain import AuditChain
from shared.errors import Forbidden, NotFound
from shared.nsacls import NamespaceAcls
from shared.sql import namespaces as sql
from shared.timeutil import utcnow

from . import Caller


def require_admin(caller: Caller, namespace: str) -> None:
    """Only admins change namespace ACLs."""
    if not caller.principal.is_admin:
        raise Forbidden(f"Only admins may change the ACL of namespace '{namespace}'")


async def put_acl(
    pool: aiopg.Pool,
    chain: AuditChain,
    held: NamespaceAcls,
    caller: Caller,
    namespace: str,
    acls: dict[str, list[str]],
) -> tuple[bool, datetime]:
    """Set ``namespace``'s ACL (audited, every process told); return (created?, when) once this
    process's copy holds it."""
    require_admin(caller, namespace)
    now = utcnow()
    async with pool.acquire() as conn, conn.cursor() as cur, cur.begin():
        params = {"ns": namespace, "read": acls["read"], "write": acls["write"], "actor": caller.username, "now": now}
        await cur.execute(sql.UPSERT, params)
        (created,) = await cur.fetchone()
        token = held.new_token()
        await cur.execute(sql.NOTIFY, {"token": token})
        await record(
            cur, chain, AuditRecord(caller.username, "namespace.put", namespace, "ok", caller.request_id, at=now)
        )
    await held.reload()
    await held.wait_heard(token)
    return bool(created), now


async def get_acl(pool: aiopg.Pool, namespace: str) -> dict[str, Any]:
    """``namespace``'s ACL with who set it and when (anyone may read it), or 404."""
    async with pool.acquire() as conn, conn.cursor() as cur:
        await cur.execute(sql.SELECT_ONE, {"ns": namespace})
        row = await cur.fetchone()
    if row is None:
        raise NotFound(f"Namespace '{namespace}' has no ACL")
    _, read, write, updated_by, updated_at = row
    return {"acls": {"read": read, "write": write}, "updated_by": updated_by, "updated_at": updated_at}


async def delete_acl(pool: aiopg.Pool, chain: AuditChain, held: NamespaceAcls, caller: Caller, namespace: str) -> None:
    """Remove ``namespace``'s ACL (audited, every process told), or 404 when it has none; returns once
    this process's copy no longer holds it."""
    require_admin(caller, namespace)
    async with pool.acquire() as conn, conn.cursor() as cur, cur.begin():
        await cur.execute(sql.DELETE, {"ns": namespace})
        if cur.rowcount == 0:
            raise NotFound(f"Namespace '{namespace}' has no ACL")
        token = held.new_token()
        await cur.execute(sql.NOTIFY, {"token": token})
        await record(cur, chain, AuditRecord(caller.username, "namespace.delete", namespace, "ok", caller.request_id))
    await held.reload()
    await held.wait_heard(token)
