"""``/namespaces/{ns}``: namespace ACLs that keys without their own ACL inherit (SPEC §5)."""

from __future__ import annotations

from aiohttp import web

from api_server.domain import namespaces
from api_server.handlers.common import audit, audited_failures, caller_of
from shared.audit.chain import AUDIT_CHAIN
from shared.changes.kinds import AuditAction
from shared.db import DB_POOL
from shared.runtime.web import json_response, read_json
from shared.security.nsacls import NAMESPACE_ACLS
from shared.sql.namespaces import NamespaceAcl
from shared.timeutil import rfc3339
from shared.validation import NamespaceSchema, load, validate_namespace

_SCHEMA = NamespaceSchema()


async def put_namespace(request: web.Request) -> web.Response:
    """Set a namespace's ACL: 201 when new, 200 when replaced."""
    namespace = validate_namespace(request.match_info["ns"])
    caller = caller_of(request)
    async with audited_failures(request, AuditAction.NAMESPACE_PUT, namespace):
        namespaces.require_admin(caller, namespace)
    acls = load(_SCHEMA, await read_json(request))["acls"]
    created, now = await namespaces.put_acl(
        request.app[DB_POOL], request.app[AUDIT_CHAIN], request.app[NAMESPACE_ACLS], caller, namespace, acls
    )
    body = {"namespace": namespace, "acls": acls, "updatedBy": caller.username, "updatedAt": rfc3339(now)}
    return json_response(body, status=201 if created else 200)


async def list_namespaces(request: web.Request) -> web.Response:
    """Every namespace ACL, by name (any authenticated caller, as for one)."""
    found = await namespaces.list_acls(request.app[DB_POOL])
    audit(request, AuditAction.NAMESPACE_READ, None, "ok")
    return json_response({"namespaces": [_shown(ns) for ns in found]})


def _shown(found: NamespaceAcl) -> dict[str, object]:
    return {
        "namespace": found.namespace,
        "acls": found.acl.as_json(),
        "updatedBy": found.updated_by,
        "updatedAt": rfc3339(found.updated_at),
    }


async def get_namespace(request: web.Request) -> web.Response:
    """A namespace's ACL (any authenticated caller)."""
    namespace = validate_namespace(request.match_info["ns"])
    async with audited_failures(request, AuditAction.NAMESPACE_READ, namespace):
        found = await namespaces.get_acl(request.app[DB_POOL], namespace)
    audit(request, AuditAction.NAMESPACE_READ, namespace, "ok")
    return json_response(_shown(found))


async def delete_namespace(request: web.Request) -> web.Response:
    """Remove a namespace's ACL: 204, or 404 when it has none."""
    namespace = validate_namespace(request.match_info["ns"])
    async with audited_failures(request, AuditAction.NAMESPACE_DELETE, namespace):
        await namespaces.delete_acl(
            request.app[DB_POOL], request.app[AUDIT_CHAIN], request.app[NAMESPACE_ACLS], caller_of(request), namespace
        )
    return web.Response(status=204)
