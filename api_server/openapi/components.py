"""The pieces of /openapi.json: the shared parameters, headers, error answers and component schemas.

The patterns are not restated here: they come from where the server validates (``shared.validation``,
the cursors, the ``If-Match`` parser), so the document says what the server accepts.
"""

from __future__ import annotations

from typing import Any

from api_server.handlers import cursors
from api_server.handlers.keys import IF_MATCH_PATTERN
from shared.changes.kinds import TXN_EVENT, EventKind
from shared.validation import (
    ACL_ENTRY_PATTERN,
    DEFAULT_LIMIT,
    MAX_ACL_ENTRIES,
    MAX_KEY_LENGTH,
    MAX_LIMIT,
    MAX_TTL_SECONDS,
    MAX_TXN_OPS,
    MAX_VERSION,
    NAME_PATTERN,
    RESERVED_SUFFIX_PATTERN,
)

_JSON = "application/json"


def ref(name: str) -> dict[str, str]:
    """A reference to the component schema ``name``."""
    return {"$ref": f"#/components/schemas/{name}"}


def body(schema: dict[str, Any]) -> dict[str, Any]:
    """A required JSON request body."""
    return {"required": True, "content": {_JSON: {"schema": schema}}}


def _header(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"description": description, "required": True, "schema": schema or {"type": "string"}}


ETAG = {"ETag": _header('The version, quoted: "3"', {"type": "string", "pattern": '^"[0-9]+"$'})}
_COUNT = {"type": "string", "pattern": "^[0-9]+$"}


def ok(description: str, schema: dict[str, Any] | None = None, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    """An answer: its JSON body's schema and its headers, when it has them."""
    answer: dict[str, Any] = {"description": description}
    if schema is not None:
        answer["content"] = {_JSON: {"schema": schema}}
    if headers:
        answer["headers"] = headers
    return answer


_ERRORS = {
    400: "Invalid key, parameter, header or body (malformed JSON included); `fields` names what",
    401: "Missing or invalid JWT",
    403: "The ACL denies it",
    404: "Absent, deleted or expired",
    412: "If-Match does not match the current version (POST /txn: a compare failed)",
    413: "Value over 1 MiB, or a body over the server's limit",
    429: "Rate limited",
    503: "Not now: Postgres unreachable, a write conflict with another replica, or shutting down",
}
_RETRY_AFTER = {"Retry-After": _header("Seconds to wait before trying again", _COUNT)}
_HEADERS = {
    429: {
        **_RETRY_AFTER,
        "X-RateLimit-Limit": _header("Requests per minute allowed", _COUNT),
        "X-RateLimit-Remaining": _header("Requests left in the window", _COUNT),
    },
    503: _RETRY_AFTER,
}


def errors(*codes: int) -> dict[str, Any]:
    """The JSON error answers ``codes``, plus those every authenticated call can get: 401, 429, 503."""
    every = sorted({*codes, 401, 429, 503})
    return {str(code): ok(_ERRORS[code], ref("Error"), _HEADERS.get(code)) for code in every}


def _name(pattern: str) -> dict[str, Any]:
    return {"type": "string", "minLength": 1, "maxLength": MAX_KEY_LENGTH, "pattern": pattern}


def query(name: str, schema: dict[str, Any], description: str = "") -> dict[str, Any]:
    """An optional query parameter."""
    return {"name": name, "in": "query", "schema": schema, **({"description": description} if description else {})}


KEY = {
    "name": "key",
    "in": "path",
    "required": True,
    "schema": {**_name(NAME_PATTERN), "not": {"pattern": RESERVED_SUFFIX_PATTERN}},
    "description": (
        "e.g. app.feature-toggle.enabled or namespace/app/key: segments of A-Z a-z 0-9 _ : - joined by single . "
        "or /, starting with a letter or digit, at most 256 characters, not ending in /history or /rollback"
    ),
}
NAMESPACE = _name(NAME_PATTERN)
NAMESPACE_TEXT = "a key prefix: the key rules, any last segment"
NS = {"name": "ns", "in": "path", "required": True, "schema": NAMESPACE, "description": NAMESPACE_TEXT}
_REVISION = (
    "The global revision of this state: a watch, snapshot or poll started after this answer includes it "
    "(null only for a key last written before revisions were kept on keys)."
)
IF_MATCH = {
    "name": "If-Match",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "pattern": IF_MATCH_PATTERN},
    "description": (
        'ETag ("3") or bare version (3); a comma-separated list passes if any matches; * needs the key to '
        'exist; weak tags (W/"3") never match; malformed -> 400. Checked after authorization.'
    ),
}
LIMIT = query("limit", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT})
_OPAQUE = "the `next` of the previous page (opaque: pass it back as it came; the previous release's also read)"


