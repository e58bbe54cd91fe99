"""``/keys``, ``/keys/{key}``, ``/keys/{key}/history`` and ``/keys/{key}/rollback`` (SPEC §4)."""

from __future__ import annotations

import re

from aiohttp import web

from api_server.domain import keys as store
from api_server.domain.keys import IfMatch
from api_server.handlers import cursors
from api_server.handlers.common import audit, audited_failures, caller_of, store_of
from shared.changes.kinds import AuditAction
from shared.errors import BadRequest
from shared.runtime.web import json_response, read_json
from shared.sql.keys import ListedKey, LiveRange
from shared.timeutil import rfc3339, utcnow
from shared.validation import (
    PatchKeySchema,
    PutKeySchema,
    RollbackSchema,
    load,
    parse_limit,
    parse_since_version,
    text_filter,
    validate_key,
    validate_namespace,
)

_PUT = PutKeySchema()
_PATCH = PatchKeySchema()
_ROLLBACK = RollbackSchema()


# One element of the list: a strong tag "3", a weak tag W/"3", or (our extension) a bare version 3. The
# ETag characters stop at U+FFFF: what JSON Schema and Python can both spell (header bytes are Latin-1).
_ETAG = r'(W/)?"([\x21\x23-\x7e\x80-\uffff]*)"|([0-9]{1,18})'
_ETAG_ELEMENT = re.compile(_ETAG)
_ELEMENT = f"(?:{_ETAG})"
_OWS = r"[ \t]*"
#: The whole header, as /openapi.json publishes it: ``*``, or a comma-separated list (empty elements
#: allowed, as RFC 9110 §5.6.1 says) with at least one element.
IF_MATCH_PATTERN = rf"^{_OWS}(?:\*|(?:,{_OWS})*{_ELEMENT}{_OWS}(?:,{_OWS}(?:{_ELEMENT}{_OWS})?)*){_OWS}$"
_IF_MATCH = re.compile(IF_MATCH_PATTERN)


def parse_if_match(header: str | None) -> IfMatch | None:
    """The ``If-Match`` header (several header lines joined by commas), or 400 when malformed."""
    if header is None:
        return None
    if not _IF_MATCH.fullmatch(header):
        raise BadRequest(
            'If-Match must be *, or a comma-separated list of entity tags ("3") or versions',
            fields={"If-Match": ["malformed"]},
        )
    if header.strip(" \t") == "*":
        return IfMatch(True, frozenset(), "*")
    elements = list(_ETAG_ELEMENT.finditer(header))
    strong = [m.group(2) if m.group(3) is None else m.group(3) for m in elements if not m.group(1)]
    shown = ", ".join(m.group(0) if m.group(1) else m.group(2) if m.group(3) is None else m.group(3) for m in elements)
    return IfMatch(False, frozenset(strong), shown)


def _if_match(request: web.Request) -> IfMatch | None:
    """``If-Match``, several header lines read as one list (RFC 9110 §5.3); 400 when malformed."""
    lines = request.headers.getall("If-Match", [])
    return parse_if_match(", ".join(lines)) if lines else None


def _written(state: store.KeyState, status: int) -> web.Response:
    body = {
        "key": state.key,
        "version": state.version,
        "revision": state.revision,
        "lastModified": rfc3339(state.last_modified),
        "expiresAt": rfc3339(state.expires_at),
    }
    return json_response(body, status=status, headers={"ETag": f'"{state.version}"'})


async def put_key(request: web.Request) -> web.Response:
    """Create (201) or replace (200) a key."""
    key = validate_key(request.match_info["key"])
    body = load(_PUT, await read_json(request))
    async with audited_failures(request, AuditAction.REPLACE, key):  # a refused create says so itself
        state, created = await store.put_key(store_of(request), caller_of(request), key, body, _if_match(request))
    return _written(state, 201 if created else 200)


async def patch_key(request: web.Request) -> web.Response:
    """Update a live key's value (and, for admins, its ttl/acls)."""
    key = validate_key(request.match_info["key"])
    body = load(_PATCH, await read_json(request))
    async with audited_failures(request, AuditAction.PATCH, key):
        state = await store.patch_key(store_of(request), caller_of(request), key, body, _if_match(request))
    return _written(state, 200)


async def rollback_key(request: web.Request) -> web.Response:
    """Write the value of an earlier version again, as a new version (200)."""
    key = validate_key(request.match_info["key"])
    body = load(_ROLLBACK, await read_json(request))
    async with audited_failures(request, AuditAction.ROLLBACK, key):
        state = await store.rollback_key(
            store_of(request), caller_of(request), key, body["version"], _if_match(request)
        )
    return _written(state, 200)


