"""Helpers every handler uses: the store, the caller, cursors, auditing of failures."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web

from shared.appkeys import AUDIT, DB_POOL, KEYRING, NAMESPACE_ACLS
from shared.audit import AuditRecord
from shared.errors import BadRequest, DynConfigError, Forbidden, NotFound, PreconditionFailed

from ..cache import CACHE
from ..committer import COMMITTER
from ..domain.keys import Caller, Store
from ..middlewares import CALLER
from ..reads import STATE_READER

_OUTCOMES: dict[type[DynConfigError], str] = {
    Forbidden: "denied",
    NotFound: "not_found",
    PreconditionFailed: "precondition_failed",
}


def store_of(request: web.Request) -> Store:
    return app_store(request.app)


def app_store(app: web.Application) -> Store:
    """What the key operations need, from the process's app (tests call the domain with it too)."""
    return Store(
        pool=app[DB_POOL],
        keyring=app[KEYRING],
        cache=app[CACHE],
        committer=app[COMMITTER],
        namespaces=app[NAMESPACE_ACLS],
        reader=app[STATE_READER],
    )


def caller_of(request: web.Request) -> Caller:
    return request[CALLER]


def audit(request: web.Request, action: str, key: str | None, outcome: str, version: int | None = None) -> None:
    """Queue an audit row for a read or a denial (writes are audited in their transaction)."""
    caller = caller_of(request)
    request.app[AUDIT].add(AuditRecord(caller.username, action, key, outcome, caller.request_id, version))


@asynccontextmanager
async def audited_failures(request: web.Request, action: str, key: str | None) -> AsyncIterator[None]:
    """Audit denials, misses and failed preconditions of ``action`` on ``key``, then re-raise."""
    try:
        yield
    except DynConfigError as exc:
        outcome = _OUTCOMES.get(type(exc))
        if outcome is not None:
            audit(request, action, key, outcome)
        raise


def encode_cursor(position: Any) -> str:
    """An opaque cursor for ``position``."""
    return base64.urlsafe_b64encode(json.dumps(position).encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None, kind: type) -> Any:
    """The position inside a cursor made by :func:`encode_cursor`, or 400."""
    if cursor is None:
        return None
    try:
        position = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        position = None
    out_of_range = isinstance(position, int) and not 0 <= position < 2**62  # a bigint in SQL
    if not isinstance(position, kind) or isinstance(position, bool) or out_of_range:
        raise BadRequest("Invalid cursor", fields={"cursor": ["not a cursor this server issued"]})
    return position
