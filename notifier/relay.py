"""The relay: publishes committed changes to Redis in revision order, and prunes the change log.

Revisions are given by the writes themselves as they commit (shared/sql/writes.py), so the relay
only reads what was committed after what it last published and publishes it. Exactly one notifier
replica relays at a time: the one holding a Postgres advisory lock on a dedicated connection. If it
dies, its connection (and lock) goes with it and a standby takes over within
``STANDBY_POLL_SECONDS``; two relayers at once would only publish some events twice, which hubs drop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import timedelta

import aiopg
import psycopg2
from aiohttp import web

from shared.changes.events import ChangeEvent
from shared.db import Target, listen, ping, try_session_lock, wait_notices
from shared.redis import REDIS_ERRORS, RedisLink
from shared.runtime.supervisor import Supervisor, cancel_and_wait, complete_then_cancel
from shared.sql import changelog as sql
from shared.sql import outbox as outbox_sql
from shared.timeutil import utcnow

from .metrics import NotifierMetrics
from .pubsub import CHANNEL, encode_batch

log = logging.getLogger(__name__)

RELAY_LOCK = 0x44594E52  # "DYNR"
BATCH = 1000
POLL_SECONDS = 0.5
STANDBY_POLL_SECONDS = 1.0
PRUNE_EVERY_SECONDS = 60.0
PRUNE_BATCH = 5000


class Relay:
    """Run :meth:`run` as a background task; it relays while it holds the lock, and waits otherwise."""

    def __init__(
        self,
        listener: Target,
        pool: aiopg.Pool,
        link: RedisLink,
        metrics: NotifierMetrics,
        supervisor: Supervisor,
        *,
        retention_seconds: int,
    ) -> None:
        self._supervisor = supervisor
        self._listener = listener
        self._pool = pool
        self._link = link
        self._metrics = metrics
        self._retention = timedelta(seconds=retention_seconds)
        self.is_leader = False
        #: The last revision published (None until this replica relays).
        self.published: int | None = None

    async def run(self) -> None:
        """Forever: take the lock when free, then relay until the lock connection fails."""
        await listen(self._listener, [outbox_sql.CHANNEL], self._lead)

    def _set_leader(self, leader: bool) -> None:
        if leader != self.is_leader:
            log.info("relay: %s", "now relaying (lock acquired)" if leader else "standing by")
        self.is_leader = leader
        self._metrics.relay_leader.set(1 if leader else 0)

    async def _lead(self, conn: aiopg.Connection) -> None:
        """On the lock connection (which also listens for new outbox rows): wait for the lock, relay."""
        try:
            await self._relay_while_leader(conn)
        finally:
            self._set_leader(False)

    async def _relay_while_leader(self, conn: aiopg.Connection) -> None:
        async with conn.cursor() as cur:
            while True:
                if await try_session_lock(cur, RELAY_LOCK):
                    break
                await asyncio.sleep(STANDBY_POLL_SECONDS)
                await wait_notices(conn, 0)  # standing by: drop the wake-ups meant for the leader
            self._set_leader(True)
            self.published = None  # start from the head: hubs catch up on anything older themselves
            # Pruning runs beside the relay, in bounded batches: it never delays a revision.
            pruner = self._supervisor.spawn("relay-prune", self._prune_forever)
            try:
                last_check = time.monotonic()
                while True:
                    relayed = await complete_then_cancel(self.relay_once())
                    if len(relayed) >= BATCH:
                        continue
                    await self._update_backlog()
                    await wait_notices(conn, POLL_SECONDS)
                    if time.monotonic() - last_check > 5.0:
                        await ping(cur)  # is the lock connection still alive?
                        last_check = time.monotonic()
            finally:
                await cancel_and_wait(pruner)

    async def relay_once(self) -> list[ChangeEvent]:
        """Publish the next batch of committed changes after the last one published; return it."""
        now = utcnow()
        async with self._pool.acquire() as conn, conn.cursor() as cur:
            current, _ = await sql.head(cur)
            if self.published is None or current < self.published:
                # Taking over (hubs read anything older from Postgres), or a restored database.
                self.published = current
            if current == self.published:
                return []
            events = await sql.events_after(cur, self.published, through=current, limit=BATCH)
            # Wakes hubs that read Postgres while Redis is down.
            await sql.notify_revisions(cur, events[-1].revision if events else current)
        # A page may run past BATCH (the rest of a transaction the limit cut): it ends one all the same.
        self.published = events[-1].revision if len(events) >= BATCH else current
        for event in events:
            self._metrics.relay_lag.observe(max(0.0, (now - event.at).total_seconds()))
        await self._publish(events)
        return events

    async def _publish(self, events: list[ChangeEvent]) -> None:
        """Publish a batch; if Redis is unavailable, skip it: hubs read what they missed from Postgres
        (a gap in revisions, or their 1 s poll), so an outage's backlog is never republished here."""
        if not events or not self._link.usable:
            return
        try:
            await self._link.client.publish(CHANNEL, encode_batch(events))
        except REDIS_ERRORS as exc:
            self._link.failed(exc)
            return
        self._link.succeeded()

    async def _update_backlog(self) -> None:
        async with self._pool.acquire() as conn, conn.cursor() as cur:
            current, _ = await sql.head(cur)
        self._metrics.outbox_backlog.set(max(0, current - (self.published or current)))

    async def _prune_forever(self) -> None:
        """Every ``PRUNE_EVERY_SECONDS`` (the first time one interval after taking over), drop relayed
        rows older than the retention, ``PRUNE_BATCH`` at a time, each batch its own short transaction."""
        while True:
            await asyncio.sleep(PRUNE_EVERY_SECONDS)
            try:
                await self.prune()
            except (TimeoutError, psycopg2.Error, OSError) as exc:
                log.warning("relay: prune failed (%s); next round in %.0f s", type(exc).__name__, PRUNE_EVERY_SECONDS)

    async def prune(self) -> int:
        """Remove every relayed row past retention, in batches; return how many."""
        total = 0
        while True:
            async with self._pool.acquire() as conn, conn.cursor() as cur, cur.begin():
                removed = await sql.prune(cur, utcnow() - self._retention, PRUNE_BATCH)
            total += removed
            if removed < PRUNE_BATCH:
                return total
            await asyncio.sleep(0)  # let the relay's own transactions in between


RELAY = web.AppKey("relay", Relay)
