"""``GET /openapi.json``: the API described as OpenAPI 3.1, kept beside the routes it documents.

The document is exact, and tests/test_openapi_conformance.py holds it to that with schemathesis (every
check, a fixed seed, a real server): every request it allows is accepted, every one it forbids is
refused, every status, header and body an operation can answer is listed. Its pieces are in
``components.py``.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from api_server.console import asset_names
from api_server.handlers import cursors
from api_server.handlers.keys import INCLUDE_PATTERN
from api_server.openapi.components import (
    ETAG,
    IF_MATCH,
    KEY,
    LIMIT,
    NAMESPACE,
    NAMESPACE_TEXT,
    NS,
    SCHEMAS,
    TIME,
    body,
    cursor,
    errors,
    ok,
    query,
    ref,
)
from shared.runtime.web import json_response
from shared.validation import LARGEST_WHOLE_NUMBER, TEXT_FILTER_PATTERN

_WRITTEN = ref("Written")
_OPEN: dict[str, Any] = {"security": []}

SPEC: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "DynConfig API", "version": "1.0.0", "description": "Centralized, secure configuration."},
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        "schemas": SCHEMAS,
    },
    "security": [{"bearer": []}],
    "paths": {
        "/keys/{key}": {
            "parameters": [KEY],
            "put": {
                "summary": "Create or replace a key",
                "parameters": [IF_MATCH],
                "requestBody": body(ref("PutKey")),
                "responses": {
                    "201": ok("Created", _WRITTEN, ETAG),
                    "200": ok("Replaced", _WRITTEN, ETAG),
                    **errors(400, 403, 412, 413),
                },
            },
            "patch": {
                "summary": "Update a key's value (ttl/acls: admins only)",
                "parameters": [IF_MATCH],
                "requestBody": body(ref("PatchKey")),
                "responses": {"200": ok("Updated", _WRITTEN, ETAG), **errors(400, 403, 404, 412, 413)},
            },
            "get": {
                "summary": "Fetch a key",
                "parameters": [
                    query(
                        "include",
                        {"type": "string", "pattern": INCLUDE_PATTERN},
                        "comma-separated: `acls`: admins also get the key's own ACL (null: the namespace's "
                        "applies); `access`: what the caller may do with the key (`access`) and the ACL that "
                        "decides it (`governedBy`)",
                    )
                ],
                "responses": {"200": ok("The key", ref("Key"), ETAG), **errors(400, 403, 404)},
            },
            "delete": {
                "summary": "Soft-delete a key",
                "parameters": [IF_MATCH],
                "responses": {"204": ok("Deleted"), **errors(400, 403, 404, 412)},
            },
        },
        "/keys": {
            "get": {
                "summary": "List readable keys, or poll for changes (with since_version)",
                "parameters": [
                    query("namespace", NAMESPACE, NAMESPACE_TEXT),
                    LIMIT,
                    cursor(cursors.LIST_PATTERN),
                    query("prefix", {"type": "string", "pattern": TEXT_FILTER_PATTERN}, "search: keys starting so"),
                    query(
                        "q",
                        {"type": "string", "pattern": TEXT_FILTER_PATTERN},
                        "search: keys whose name holds this text, either case",
                    ),
                    query(
                        "sort",
                        {"type": "string", "pattern": cursors.SORT_PATTERN, "default": "name"},
                        "name (the default), or lastModified, version, expiresAt (no ttl: never), each with a "
                        "leading - for descending; the cursor keeps the order",
                    ),
                    query(
                        "detail",
                        {"type": "string", "enum": ["true", "false"]},
                        "true: each key as {key, version, lastModified, ttl, expiresAt}",
                    ),
                    query(
                        "since_version",
                        {"type": "integer", "minimum": 0, "maximum": LARGEST_WHOLE_NUMBER},
                        "poll: the changes after this revision (the cursor is then not used)",
                    ),
                ],
                "responses": {
                    "200": ok(
                        "A page of keys, or with since_version the changes after it",
                        {"oneOf": [ref("KeyList"), ref("Poll")]},
                    ),
                    **errors(400),
                },
            }
        },
        "/keys/{key}/history": {
            "parameters": [KEY],
            "get": {
                "summary": "Every version of a key, newest first",
                "parameters": [LIMIT, cursor(cursors.HISTORY_PATTERN)],
                "responses": {"200": ok("Versions", ref("History")), **errors(400, 403, 404)},
            },
        },
        "/keys/{key}/rollback": {
            "parameters": [KEY],
            "post": {
                "summary": "Write the value of an earlier version again, as a new version",
                "description": (
                    "As a PUT of that value by the caller (key write; ttl and ACLs kept), who must also be "
                    "allowed to read that version, as in the key's history. Audited as action `rollback` and "
                    "propagated like any write. 400 with fields.version when that version is a delete or an "
                    "expiry; 404 when the key or the version never existed."
                ),
                "parameters": [IF_MATCH],
                "requestBody": body(ref("Rollback")),
                "responses": {"200": ok("Rolled back", _WRITTEN, ETAG), **errors(400, 403, 404, 412, 413)},
            },
        },
        "/txn": {
            "post": {
                "summary": "Write several keys at once, all or nothing (a transaction)",
                "description": (
                    "Compares first, then ops, in order; each op needs what its own call needs (PUT: create "
                    "or key write, ttl/acls changes admins only; PATCH and DELETE: key write on a live key). "
                    "A compare needs read on its key. The first failing compare or op fails the whole "
                    "transaction with its status and error plus `in` (compare or ops) and `index`; nothing is "
                    "written. On success every change has the transaction's revision, which no other write "
                    "shares; watchers get one `txn` frame of the changes they may read (or single events "
                    'with `"txn": "split"` on subscribe), pollers one `txn` event. Audited one record per op, '
                    "sharing the request id. The body is at most 4 MiB; If-Match is not used."
                ),
                "requestBody": body(ref("Txn")),
                "responses": {"200": ok("Committed", ref("TxnResult")), **errors(400, 403, 404, 412, 413)},
            }
        },
        "/namespaces": {
            "get": {
                "summary": "Every namespace ACL, by name",
                "responses": {"200": ok("The ACLs", ref("Namespaces")), **errors()},
            }
        },
        "/namespaces/{ns}": {
            "parameters": [NS],
            "put": {
                "summary": "Set a namespace ACL (admins)",
                "requestBody": body(ref("NamespaceAcls")),
                "responses": {
                    "201": ok("Created", ref("Namespace")),
                    "200": ok("Replaced", ref("Namespace")),
                    **errors(400, 403, 413),
                },
            },
            "get": {
                "summary": "A namespace ACL",
                "responses": {"200": ok("The ACL", ref("Namespace")), **errors(400, 404)},
            },
            "delete": {
                "summary": "Remove a namespace ACL (admins)",
                "responses": {"204": ok("Removed"), **errors(400, 403, 404)},
            },
        },
        "/audit": {
            "get": {
                "summary": "The audit log, newest first (admins)",
                "parameters": [
                    query("key", {"type": "string", "pattern": TEXT_FILTER_PATTERN}),
                    query("actor", {"type": "string", "pattern": TEXT_FILTER_PATTERN}),
                    query("action", {"type": "string", "pattern": TEXT_FILTER_PATTERN}, "e.g. create, read, compare"),
                    query(
                        "outcome",
                        {"type": "string", "pattern": TEXT_FILTER_PATTERN},
                        "ok, denied, not_found, precondition_failed",
                    ),
                    query("since", TIME),
                    LIMIT,
                    cursor(cursors.AUDIT_PATTERN),
                ],
                "responses": {"200": ok("Records", ref("Audit")), **errors(400, 403)},
            }
        },
        "/audit/verify": {
            "get": {
                "summary": "Verify the audit chain, as `dynconfig-audit verify` does (admins)",
                "responses": {"200": ok("The report (ok false: broken)", ref("AuditVerify")), **errors(403)},
            }
        },
        "/ui": {"get": {"summary": "Redirects to /ui/", **_OPEN, "responses": {"308": {"description": "/ui/"}}}},
        "/ui/": {
            "get": {
                "summary": "The web console",
                **_OPEN,
                "responses": {"200": {"description": "The page", "content": {"text/html": {}}}},
            }
        },
        "/ui/{name}": {
            "get": {
                "summary": "A file of the web console",
                **_OPEN,
                "parameters": [
                    {
                        "name": "name",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "enum": asset_names()},
                    },
                ],
                "responses": {
                    "200": {
                        "description": "The file",
                        "content": {kind: {} for kind in ("text/html", "text/css", "text/javascript")},
                    },
                    "404": ok("No such file", ref("Error")),
                },
            }
        },
        "/health": {
            "get": {
                "summary": "Health",
                **_OPEN,
                "responses": {"200": ok("Healthy", ref("Health")), "503": ok("Unhealthy", ref("Health"))},
            }
        },
        "/health/live": {
            "get": {
                "summary": "Liveness: 200 while the process answers (never looks at Postgres, Redis or the JWKS)",
                **_OPEN,
                "responses": {"200": ok("Alive", ref("Live"))},
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                **_OPEN,
                "responses": {"200": {"description": "Prometheus text format", "content": {"text/plain": {}}}},
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                **_OPEN,
                "responses": {"200": ok("OpenAPI 3.1", {"type": "object"})},
            }
        },
    },
}


async def openapi_handler(request: web.Request) -> web.Response:
    """The OpenAPI document."""
    return json_response(SPEC)
