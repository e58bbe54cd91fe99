"""The audit log (SPEC §8): who did what to which key, when, with what outcome.

Changes are audited inside their own transaction (:func:`record`, or ``shared.changes.writes`` for key
changes). Reads and denials go through :class:`AuditWriter`, which batches them into one INSERT every
few hundred milliseconds so a read does not pay a Postgres round trip; it flushes on shutdown. Every
row is sealed into the tamper-evident chain of ``shared.audit.chain`` as it is written (:func:`append`).

No record can stop the writer: text with control characters is stored escaped (and counted), a row
Postgres still refuses is stored in a safe form or, failing that, dropped with a log line, and the rest
of its batch is written. A writer whose loop has stopped turns ``/health`` 503.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

import aiopg
import psycopg2
from aiohttp import web

from shared.audit.chain import AUDIT_CHAIN, AuditChain, Entry
from shared.db import DB_POOL, POSTGRES_UNREACHABLE
from shared.runtime.metrics import METRICS, ServingMetrics
from shared.runtime.supervisor import Backoff, cancel_and_wait, complete_then_cancel
from shared.sql import audit as audit_sql
from shared.text import escape_control
from shared.timeutil import utcnow

log = logging.getLogger(__name__)

_BATCH = 500
_FLUSH_SECONDS = 0.25
_MAX_BUFFERED = 50_000
_MAX_TEXT = 1000


@dataclass(frozen=True)
class AuditRecord:
    actor: str | None
    action: str
    key: str | None
    outcome: str
    request_id: str | None
    version: int | None = None
    at: datetime | None = None

    def made_safe(self) -> AuditRecord:
        """This record with control characters escaped and every text bounded (SPEC §8: the audit
        keeps what happened, in a form Postgres and a log reader can take)."""
        return replace(
            self,
            actor=_safe(self.actor),
            action=_safe(self.action) or "?",
            key=_safe(self.key),
            outcome=_safe(self.outcome) or "?",
            request_id=_safe(self.request_id),
        )


def _safe(text: str | None) -> str | None:
    return None if text is None else escape_control(text)[:_MAX_TEXT]


def _needs_repair(entry: AuditRecord) -> bool:
    return any(
        text is not None and (len(text) > _MAX_TEXT or escape_control(text) != text)
        for text in (entry.actor, entry.action, entry.key, entry.outcome, entry.request_id)
    )


def _entry(record: AuditRecord) -> Entry:
    # Not dataclasses.asdict: it deep-copies, and this runs for every audited read (a profile of
    # GET showed it at a fifth of the API's busy time).
    r = record
    return Entry(r.at or utcnow(), r.actor, r.action, r.key, r.version, r.outcome, r.request_id)


def safe_record(entry: AuditRecord) -> AuditRecord:
    """``entry``, or its safe form when it has text Postgres or a log reader should not take as is."""
    return entry.made_safe() if _needs_repair(entry) else entry


async def append(cur: aiopg.Cursor, chain: AuditChain, records: Sequence[AuditRecord]) -> None:
    """Seal ``records`` into the chain and write them, in one statement after the chain's head is
    locked; inside the caller's transaction, which holds the head until it ends."""
    await audit_sql.append(cur, chain, [_entry(r) for r in records])


async def record(cur: aiopg.Cursor, chain: AuditChain, entry: AuditRecord) -> None:
    """Write one audit row with ``cur`` (inside the caller's transaction)."""
    await append(cur, chain, [safe_record(entry)])