async def get_key(request: web.Request) -> web.Response:
    """A live key's value and metadata, with its version as the ETag."""
    key = validate_key(request.match_info["key"])
    include = _include(request)
    async with audited_failures(request, AuditAction.READ, key):
        state, value = await store.get_key(store_of(request), caller_of(request), key)
    audit(request, AuditAction.READ, key, "ok")
    body = {
        "key": key,
        "value": value,
        "version": state.version,
        "revision": state.revision,
        "lastModified": rfc3339(state.last_modified),
        "ttl": state.ttl,
        "expiresAt": rfc3339(state.expires_at),
    }
    if "acls" in include and caller_of(request).principal.is_admin:
        # Who may read and write it, for those who may change that (the console asks; others never see it).
        body["acls"] = state.acl.as_json() if state.acl is not None else None
    if "access" in include:
        body.update(await store.key_access(store_of(request), caller_of(request), state))
    return json_response(body, headers={"ETag": f'"{state.version}"'})


#: What ``GET /keys/{key}?include=`` can add (comma-separated), and that list as /openapi.json has it.
INCLUDES = ("acls", "access")
INCLUDE_PATTERN = f"^(?:{'|'.join(INCLUDES)})(?:,(?:{'|'.join(INCLUDES)}))*$"


def _include(request: web.Request) -> set[str]:
    """``?include=acls,access``: a comma-separated list of :data:`INCLUDES`; 400 for anything else."""
    raw = request.query.get("include")
    if raw is None:
        return set()
    asked = set(raw.split(","))
    if not asked <= set(INCLUDES):
        raise BadRequest(f"include lists {' and '.join(INCLUDES)}, comma-separated", fields={"include": ["unknown"]})
    return asked


async def delete_key(request: web.Request) -> web.Response:
    """Soft-delete a key: 204."""
    key = validate_key(request.match_info["key"])
    async with audited_failures(request, AuditAction.DELETE, key):
        await store.delete_key(store_of(request), caller_of(request), key, _if_match(request))
    return web.Response(status=204)


async def list_keys(request: web.Request) -> web.Response:
    """Readable keys, a page at a time, by name or in another order (``sort``): of a namespace, or
    those a search finds (``prefix``, a raw key prefix; ``q``, text in the name, either case); with
    ``detail=true`` each with its version, last change and ttl."""
    query = request.query
    namespace = validate_namespace(query["namespace"]) if "namespace" in query else None
    limit = parse_limit(query.get("limit"))
    order = cursors.parse_sort(query.get("sort"))
    after, total = cursors.read_list_cursor(query.get("cursor"), order)  # read (so 400 when bad) even for a poll
    if "since_version" in query:
        return await _poll(request, namespace, limit)
    prefix, contains = text_filter(query.get("prefix"), "prefix"), text_filter(query.get("q"), "q")
    live = LiveRange(namespace, utcnow(), prefix=prefix, contains=contains)
    detail = _flag(query.get("detail"), "detail")
    rows, total, more = await store.list_keys(store_of(request), caller_of(request), live, after, limit, total)
    audit(request, AuditAction.LIST, namespace or live.prefix, "ok")
    keys: list[object] = [_listed(row) if detail else row.key for row in rows]
    body: dict[str, object] = {"keys": keys, "total": total}
    if more:
        body["next"] = cursors.list_cursor(after.past(rows[-1]), total)
    return json_response(body)


def _listed(row: ListedKey) -> dict[str, object]:
    return {
        "key": row.key,
        "version": row.version,
        "lastModified": rfc3339(row.last_modified),
        "ttl": row.ttl,
        "expiresAt": rfc3339(row.expires_at),
    }


def _flag(raw: str | None, name: str) -> bool:
    """A boolean query parameter: ``true`` or ``false`` (absent: false); 400 for anything else."""
    if raw not in (None, "true", "false"):
        raise BadRequest(f"{name} must be true or false", fields={name: ["not true or false"]})
    return raw == "true"


async def _poll(request: web.Request, namespace: str | None, limit: int) -> web.Response:
    """The poll fallback: events after ``since_version`` (a revision), for consumers without WebSockets."""
    since = parse_since_version(request.query["since_version"])
    events, revision, more, reset = await store.poll_events(
        store_of(request), caller_of(request), since, namespace, limit
    )
    audit(request, AuditAction.POLL, namespace, "ok")
    body: dict[str, object] = {"events": events, "revision": revision, "more": more}
    if reset:
        body["reset"] = True
    return json_response(body)


async def key_history(request: web.Request) -> web.Response:
    """Every version of a key, newest first."""
    key = validate_key(request.match_info["key"])
    limit = parse_limit(request.query.get("limit"))
    before = cursors.read_history_cursor(request.query.get("cursor"))
    async with audited_failures(request, AuditAction.HISTORY, key):
        versions, next_before = await store.key_history(store_of(request), caller_of(request), key, before, limit)
    audit(request, AuditAction.HISTORY, key, "ok")
    for version in versions:
        version["at"] = rfc3339(version["at"])
    body: dict[str, object] = {"key": key, "versions": versions}
    if next_before is not None:
        body["next"] = cursors.history_cursor(next_before)
    return json_response(body)
