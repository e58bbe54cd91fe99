"""The relay: gives committed outbox rows their global revision and publishes them to Redis.

Exactly one notifier replica relays at a time: the one holding a Postgres advisory lock on a
dedicated connection. If it dies, its connection (and lock) goes with it and a standby takes over
within ``STANDBY_POLL_SECONDS``. Even two relayers at once could not break ordering: every batch
locks the single ``relay_state`` row, so assignments are serialised by Postgres.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import timedelta

import aiopg
import psycopg2

from shared.changelog import ChangeEvent, events_after, head
from shared.redis import REDIS_ERRORS, RedisLink
from shared.sql import changelog as sql
from shared.tasks import complete_then_cancel
from shared.timeutil import utcnow
from shared.wire import CHANNEL, encode_batch

from .metrics import NotifierMetrics

log = logging.getLogger(__name__)

RELAY_LOCK = 0x44594E52  # "DYNR"
BATCH = 1000
POLL_SECONDS = 0.5
STANDBY_POLL_SECONDS = 1.0
PRUNE_EVERY_SECONDS = 60.0


class Relay:
    """Run :meth:`run` as a background task; it relays while it holds the lock, and waits otherwise."""

    def __init__(
        self,
        dsn: str,
        pool: aiopg.Pool,
        link: RedisLink,
        metrics: NotifierMetrics,
        *,
        retention_seconds: int,
    ) -> None:
        self._dsn = dsn
        self._pool = pool
        self._link = link
        self._metrics = metrics
        self._retention = timedelta(seconds=retention_seconds)
        self.is_leader = False
        self.published_through = 0
        self._last_prune = 0.0

    async def run(self) -> None:
        """Forever: take the lock when free, then relay until the lock connection fails."""
        delay = 0.5
        while True:
            try:
                async with aiopg.connect(self._dsn, timeout=10.0) as conn:
                    await self._lead(conn)
            except (TimeoutError, psycopg2.Error, OSError) as exc:
                log.warning("relay: %s: %s; retrying", exc.__class__.__name__, str(exc).strip()[:200])
            finally:
                self._set_leader(False)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    def _set_leader(self, leader: bool) -> None:
        if leader != self.is_leader:
            log.info("relay: %s", "now relaying (lock acquired)" if leader else "standing by")
        self.is_leader = leader
        self._metrics.relay_leader.set(1 if leader else 0)

    async def _lead(self, conn: aiopg.Connection) -> None:
        async with conn.cursor() as cur:
            while True:
                await cur.execute("SELECT pg_try_advisory_lock(%s)", (RELAY_LOCK,))
                (acquired,) = await cur.fetchone()
                if acquired:
                    break
                await asyncio.sleep(STANDBY_POLL_SECONDS)
            await cur.execute("LISTEN dynconfig_outbox")
            async with self._pool.acquire() as pconn, pconn.cursor() as pcur:
                self.published_through = (await head(pcur))[0]
            self._set_leader(True)
            last_check = time.monotonic()
            while True:
                relayed = await complete_then_cancel(self.relay_once())
                if len(relayed) == BATCH:
                    continue
                await self._publish_backlog()
                await complete_then_cancel(self._maybe_prune())
                try:
                    async with asyncio.timeout(POLL_SECONDS):
                        await conn.notifies.get()
                except TimeoutError:
                    pass
                while not conn.notifies.empty():
                    conn.notifies.get_nowait()
                if time.monotonic() - last_check > 5.0:
                    await cur.execute("SELECT 1")  # is the lock connection still alive?
                    last_check = time.monotonic()

    async def relay_once(self) -> list[ChangeEvent]:
        """Assign revisions to one batch of pending outbox rows and publish it; return its events."""
        now = utcnow()
        async with self._pool.acquire() as conn, conn.cursor() as cur:
            async with cur.begin():
                await cur.execute(sql.LOCK_HEAD)
                (current,) = await cur.fetchone()
                await cur.execute(sql.PENDING, {"limit": BATCH})
                rows = await cur.fetchall()
                if not rows:
                    return []
                ids = [row[0] for row in rows]
                keys = [row[1] for row in rows]
                versions = [row[2] for row in rows]
                revisions = list(range(current + 1, current + 1 + len(rows)))
                await cur.execute(sql.ASSIGN, {"ids": ids, "revisions": revisions, "now": now})
                params = {"keys": keys, "versions": versions, "revisions": revisions}
                await cur.execute(sql.ASSIGN_HISTORY, params)
                await cur.execute(sql.SET_HEAD, {"head": revisions[-1]})
                await cur.execute(sql.NOTIFY_REVISIONS, {"head": revisions[-1]})
                events = await events_after(cur, current, through=revisions[-1], limit=len(rows))
        for event in events:
            self._metrics.relay_lag.observe(max(0.0, (now - event.at).total_seconds()))
        if self.published_through == current:
            await self._publish(events)
        return events

    async def _publish(self, events: list[ChangeEvent]) -> None:
        if not events or not self._link.usable:
            return
        try:
            await self._link.client.publish(CHANNEL, encode_batch(events))
        except REDIS_ERRORS as exc:
            self._link.failed(exc)
            return
        self._link.succeeded()
        self.published_through = events[-1].revision

    async def _publish_backlog(self) -> None:
        """After a Redis outage, publish what was relayed meanwhile (hubs drop what they already have)."""
        if not self._link.usable:
            return
        async with self._pool.acquire() as conn, conn.cursor() as cur:
            current, _ = await head(cur)
            while self.published_through < current and self._link.usable:
                events = await events_after(cur, self.published_through, through=current, limit=BATCH)
                if not events:
                    self.published_through = current
                    break
                before = self.published_through
                await self._publish(events)
                if self.published_through == before:
                    break
            await cur.execute(sql.BACKLOG)
            pending, _oldest = await cur.fetchone()
        self._metrics.outbox_backlog.set(pending)

    async def _maybe_prune(self) -> None:
        if time.monotonic() - self._last_prune < PRUNE_EVERY_SECONDS:
            return
        self._last_prune = time.monotonic()
        async with self._pool.acquire() as conn, conn.cursor() as cur, cur.begin():
            await cur.execute(sql.PRUNE, {"before": utcnow() - self._retention})
