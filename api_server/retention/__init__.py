"""Retention in the api_server (api_server/retention/history.py does the work): one pruner across all replicas.

Every api_server runs this loop, and the one holding a Postgres advisory lock on a dedicated
connection prunes (as the notifier's relay does); the others stand by and take over within
:data:`STANDBY_POLL_SECONDS` of its connection going. It lives in the api_server because pruning
the audit chain seals a record with the chain's key. Every ``RETENTION_INTERVAL_SECONDS`` the leader
removes audit records and past versions past retention, in small batches. A round that fails on
Postgres is logged and tried again at the next interval; anything else reaches the supervisor.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import aiopg
from aiohttp import web

from api_server.metrics import API_METRICS, ApiMetrics
from api_server.retention.history import Pruner
from shared.audit.chain import AUDIT_CHAIN
from shared.db import CONNECTION_ERRORS, DB_POOL, Target, app_connector, listen, ping, try_session_lock
from shared.runtime.supervisor import SUPERVISOR, cancel_and_wait
from shared.settings import SETTINGS

log = logging.getLogger(__name__)

RETENTION_LOCK = 0x44594E50  # "DYNP"
STANDBY_POLL_SECONDS = 5.0


class Retention:
    """The leader election and the loop around one :class:`~api_server.retention.history.Pruner`."""

    def __init__(self, target: Target, pruner: Pruner, metrics: ApiMetrics, every: float) -> None:
        self._target = target
        self.pruner = pruner
        self._metrics = metrics
        self._every = every
        self.is_leader = False

    async def run(self) -> None:
        """For ever: hold the lock on a dedicated connection (reconnecting with backoff), then prune."""
        await listen(self._target, [], self._lead, name="retention")

    async def _lead(self, conn: aiopg.Connection) -> None:
        try:
            async with conn.cursor() as cur:
                while True:
                    if await try_session_lock(cur, RETENTION_LOCK):
                        break
                    await asyncio.sleep(min(self._every, STANDBY_POLL_SECONDS))
                self._set_leader(True)
                while True:
                    await self._round()
                    await asyncio.sleep(self._every)
                    await ping(cur)  # still holding the lock (its connection is alive)?
        finally:
            self._set_leader(False)

    async def _round(self) -> None:
        try:
            audit, history = await self.pruner.run_once()
        except CONNECTION_ERRORS as exc:
            log.warning("retention: round failed (%s); next in %.0f s", type(exc).__name__, self._every)
            return
        finally:
            self._metrics.audit_prune_blocked.set(1 if self.pruner.blocked is not None else 0)
        if audit or history:
            log.info("retention: %d audit records and %d past versions removed", audit, history)

    def _set_leader(self, leader: bool) -> None:
        if leader != self.is_leader:
            log.info("retention: %s", "now pruning (lock acquired)" if leader else "standing by")
        self.is_leader = leader
        self._metrics.retention_leader.set(1 if leader else 0)


RETENTION = web.AppKey("retention", Retention)


async def retention_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the retention loop (needs ``pool_ctx``)."""
    settings, metrics = app[SETTINGS], app[API_METRICS]

    def removed(table: str, n: int) -> None:
        metrics.retention_removed.labels(table).inc(n)

    pruner = Pruner(
        app[DB_POOL],
        app[AUDIT_CHAIN],
        audit_retention=settings.audit_retention_seconds,
        history_retention=settings.history_retention_seconds,
        removed=removed,
    )
    app[RETENTION] = retention = Retention(
        app_connector(app, "retention", dedicated=True), pruner, metrics, settings.retention_interval_seconds
    )
    task = app[SUPERVISOR].spawn("retention", retention.run)
    try:
        yield
    finally:
        await cancel_and_wait(task)