class AuditWriter:
    """A bounded buffer of audit rows flushed in batches by a supervised background task."""

    def __init__(self, pool: aiopg.Pool, metrics: ServingMetrics, chain: AuditChain) -> None:
        self._pool = pool
        self._chain = chain
        self._metrics = metrics
        self._buffer: list[AuditRecord] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        """True while the flush loop runs (``/health`` reports 503 otherwise)."""
        return self._task is not None and not self._task.done()

    @property
    def status(self) -> str:
        """The ``audit`` check of ``/health``: ``"ok"`` while the loop runs, else ``"stopped"``."""
        return "ok" if self.running else "stopped"

    def add(self, entry: AuditRecord) -> None:
        """Queue a row (never blocks; past the bound, counts a drop and logs)."""
        if len(self._buffer) >= _MAX_BUFFERED:
            self._metrics.audit_dropped.inc()
            log.error("audit buffer full (%d records): a %s record was dropped", _MAX_BUFFERED, entry.action)
            return
        if _needs_repair(entry):
            self._repaired(entry, "control characters or over-long text")
            entry = entry.made_safe()
        if entry.at is None:
            entry = replace(entry, at=utcnow())
        self._buffer.append(entry)
        if len(self._buffer) >= _BATCH:
            self._wake.set()

    def _repaired(self, entry: AuditRecord, why: str) -> None:
        self._metrics.audit_repaired.inc()
        safe = entry.made_safe()
        log.warning("audit record repaired (%s): action=%s actor=%s key=%s", why, safe.action, safe.actor, safe.key)

    async def flush(self) -> None:
        """Write everything buffered so far; on a Postgres outage the batch stays buffered and this raises."""
        while self._buffer:
            batch, self._buffer = self._buffer[:_BATCH], self._buffer[_BATCH:]
            try:
                await self._write(batch)
            except POSTGRES_UNREACHABLE:
                self._buffer[:0] = batch  # retried next round; the bound in add() caps memory
                raise

    async def _write(self, batch: list[AuditRecord]) -> None:
        async with self._pool.acquire() as conn, conn.cursor() as cur:
            try:
                async with cur.begin():
                    await append(cur, self._chain, batch)
                return
            except POSTGRES_UNREACHABLE:
                raise
            except (psycopg2.Error, ValueError, TypeError) as exc:
                # One row Postgres refuses must not cost the others: write them one by one.
                log.warning("audit batch of %d refused (%s); writing it row by row", len(batch), type(exc).__name__)
            for entry in batch:
                await self._write_one(cur, entry)

    async def _write_one(self, cur: aiopg.Cursor, entry: AuditRecord) -> None:
        for attempt in (entry, entry.made_safe()):
            try:
                async with cur.begin():
                    await append(cur, self._chain, [attempt])
                if attempt is not entry:
                    self._repaired(entry, "refused by Postgres")
                return
            except POSTGRES_UNREACHABLE:
                raise
            except (psycopg2.Error, ValueError, TypeError):
                continue
        self._metrics.audit_dropped.inc()
        log.error("audit record could not be stored even in safe form: action=%s", escape_control(entry.action))

    async def run(self) -> None:
        """Flush periodically until cancelled; any failure is logged, counted and retried with backoff."""
        backoff = Backoff(first=_FLUSH_SECONDS)
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
                backoff.reset()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._metrics.audit_flush_errors.inc()
                if isinstance(exc, POSTGRES_UNREACHABLE):
                    log.warning("audit flush failed (%s); %d records wait", type(exc).__name__, len(self._buffer))
                else:
                    log.exception("audit flush failed unexpectedly; %d records wait", len(self._buffer))
                delay = backoff.next()

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="audit-flush")

    async def stop(self) -> None:
        """Stop the loop and write what is left."""
        if self._task is not None:
            await cancel_and_wait(self._task)
        try:
            await self.flush()
        except POSTGRES_UNREACHABLE:
            log.error("could not flush %d audit records at shutdown", len(self._buffer))


AUDIT = web.AppKey("audit", AuditWriter)


async def audit_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the audit writer and its flush loop (needs ``pool_ctx`` first)."""
    metrics = app[METRICS]
    assert isinstance(metrics, ServingMetrics), "the audit writer runs in a serving process"
    writer = AuditWriter(app[DB_POOL], metrics, app[AUDIT_CHAIN])
    app[AUDIT] = writer
    writer.start()
    try:
        yield
    finally:
        await writer.stop()
