"""``GET /audit``: the audit log, newest first, for admins (SPEC §4, §8)."""

from __future__ import annotations

from aiohttp import web

from shared.errors import BadRequest, Forbidden
from shared.keys import DB_POOL
from shared.sql import audit as sql
from shared.timeutil import parse_rfc3339, rfc3339
from shared.validation import parse_limit, text_filter
from shared.web import json_response

from .common import audit, audited_failures, caller_of, decode_cursor, encode_cursor


async def list_audit(request: web.Request) -> web.Response:
    """Filter by ``key``, ``actor`` and ``since`` (RFC 3339); page with ``cursor``."""
    async with audited_failures(request, "audit.read", None):
        if not caller_of(request).principal.is_admin:
            raise Forbidden("Only admins may read the audit log")
    query = request.query
    since = None
    if "since" in query:
        try:
            since = parse_rfc3339(query["since"])
        except ValueError:
            raise BadRequest("since must be an RFC 3339 timestamp", fields={"since": ["not RFC 3339"]}) from None
    limit = parse_limit(query.get("limit"))
    params = {
        "key": text_filter(query.get("key"), "key"),
        "actor": text_filter(query.get("actor"), "actor"),
        "since": since,
        "before": decode_cursor(query.get("cursor"), int),
        "limit": limit + 1,
    }
    async with request.app[DB_POOL].acquire() as conn, conn.cursor() as cur:
        await cur.execute(sql.PAGE, params)
        rows = await cur.fetchall()
    audit(request, "audit.read", None, "ok")
    records = [
        {
            "id": rid,
            "at": rfc3339(at),
            "actor": actor,
            "action": action,
            "key": key,
            **({"version": version} if version is not None else {}),
            "outcome": outcome,
            "requestId": request_id,
        }
        for rid, at, actor, action, key, version, outcome, request_id in rows[:limit]
    ]
    body: dict[str, object] = {"records": records}
    if len(rows) > limit:
        body["next"] = encode_cursor(records[-1]["id"])
    return json_response(body)
