"""``GET /openapi.json``: the API described as OpenAPI 3.1 (kept beside the routes it documents)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from shared.events import EventKind
from shared.web import json_response

_JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {_JSON: {"schema": schema}}}


def _ok(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": description}
    if schema is not None:
        answer["content"] = {_JSON: {"schema": schema}}
    return answer


def _errors(*codes: int) -> dict[str, Any]:
    texts = {
        400: "Invalid key, parameter or body",
        401: "Missing or invalid JWT",
        403: "The ACL denies it",
        404: "Absent, deleted or expired",
        412: "If-Match does not match the current version",
        413: "Value over 1 MiB",
        429: "Rate limited (see Retry-After)",
    }
    return {str(code): _ok(texts[code], _ref("Error")) for code in codes}


_KEY = {
    "name": "key",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "description": "e.g. app.feature-toggle.enabled or namespace/app/key",
}
_REVISION = (
    "The global revision of this state: a watch, snapshot or poll started after this answer includes it "
    "(null only for a key last written before revisions were kept on keys)."
)
_IF_MATCH = {
    "name": "If-Match",
    "in": "header",
    "required": False,
    "schema": {"type": "string"},
    "description": (
        'ETag ("3") or bare version (3); a comma-separated list passes if any matches; * needs the key to '
        'exist; weak tags (W/"3") never match; malformed -> 400. Checked after authorization.'
    ),
}
_LIMIT = {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}}
_CURSOR = {
    "name": "cursor",
    "in": "query",
    "schema": {"type": "string"},
    "description": "the `next` of the previous page",
}
_NS = {"name": "ns", "in": "path", "required": True, "schema": {"type": "string"}}
_AUTH_ERRORS = (401, 429)

SPEC: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "DynConfig API", "version": "1.0.0", "description": "Centralized, secure configuration."},
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        "schemas": {
            "Error": {
                "type": "object",
                "required": ["error", "message"],
                "properties": {
                    "error": {"type": "string"},
                    "message": {"type": "string"},
                    "fields": {"type": "object"},
                },
            },
            "Acls": {
                "type": "object",
                "properties": {
                    "read": {"type": "array", "items": {"type": "string"}},
                    "write": {"type": "array", "items": {"type": "string"}},
                },
            },
            "PutKey": {
                "type": "object",
                "required": ["value"],
                "additionalProperties": False,
                "properties": {
                    "value": {"description": "any JSON value, at most 1 MiB encoded"},
                    "ttl": {"type": ["integer", "null"], "minimum": 1},
                    "acls": {"oneOf": [_ref("Acls"), {"type": "null"}]},
                },
            },
            "PatchKey": {
                "type": "object",
                "minProperties": 1,
                "additionalProperties": False,
                "properties": {
                    "value": {},
                    "ttl": {"type": ["integer", "null"], "minimum": 1},
                    "acls": {"oneOf": [_ref("Acls"), {"type": "null"}]},
                },
            },
            "Written": {
                "type": "object",
                "required": ["key", "version", "revision", "lastModified"],
                "properties": {
                    "key": {"type": "string"},
                    "version": {"type": "integer"},
                    "revision": {"type": "integer", "description": _REVISION},
                    "lastModified": {"type": "string", "format": "date-time"},
                    "expiresAt": {"type": ["string", "null"], "format": "date-time"},
                },
            },
            "Key": {
                "type": "object",
                "required": ["key", "value", "version", "revision", "lastModified", "ttl", "expiresAt"],
                "properties": {
                    "key": {"type": "string"},
                    "value": {},
                    "version": {"type": "integer"},
                    "revision": {"type": ["integer", "null"], "description": _REVISION},
                    "lastModified": {"type": "string", "format": "date-time"},
                    "ttl": {"type": ["integer", "null"]},
                    "expiresAt": {"type": ["string", "null"], "format": "date-time"},
                },
            },
            "KeyList": {
                "type": "object",
                "required": ["keys", "total"],
                "properties": {
                    "keys": {"type": "array", "items": {"type": "string"}},
                    "total": {"type": "integer"},
                    "next": {"type": "string"},
                },
            },
            "History": {
                "type": "object",
                "required": ["key", "versions"],
                "properties": {
                    "key": {"type": "string"},
                    "versions": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "version": {"type": "integer"},
                                "value": {},
                                "event": {"enum": [kind.value for kind in EventKind]},
                                "actor": {"type": "string"},
                                "at": {"type": "string", "format": "date-time"},
                            },
                        },
                    },
                    "next": {"type": "string"},
                },
            },
            "Namespace": {
                "type": "object",
                "required": ["acls"],
                "properties": {"namespace": {"type": "string"}, "acls": _ref("Acls")},
            },
            "Audit": {
                "type": "object",
                "required": ["records"],
                "properties": {
                    "records": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "id": {"type": "integer"},
                                "at": {"type": "string", "format": "date-time"},
                                "actor": {"type": ["string", "null"]},
                                "action": {"type": "string"},
                                "key": {"type": ["string", "null"]},
                                "version": {"type": "integer"},
                                "outcome": {"type": "string"},
                                "requestId": {"type": ["string", "null"]},
                                "seal": {
                                    "type": "string",
                                    "enum": ["chain", "adopted", "none"],
                                    "description": "what vouches for the record: its seal in the audit chain; "
                                    "an adoption (written without a seal before the chain began or by an older "
                                    "release, in an id range a sealed adoption record covers); or nothing "
                                    "(GET /audit/verify reports it). Verification proves the first two.",
                                },
                            },
                        },
                    },
                    "next": {"type": "string"},
                },
            },
            "Rollback": {
                "type": "object",
                "required": ["version"],
                "additionalProperties": False,
                "properties": {"version": {"type": "integer", "minimum": 1, "description": "an update version"}},
            },
            "Health": {"type": "object", "properties": {"status": {"type": "string"}, "checks": {"type": "object"}}},
            "AuditVerify": {
                "type": "object",
                "required": ["ok", "checked", "headSeq", "summary"],
                "properties": {
                    "ok": {"type": "boolean", "description": "true when every sealed row and the chain's head verify"},
                    "checked": {"type": "integer", "description": "rows verified (before the first bad one)"},
                    "headSeq": {"type": "integer"},
                    "headSealedSeq": {
                        "type": ["integer", "null"],
                        "description": "the seq the head's seal covers (behind headSeq while the previous release "
                        "appends beside this one; null before this release first appended)",
                    },
                    "unsealedBeforeChain": {"type": "integer", "description": "rows from before the chain, adopted"},
                    "adopted": {
                        "type": "array",
                        "description": "adoption records: seq, at, afterId, throughId, count, digest, reason",
                        "items": {"type": "object"},
                    },
                    "unsealedHead": {
                        "type": ["object", "null"],
                        "description": "fromSeq, throughSeq: the last rows, appended by a process that does not "
                        "seal the head (the previous release, during a rolling upgrade)",
                    },
                    "checkpoints": {"type": "integer"},
                    "unauditedBeforeChain": {"type": "integer"},
                    "finding": {
                        "type": ["object", "null"],
                        "description": "the first thing wrong: kind altered, inserted, deleted, reordered, truncated, "
                        "unknown-key, derived-key, rolled-back, unsealed or unaudited-write, its seq and id, and a "
                        "sentence",
                    },
                    "summary": {"type": "string"},
                },
            },
        },
    },
    "security": [{"bearer": []}],
    "paths": {
        "/keys/{key}": {
            "parameters": [_KEY],
            "put": {
                "summary": "Create or replace a key",
                "parameters": [_IF_MATCH],
                "requestBody": _body(_ref("PutKey")),
                "responses": {
                    "201": _ok("Created", _ref("Written")),
                    "200": _ok("Replaced", _ref("Written")),
                    **_errors(400, 403, 412, 413, *_AUTH_ERRORS),
                },
            },
            "patch": {
                "summary": "Update a key's value (ttl/acls: admins only)",
                "parameters": [_IF_MATCH],
                "requestBody": _body(_ref("PatchKey")),
                "responses": {
                    "200": _ok("Updated", _ref("Written")),
                    **_errors(400, 403, 404, 412, 413, *_AUTH_ERRORS),
                },
            },
            "get": {
                "summary": "Fetch a key",
                "parameters": [
                    {
                        "name": "include",
                        "in": "query",
                        "description": "`acls`: admins also get the key's own ACL (null: the namespace's applies)",
                        "schema": {"type": "string", "enum": ["acls"]},
                    }
                ],
                "responses": {
                    "200": _ok("The key (ETag: its version)", _ref("Key")),
                    **_errors(400, 403, 404, *_AUTH_ERRORS),
                },
            },
            "delete": {
                "summary": "Soft-delete a key",
                "parameters": [_IF_MATCH],
                "responses": {"204": _ok("Deleted"), **_errors(400, 403, 404, 412, *_AUTH_ERRORS)},
            },
        },
        "/keys": {
            "get": {
                "summary": "List readable keys",
                "parameters": [
                    {"name": "namespace", "in": "query", "schema": {"type": "string"}},
                    _LIMIT,
                    _CURSOR,
                ],
                "responses": {"200": _ok("A page of keys", _ref("KeyList")), **_errors(400, *_AUTH_ERRORS)},
            }
        },
        "/keys/{key}/history": {
            "parameters": [_KEY],
            "get": {
                "summary": "Every version of a key, newest first",
                "parameters": [_LIMIT, _CURSOR],
                "responses": {"200": _ok("Versions", _ref("History")), **_errors(400, 403, 404, *_AUTH_ERRORS)},
            },
        },
        "/keys/{key}/rollback": {
            "parameters": [_KEY],
            "post": {
                "summary": "Write the value of an earlier version again, as a new version",
                "description": (
                    "As a PUT of that value by the caller (key write; ttl and ACLs kept), who must also be "
                    "allowed to read that version, as in the key's history. Audited as action `rollback` and "
                    "propagated like any write. 400 with fields.version when that version is a delete or an "
                    "expiry; 404 when the key or the version never existed."
                ),
                "parameters": [_IF_MATCH],
                "requestBody": _body(_ref("Rollback")),
                "responses": {
                    "200": _ok("Rolled back", _ref("Written")),
                    **_errors(400, 403, 404, 412, *_AUTH_ERRORS),
                },
            },
        },
        "/namespaces/{ns}": {
            "parameters": [_NS],
            "put": {
                "summary": "Set a namespace ACL (admins)",
                "requestBody": _body(_ref("Namespace")),
                "responses": {
                    "201": _ok("Created", _ref("Namespace")),
                    "200": _ok("Replaced", _ref("Namespace")),
                    **_errors(400, 403, *_AUTH_ERRORS),
                },
            },
            "get": {
                "summary": "A namespace ACL",
                "responses": {"200": _ok("The ACL", _ref("Namespace")), **_errors(400, 404, *_AUTH_ERRORS)},
            },
            "delete": {
                "summary": "Remove a namespace ACL (admins)",
                "responses": {"204": _ok("Removed"), **_errors(400, 403, 404, *_AUTH_ERRORS)},
            },
        },
        "/audit": {
            "get": {
                "summary": "The audit log, newest first (admins)",
                "parameters": [
                    {"name": "key", "in": "query", "schema": {"type": "string"}},
                    {"name": "actor", "in": "query", "schema": {"type": "string"}},
                    {"name": "since", "in": "query", "schema": {"type": "string", "format": "date-time"}},
                    _LIMIT,
                    _CURSOR,
                ],
                "responses": {"200": _ok("Records", _ref("Audit")), **_errors(400, 403, *_AUTH_ERRORS)},
            }
        },
        "/audit/verify": {
            "get": {
                "summary": "Verify the audit chain, as `python -m api_server.audit verify` does (admins)",
                "responses": {
                    "200": _ok("The report (ok false: broken)", _ref("AuditVerify")),
                    **_errors(403, *_AUTH_ERRORS),
                },
            }
        },
        "/ui": {"get": {"summary": "Redirects to /ui/", "security": [], "responses": {"308": {"description": "/ui/"}}}},
        "/ui/": {
            "get": {
                "summary": "The web console (HTML)",
                "security": [],
                "responses": {"200": {"description": "text/html"}},
            }
        },
        "/ui/{name}": {
            "get": {
                "summary": "A file of the web console",
                "security": [],
                "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "the file"}, **_errors(404)},
            }
        },
        "/health": {
            "get": {
                "summary": "Health",
                "security": [],
                "responses": {"200": _ok("Healthy", _ref("Health")), "503": _ok("Unhealthy", _ref("Health"))},
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "security": [],
                "responses": {"200": {"description": "text/plain"}},
            }
        },
        "/openapi.json": {
            "get": {"summary": "This document", "security": [], "responses": {"200": {"description": "OpenAPI"}}}
        },
    },
}


async def openapi_handler(request: web.Request) -> web.Response:
    """The OpenAPI document."""
    return json_response(SPEC)
