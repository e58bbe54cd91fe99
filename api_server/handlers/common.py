"""Helpers every handler uses: the store, the caller, auditing of failures (cursors: ``cursors.py``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web

from api_server.cache import CACHE
from api_server.committer import COMMITTER
from api_server.domain.keys import Caller, Store
from api_server.middlewares import CALLER
from api_server.state_reader import STATE_READER
from shared.audit.writer import AUDIT, AuditRecord
from shared.changes.kinds import AuditAction
from shared.db import DB_POOL
from shared.errors import DynConfigError, Forbidden, NotFound, PreconditionFailed
from shared.security.crypto import KEYRING
from shared.security.nsacls import NAMESPACE_ACLS

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


def audit(request: web.Request, action: AuditAction, key: str | None, outcome: str, version: int | None = None) -> None:
    """Queue an audit row for a read or a denial (writes are audited in their transaction)."""
    caller = caller_of(request)
    request.app[AUDIT].add(AuditRecord(caller.username, action, key, outcome, caller.request_id, version))


@asynccontextmanager
async def audited_failures(request: web.Request, action: AuditAction, key: str | None) -> AsyncIterator[None]:
    """Audit denials, misses and failed preconditions of ``action`` on ``key`` (or of the action the
    error names: a refused PUT is a refused create or replace), then re-raise."""
    try:
        yield
    except DynConfigError as exc:
        audit_refusal(request, exc, action, key)
        raise


def audit_refusal(request: web.Request, exc: DynConfigError, action: AuditAction, key: str | None) -> None:
    """Queue the audit row of a denial, a miss or a failed precondition (other errors have none)."""
    outcome = _OUTCOMES.get(type(exc))
    if outcome is not None:
        audit(request, AuditAction(exc.audit_action or action), key, outcome)
