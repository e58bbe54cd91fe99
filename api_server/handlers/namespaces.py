"""``/namespaces/{ns}``: namespace ACLs that keys without their own ACL inherit (SPEC §5)."""

from __future__ import annotations

from aiohttp import web

from shared.audit import AuditRecord, record
from shared.errors import Forbidden, NotFound
from shared.keys import DB_POOL
from shared.sql import namespaces as sql
from shared.timeutil import rfc3339, utcnow
from shared.validation import NamespaceSchema, load, validate_namespace
from shared.web import json_response, read_json

from .common import audit, audited_failures, caller_of

_SCHEMA = NamespaceSchema()


def _require_admin(request: web.Request, namespace: str) -> None:
    if not caller_of(request).principal.is_admin:
        raise Forbidden(f"Only admins may change the ACL of namespace '{namespace}'")


async def put_namespace(request: web.Request) -> web.Response:
    """Set a namespace's ACL: 201 when new, 200 when replaced."""
    namespace = validate_namespace(request.match_info["ns"])
    caller = caller_of(request)
    async with audited_failures(request, "namespace.put", namespace):
        _require_admin(request, namespace)
    acls = load(_SCHEMA, await read_json(request))["acls"]
    now = utcnow()
    async with request.app[DB_POOL].acquire() as conn, conn.cursor() as cur, cur.begin():
        await cur.execute(
            sql.UPSERT,
            {"ns": namespace, "read": acls["read"], "write": acls["write"], "actor": caller.username, "now": now},
        )
        (created,) = await cur.fetchone()
        await cur.execute(sql.NOTIFY)
        await record(cur, AuditRecord(caller.username, "namespace.put", namespace, "ok", caller.request_id, at=now))
    body = {"namespace": namespace, "acls": acls, "updatedBy": caller.username, "updatedAt": rfc3339(now)}
    return json_response(body, status=201 if created else 200)


async def get_namespace(request: web.Request) -> web.Response:
    """A namespace's ACL (any authenticated caller)."""
    namespace = validate_namespace(request.match_info["ns"])
    async with request.app[DB_POOL].acquire() as conn, conn.cursor() as cur:
        await cur.execute(sql.SELECT_ONE, {"ns": namespace})
        row = await cur.fetchone()
    if row is None:
        audit(request, "namespace.read", namespace, "not_found")
        raise NotFound(f"Namespace '{namespace}' has no ACL")
    _, read, write, updated_by, updated_at = row
    audit(request, "namespace.read", namespace, "ok")
    body = {
        "namespace": namespace,
        "acls": {"read": read, "write": write},
        "updatedBy": updated_by,
        "updatedAt": rfc3339(updated_at),
    }
    return json_response(body)


async def delete_namespace(request: web.Request) -> web.Response:
    """Remove a namespace's ACL: 204, or 404 when it has none."""
    namespace = validate_namespace(request.match_info["ns"])
    caller = caller_of(request)
    async with audited_failures(request, "namespace.delete", namespace):
        _require_admin(request, namespace)
        async with request.app[DB_POOL].acquire() as conn, conn.cursor() as cur, cur.begin():
            await cur.execute(sql.DELETE, {"ns": namespace})
            if cur.rowcount == 0:
                raise NotFound(f"Namespace '{namespace}' has no ACL")
            await cur.execute(sql.NOTIFY)
            await record(cur, AuditRecord(caller.username, "namespace.delete", namespace, "ok", caller.request_id))
    return web.Response(status=204)
