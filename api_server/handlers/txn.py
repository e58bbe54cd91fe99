"""``POST /txn`` (SPEC §4): the body checked part by part, so that an error names its place."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from api_server.domain import txn as store
from api_server.handlers.common import audit_refusal, caller_of, store_of
from shared.changes.kinds import AuditAction
from shared.errors import BadRequest, DynConfigError
from shared.runtime.web import json_response, read_json
from shared.validation import (
    CompareSchema,
    PatchKeySchema,
    PutKeySchema,
    TxnOpSchema,
    TxnSchema,
    load,
    validate_key,
)

_TXN = TxnSchema()
_COMPARE = CompareSchema()
_OP = TxnOpSchema()
_BODIES = {"put": PutKeySchema(), "patch": PatchKeySchema()}
#: What the audit log records of a refused op (a refused put names itself create or replace).
_ACTIONS = {"put": AuditAction.REPLACE, "patch": AuditAction.PATCH, "delete": AuditAction.DELETE}


async def post_txn(request: web.Request) -> web.Response:
    """Apply a transaction: 200 ``{revision, results: [{key, version}]}``, or its first failure."""
    body = load(_TXN, await read_json(request))
    compares = [_compare(index, raw) for index, raw in enumerate(body["compare"])]
    writes = [_write(index, raw) for index, raw in enumerate(body["ops"])]
    seen: set[str] = set()
    for index, write in enumerate(writes):
        if write.key in seen:
            problem = "a transaction writes a key at most once"
            raise BadRequest(f"Key '{write.key}' is written twice: {problem}", fields={"key": [problem]}).at(
                store.OPS, index
            )
        seen.add(write.key)
    try:
        revision, states = await store.transact(store_of(request), caller_of(request), compares, writes)
    except DynConfigError as exc:
        if exc.part is not None:
            part, index = exc.part
            if part == store.COMPARE:
                audit_refusal(request, exc, AuditAction.COMPARE, compares[index].key)
            else:
                audit_refusal(request, exc, _ACTIONS[writes[index].op], writes[index].key)
        raise
    results = [{"key": state.key, "version": state.version} for state in states]
    return json_response({"revision": revision, "results": results})


def _compare(index: int, raw: Any) -> store.Compare:
    try:
        fields = load(_COMPARE, raw)
        return store.Compare(validate_key(fields["key"]), fields.get("version"), fields.get("exists"))
    except DynConfigError as exc:
        raise exc.at(store.COMPARE, index) from None


def _write(index: int, raw: Any) -> store.Write:
    try:
        head = load(_OP, raw)
        key = validate_key(head["key"])
        rest = {name: value for name, value in raw.items() if name not in ("op", "key")}
        if head["op"] == "delete":
            if rest:
                problem = "a delete takes only op and key"
                raise BadRequest(f"Invalid op: {problem}", fields={name: [problem] for name in rest})
            return store.Write("delete", key, {})
        return store.Write(head["op"], key, load(_BODIES[head["op"]], rest))
    except DynConfigError as exc:
        raise exc.at(store.OPS, index) from None
