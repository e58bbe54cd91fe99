"""The audit log (SPEC §8): who did what to which key, when, with what outcome.

Changes are audited inside their own transaction (:func:`record`). Reads and denials go through
:class:`AuditWriter`, which batches them into one INSERT every few hundred milliseconds so a read does
not pay a Postgres round trip; it flushes on shutdown.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from datetime import datetime

import aiopg
import psycopg2
from aiohttp import web

from .keys import AUDIT, DB_POOL
from .sql import audit as sql
from .tasks import cancel_and_wait, complete_then_cancel
from .timeutil import utcnow

log = logging.getLogger(__name__)

_BATCH = 500
_FLUSH_SECONDS = 0.25
_MAX_BUFFERED = 50_000


@dataclass(frozen=True)
class AuditRecord:
    actor: str | None
    action: str
    key: str | None
    outcome: str
    request_id: str | None
    version: int | None = None
    at: datetime | None = None


async def record(cur: aiopg.Cursor, entry: AuditRecord) -> None:
    """Write one audit row with ``cur`` (inside the caller's transaction)."""
    params = asdict(entry)
    params["at"] = entry.at or utcnow()
    await cur.execute(sql.INSERT, params)


class AuditWriter:
    """A bounded buffer of audit rows flushed in batches by a background task."""

    def __init__(self, pool: aiopg.Pool) -> None:
        self._pool = pool
        self._buffer: list[dict[str, object]] = []
        self._wake = asyncio.Event()
        self.dropped = 0

    def add(self, entry: AuditRecord) -> None:
        """Queue a row (never blocks; past the bound, counts a drop and logs)."""
        if len(self._buffer) >= _MAX_BUFFERED:
            self.dropped += 1
            if self.dropped % 1000 == 1:
                log.error("audit buffer full; %d read/denial records dropped so far", self.dropped)
            return
        params = asdict(entry)
        params["at"] = entry.at or utcnow()
        self._buffer.append(params)
        if len(self._buffer) >= _BATCH:
            self._wake.set()

    async def flush(self) -> None:
        """Write everything buffered so far."""
        while self._buffer:
            batch, self._buffer = self._buffer[:_BATCH], self._buffer[_BATCH:]
            try:
                async with self._pool.acquire() as conn, conn.cursor() as cur, cur.begin():
                    for params in batch:
                        await cur.execute(sql.INSERT, params)
            except psycopg2.Error:
                # Put it back and let the next round retry; the bound above caps memory.
                self._buffer[:0] = batch
                raise

    async def run(self) -> None:
        """Flush periodically until cancelled."""
        delay = _FLUSH_SECONDS
        while True:
            try:
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await complete_then_cancel(self.flush())
                delay = _FLUSH_SECONDS
            except psycopg2.Error as exc:
                log.warning("audit flush failed (%s); retrying", exc.__class__.__name__)
                delay = min(delay * 2, 5.0)


async def audit_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the audit writer and its flush loop (needs ``pool_ctx`` first)."""
    writer = AuditWriter(app[DB_POOL])
    app[AUDIT] = writer
    task = asyncio.create_task(writer.run(), name="audit-flush")
    try:
        yield
    finally:
        await cancel_and_wait(task)
        try:
            await writer.flush()
        except psycopg2.Error:
            log.error("could not flush %d audit records at shutdown", len(writer._buffer))
