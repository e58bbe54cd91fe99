"""Reading the audit log (SPEC §4, §8): admins only, newest first by time then id."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import aiopg

from shared.errors import Forbidden
from shared.sql import audit as sql

from . import Caller


def require_admin(caller: Caller) -> None:
    if not caller.principal.is_admin:
        raise Forbidden("Only admins may read the audit log")


async def page(
    pool: aiopg.Pool,
    *,
    key: str | None,
    actor: str | None,
    since: datetime | None,
    before: tuple[datetime, int] | None,
    limit: int,
) -> list[tuple[Any, ...]]:
    """Up to ``limit`` records matching the filters, older than ``before`` (the (at, id) of the last
    record of the previous page): (id, at, actor, action, key, version, outcome, request_id) rows."""
    before_at, before_id = before if before is not None else (None, None)
    params = {
        "key": key,
        "actor": actor,
        "since": since,
        "before_at": before_at,
        "before_id": before_id,
        "limit": limit,
    }
    async with pool.acquire() as conn, conn.cursor() as cur:
        await cur.execute(sql.PAGE, params)
        return list(await cur.fetchall())
