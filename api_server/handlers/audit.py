"""``GET /audit``: the audit log, newest first, for admins (SPEC §4, §8)."""

from __future__ import annotations

from aiohttp import web

from api_server.domain import audit as audit_log
from api_server.handlers import cursors
from api_server.handlers.common import audit, audited_failures, caller_of
from shared.audit.chain import AUDIT_CHAIN
from shared.audit.verify import verify
from shared.changes.kinds import AuditAction
from shared.db import DB_POOL
from shared.errors import BadRequest
from shared.runtime.web import json_response
from shared.timeutil import parse_rfc3339, rfc3339
from shared.validation import parse_limit, text_filter


async def list_audit(request: web.Request) -> web.Response:
    """Filter by ``key``, ``actor``, ``action``, ``outcome`` and ``since`` (RFC 3339); page with ``cursor``."""
    async with audited_failures(request, AuditAction.AUDIT_READ, None):
        audit_log.require_admin(caller_of(request))
    query = request.query
    since = None
    if "since" in query:
        try:
            since = parse_rfc3339(query["since"])
        except ValueError:
            raise BadRequest("since must be an RFC 3339 timestamp", fields={"since": ["not RFC 3339"]}) from None
    limit = parse_limit(query.get("limit"))
    rows = await audit_log.page(
        request.app[DB_POOL],
        request.app[AUDIT_CHAIN],
        key=text_filter(query.get("key"), "key"),
        actor=text_filter(query.get("actor"), "actor"),
        action=text_filter(query.get("action"), "action"),
        outcome=text_filter(query.get("outcome"), "outcome"),
        since=since,
        before=cursors.read_audit_cursor(query.get("cursor")),
        limit=limit + 1,
    )
    audit(request, AuditAction.AUDIT_READ, None, "ok")
    records = [_shown(row) for row in rows[:limit]]
    body: dict[str, object] = {"records": records}
    if len(rows) > limit:
        last = rows[limit - 1].record
        body["next"] = cursors.audit_cursor(last.entry.at, last.id)
    return json_response(body)


async def verify_audit(request: web.Request) -> web.Response:
    """Walk the audit chain (what ``dynconfig-audit verify`` does): 200 with the report,
    ``ok`` false and the first bad row named when it is broken. Admins only."""
    async with audited_failures(request, AuditAction.AUDIT_VERIFY, None):
        audit_log.require_admin(caller_of(request))
    report = await verify(request.app[DB_POOL], request.app[AUDIT_CHAIN])
    audit(request, AuditAction.AUDIT_VERIFY, None, "ok" if report.ok else "broken")
    return json_response(report.as_json())


def _shown(row: audit_log.AuditRow) -> dict[str, object]:
    """One record as ``GET /audit`` answers it."""
    r = row.record.entry
    return {
        "id": row.record.id,
        "at": rfc3339(r.at),
        "actor": r.actor,
        "action": r.action,
        "key": r.key,
        **({"version": r.version} if r.version is not None else {}),
        "outcome": r.outcome,
        "requestId": r.request_id,
        "seal": row.seal,
    }
