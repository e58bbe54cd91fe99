"""Namespace ACLs, which keys without their own ACL inherit (SPEC §5): set, read, remove."""

from __future__ import annotations

from datetime import datetime

import aiopg

from api_server.domain import Caller
from shared.audit.chain import AuditChain
from shared.audit.writer import AuditRecord, record
from shared.changes.kinds import AuditAction
from shared.errors import Forbidden, NotFound
from shared.security.acl import Acl
from shared.security.nsacls import NamespaceAcls
from shared.sql import namespaces as sql
from shared.timeutil import utcnow


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
        created = await sql.upsert(cur, namespace, Acl.from_lists(acls["read"], acls["write"]), caller.username, now)
        token = held.new_token()
        await sql.notify(cur, token)
        await record(
            cur,
            chain,
            AuditRecord(caller.username, AuditAction.NAMESPACE_PUT, namespace, "ok", caller.request_id, at=now),
        )
    await held.reload()
    await held.wait_heard(token)
    return created, now


async def get_acl(pool: aiopg.Pool, namespace: str) -> sql.NamespaceAcl:
    """``namespace``'s ACL with who set it and when (anyone may read it), or 404."""
    async with pool.acquire() as conn, conn.cursor() as cur:
        found = await sql.get_one(cur, namespace)
    if found is None:
        raise NotFound(f"Namespace '{namespace}' has no ACL")
    return found


async def list_acls(pool: aiopg.Pool) -> list[sql.NamespaceAcl]:
    """Every namespace ACL (anyone may read them, as one by one)."""
    async with pool.acquire() as conn, conn.cursor() as cur:
        return await sql.list_all(cur)


async def delete_acl(pool: aiopg.Pool, chain: AuditChain, held: NamespaceAcls, caller: Caller, namespace: str) -> None:
    """Remove ``namespace``'s ACL (audited, every process told), or 404 when it has none; returns once
    this process's copy no longer holds it."""
    require_admin(caller, namespace)
    async with pool.acquire() as conn, conn.cursor() as cur, cur.begin():
        if not await sql.delete(cur, namespace):
            raise NotFound(f"Namespace '{namespace}' has no ACL")
        token = held.new_token()
        await sql.notify(cur, token)
        await record(
            cur, chain, AuditRecord(caller.username, AuditAction.NAMESPACE_DELETE, namespace, "ok", caller.request_id)
        )
    await held.reload()
    await held.wait_heard(token)
