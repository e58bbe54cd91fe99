"""Reading the audit log (SPEC §4, §8): admins only, newest first by time then id."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import aiopg

from api_server.domain import Caller
from shared.audit.chain import AuditChain
from shared.errors import Forbidden
from shared.sql import audit as sql

#: How a record is vouched for (``seal`` in ``GET /audit``): sealed into the chain when written;
#: written without a seal (before the chain began, or by a release without it) in an id range an
#: adoption vouches for; or neither, so nothing vouches for it. ``verify`` proves the first two.
SEALED, ADOPTED, UNSEALED = "chain", "adopted", "none"


def require_admin(caller: Caller) -> None:
    if not caller.principal.is_admin:
        raise Forbidden("Only admins may read the audit log")


@dataclass(frozen=True)
class AuditRow:
    """One record as ``GET /audit`` shows it: the stored record and how it is vouched for."""

    record: sql.Record
    seal: str

    @classmethod
    def of(cls, record: sql.Record, adopted_through: int) -> AuditRow:
        seal = SEALED if record.sealed else ADOPTED if 0 < record.id <= adopted_through else UNSEALED
        return cls(record, seal)


async def page(
    pool: aiopg.Pool,
    chain: AuditChain,
    *,
    key: str | None,
    actor: str | None,
    since: datetime | None,
    before: tuple[datetime, int] | None,
    limit: int,
    action: str | None = None,
    outcome: str | None = None,
) -> list[AuditRow]:
    """Up to ``limit`` records matching the filters, older than ``before`` (the (at, id) of the last
    record of the previous page). Rows without a seal count as adopted only as far as the head's seal,
    checked here, says adoptions reach: moving that mark in the database takes the key."""
    async with pool.acquire() as conn, conn.cursor() as cur:
        head, _ = await sql.read_head(cur)
        records = await sql.records_page(
            cur, key=key, actor=actor, since=since, before=before, limit=limit, action=action, outcome=outcome
        )
    adopted_through = (head.adopted_through or 0) if head.seal_verifies(chain.keys) else 0
    return [AuditRow.of(record, adopted_through) for record in records]
