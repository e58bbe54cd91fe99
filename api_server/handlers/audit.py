"""``GET /audit``: the audit log, newest first, for admins (SPEC §4, §8)."""

from __future__ import annotations

from datetime import datetime

from aiohttp import web

from shared.appkeys import AUDIT_CHAIN, DB_POOL
from shared.auditverify import verify
from shared.errors import BadRequest
from shared.timeutil import parse_rfc3339, rfc3339
from shared.validation import parse_limit, text_filter
from shared.web import json_response

from ..domain import audit as audit_log
from .common import audit, audited_failures, caller_of, decode_cursor, encode_cursor


async def list_audit(request: web.Request) -> web.Response:
    """Filter by ``key``, ``actor`` and ``since`` (RFC 3339); page with ``cursor``."""
    async with audited_failures(request, "audit.read", None):
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
        since=since,
        before=_position(decode_cursor(query.get("cursor"), list)),
        limit=limit + 1,
    )
    audit(request, "audit.read", None, "ok")
    records = [
        {
            "id": r.id,
            "at": rfc3339(r.at),
            "actor": r.actor,
            "action": r.action,
            "key": r.key,
            **({"version": r.version} if r.version is not None else {}),
            "outcome": r.outcome,
            "requestId": r.request_id,
            "seal": r.seal,
        }
        for r in rows[:limit]
    ]
    body: dict[str, object] = {"records": records}
    if len(rows) > limit:
        last = rows[limit - 1]
        body["next"] = encode_cursor([last.at.isoformat(), last.id])
    return json_response(body)


def _position(cursor: list[object] | None) -> tuple[datetime, int] | None:
    """The (at, id) a cursor from :func:`list_audit` points at; 400 for anything else."""
    if cursor is None:
        return None
    if len(cursor) == 2:
        at_text, rid = cursor
        if isinstance(at_text, str) and type(rid) is int and 0 <= rid < 2**62:
            try:
                return datetime.fromisoformat(at_text), rid
            except ValueError:
                pass
    raise BadRequest("Invalid cursor", fields={"cursor": ["not a cursor this server issued"]})


async def verify_audit(request: web.Request) -> web.Response:
    """Walk the audit chain (what ``python -m api_server.audit verify`` does): 200 with the report,
    ``ok`` false and the first bad row named when it is broken. Admins only."""
    async with audited_failures(request, "audit.verify", None):
        audit_log.require_admin(caller_of(request))
    report = await verify(request.app[DB_POOL], request.app[AUDIT_CHAIN])
    audit(request, "audit.verify", None, "ok" if report.ok else "broken")
    return json_response(report.as_json())