def cursor(pattern: str) -> dict[str, Any]:
    """The ``cursor`` of a paged listing whose cursors match ``pattern``."""
    return query("cursor", {"type": "string", "pattern": pattern}, _OPAQUE)


_ACL_ENTRY = {"type": "string", "pattern": ACL_ENTRY_PATTERN, "description": "a username, *, or a prefix ending in *"}
_ACL_LIST = {"type": "array", "maxItems": MAX_ACL_ENTRIES, "items": _ACL_ENTRY}
_TTL = {"type": ["integer", "null"], "minimum": 1, "maximum": MAX_TTL_SECONDS, "description": "seconds; null: none"}
TIME = {"type": "string", "format": "date-time"}
_NULLABLE_TIME = {"type": ["string", "null"], "format": "date-time"}
_CHANGE = {
    "type": "object",
    "required": ["event", "key", "version", "lastModified"],
    "properties": {
        "event": {"enum": [kind.value for kind in EventKind]},
        "key": {"type": "string"},
        "version": {"type": "integer"},
        "revision": {"type": "integer"},
        "value": {"description": "update events only"},
        "lastModified": TIME,
    },
}


_TXN_EVENT = {
    "type": "object",
    "required": ["event", "revision", "changes"],
    "description": "a transaction (POST /txn): the changes of it the reader may see, each with its revision",
    "properties": {
        "event": {"const": TXN_EVENT},
        "revision": {"type": "integer"},
        "changes": {"type": "array", "minItems": 1, "items": _CHANGE},
    },
}
_TXN_KEY = {**_name(NAME_PATTERN), "not": {"pattern": RESERVED_SUFFIX_PATTERN}}


def _txn_write(op: str) -> dict[str, Any]:
    """An op of ``POST /txn`` that writes a value: its own call's body, with ``op`` and ``key``."""
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "op": {"const": op},
            "key": _TXN_KEY,
            "value": {},
            "ttl": _TTL,
            "acls": {"oneOf": [ref("Acls"), {"type": "null"}]},
        },
    }


def _page(item: str, items: dict[str, Any], next_pattern: str, **more: Any) -> dict[str, Any]:
    """A page of a listing: ``item`` (a list), ``more`` (required too), and ``next`` when there is more."""
    properties = {item: {"type": "array", "items": items}, **more, "next": {"type": "string", "pattern": next_pattern}}
    return {"type": "object", "required": [item, *more], "properties": properties}


SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error", "message"],
        "properties": {
            "error": {"type": "string"},
            "message": {"type": "string"},
            "fields": {"type": "object"},
            "in": {"enum": ["compare", "ops"], "description": "POST /txn: the list of the part that failed"},
            "index": {"type": "integer", "minimum": 0, "description": "POST /txn: its position in that list"},
        },
    },
    "Acls": {"type": "object", "additionalProperties": False, "properties": {"read": _ACL_LIST, "write": _ACL_LIST}},
    "PutKey": {
        "type": "object",
        "required": ["value"],
        "additionalProperties": False,
        "properties": {
            "value": {"description": "any JSON value, at most 1 MiB encoded"},
            "ttl": _TTL,
            "acls": {"oneOf": [ref("Acls"), {"type": "null"}]},
        },
    },
    "PatchKey": {
        "type": "object",
        "minProperties": 1,
        "additionalProperties": False,
        "properties": {"value": {}, "ttl": _TTL, "acls": {"oneOf": [ref("Acls"), {"type": "null"}]}},
    },
    "Written": {
        "type": "object",
        "required": ["key", "version", "revision", "lastModified", "expiresAt"],
        "properties": {
            "key": {"type": "string"},
            "version": {"type": "integer"},
            "revision": {"type": "integer", "description": "The global revision of this write"},
            "lastModified": TIME,
            "expiresAt": _NULLABLE_TIME,
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
            "lastModified": TIME,
            "ttl": {"type": ["integer", "null"]},
            "expiresAt": _NULLABLE_TIME,
            "acls": {"oneOf": [ref("Acls"), {"type": "null"}], "description": "?include=acls, admins only"},
            "access": {
                "type": "object",
                "description": "?include=access: what the caller may do with the key",
                "required": ["read", "write", "admin"],
                "properties": {"read": {"type": "boolean"}, "write": {"type": "boolean"}, "admin": {"type": "boolean"}},
            },
            "governedBy": {
                "type": "object",
                "description": "?include=access: the ACL that decides who may read and write the key: its own "
                "(entries for admins only), the nearest namespace's, or none (its creator and admins)",
                "required": ["source", "namespace", "acls"],
                "properties": {
                    "source": {"enum": ["key", "namespace", "none"]},
                    "namespace": {"type": ["string", "null"]},
                    "acls": {"oneOf": [ref("Acls"), {"type": "null"}]},
                },
            },
        },
    },
    "KeyList": _page(
        "keys",
        {
            "oneOf": [
                {"type": "string"},
                {
                    "type": "object",
                    "description": "with detail=true",
                    "required": ["key", "version", "lastModified", "ttl", "expiresAt"],
                    "properties": {
                        "key": {"type": "string"},
                        "version": {"type": "integer"},
                        "lastModified": TIME,
                        "ttl": {"type": ["integer", "null"]},
                        "expiresAt": _NULLABLE_TIME,
                    },
                },
            ]
        },
        cursors.LIST_PATTERN,
        total={"type": "integer"},
    ),
    "Poll": {
        "type": "object",
        "required": ["events", "revision", "more"],
        "properties": {
            "events": {"type": "array", "items": {"oneOf": [_CHANGE, _TXN_EVENT]}},
            "revision": {"type": "integer", "description": "poll from here next"},
            "more": {"type": "boolean"},
            "reset": {"const": True, "description": "since_version is older than the change log: start over"},
        },
    },
    "History": _page(
        "versions",
        {
            "type": "object",
            "required": ["version", "value", "event", "actor", "at"],
            "properties": {
                "version": {"type": "integer"},
                "value": {},
                "event": {"enum": [kind.value for kind in EventKind]},
                "actor": {"type": "string"},
                "at": TIME,
            },
        },
        cursors.HISTORY_PATTERN,
        key={"type": "string"},
    ),
    "NamespaceAcls": {
        "type": "object",
        "required": ["acls"],
        "additionalProperties": False,
        "properties": {"acls": ref("Acls")},
    },
    "Namespaces": {
        "type": "object",
        "required": ["namespaces"],
        "properties": {"namespaces": {"type": "array", "items": ref("Namespace")}},
    },
    "Namespace": {
        "type": "object",
        "required": ["namespace", "acls", "updatedBy", "updatedAt"],
        "properties": {
            "namespace": {"type": "string"},
            "acls": ref("Acls"),
            "updatedBy": {"type": "string"},
            "updatedAt": TIME,
        },
    },
    "Audit": _page(
        "records",
        {
            "type": "object",
            "required": ["id", "at", "actor", "action", "key", "outcome", "requestId"],
            "properties": {
                "id": {"type": "integer"},
                "at": TIME,
                "actor": {"type": ["string", "null"]},
                "action": {"type": "string"},
                "key": {"type": ["string", "null"]},
                "version": {"type": "integer", "description": "after the change (absent for reads and denials)"},
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
        cursors.AUDIT_PATTERN,
    ),
    "Txn": {
        "type": "object",
        "required": ["ops"],
        "additionalProperties": False,
        "properties": {
            "compare": {
                "type": "array",
                "maxItems": MAX_TXN_OPS,
                "description": "checked in order, before any op; the first that fails refuses the transaction (412)",
                "items": {
                    "oneOf": [
                        {
                            "type": "object",
                            "required": ["key", "version"],
                            "additionalProperties": False,
                            "properties": {
                                "key": _TXN_KEY,
                                "version": {"type": "integer", "minimum": 1, "maximum": MAX_VERSION},
                            },
                            "description": "the key is live at this version",
                        },
                        {
                            "type": "object",
                            "required": ["key", "exists"],
                            "additionalProperties": False,
                            "properties": {"key": _TXN_KEY, "exists": {"type": "boolean"}},
                            "description": "the key is live (true), or not (false)",
                        },
                    ]
                },
            },
            "ops": {
                "type": "array",
                "minItems": 1,
                "maxItems": MAX_TXN_OPS,
                "description": "a key at most once; each as its own call (PUT, PATCH, DELETE) would be",
                "items": {
                    "oneOf": [
                        {**_txn_write("put"), "required": ["op", "key", "value"]},
                        {**_txn_write("patch"), "required": ["op", "key"], "minProperties": 3},
                        {
                            "type": "object",
                            "required": ["op", "key"],
                            "additionalProperties": False,
                            "properties": {"op": {"const": "delete"}, "key": _TXN_KEY},
                        },
                    ]
                },
            },
        },
    },
    "TxnResult": {
        "type": "object",
        "required": ["revision", "results"],
        "properties": {
            "revision": {"type": "integer", "description": "the transaction's revision, shared by all its changes"},
            "results": {
                "type": "array",
                "description": "in the order of ops",
                "items": {
                    "type": "object",
                    "required": ["key", "version"],
                    "properties": {"key": {"type": "string"}, "version": {"type": "integer"}},
                },
            },
        },
    },
    "Rollback": {
        "type": "object",
        "required": ["version"],
        "additionalProperties": False,
        "properties": {
            "version": {"type": "integer", "minimum": 1, "maximum": MAX_VERSION, "description": "an update version"}
        },
    },
    "Health": {
        "type": "object",
        "required": ["status", "version", "checks"],
        "properties": {
            "status": {"enum": ["healthy", "unhealthy"]},
            "version": {"type": "string", "description": "the release of this process (shared/version.py)"},
            "checks": {
                "type": "object",
                "description": "each check's state; `schema` is the database's schema version",
            },
            "error": {"type": "string"},
            "message": {"type": "string"},
        },
    },
    "Live": {
        "type": "object",
        "required": ["status"],
        "additionalProperties": False,
        "properties": {"status": {"const": "alive"}},
    },
    "AuditVerify": {
        "type": "object",
        "required": ["ok", "checked", "headSeq", "summary"],
        "properties": {
            "ok": {"type": "boolean", "description": "true when every sealed row and the chain's head verify"},
            "checked": {"type": "integer", "description": "rows verified (before the first bad one)"},
            "firstSeq": {"type": "integer", "description": "the first seq verified (1, or after the newest prune)"},
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
            "pruned": {
                "type": ["object", "null"],
                "description": "seq, at, throughSeq, rows, before: the newest prune record (retention), which "
                "verification starts after; null when nothing was pruned",
            },
            "checkpoints": {"type": "integer"},
            "checkpointsPruned": {
                "type": "integer",
                "description": "checkpoints older than the prune's anchor, which can no longer be checked",
            },
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
}
