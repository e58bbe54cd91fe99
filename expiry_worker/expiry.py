"""Soft-deleting keys whose TTL has run out (SPEC §3): version +1, an ``expired`` event, an audit row.

The worker sleeps until the next known deadline and is woken by ``NOTIFY dynconfig_ttl`` when a write
sets a new one, so an ``expired`` event leaves well within a second of the deadline. Replicas share
the work through ``FOR UPDATE SKIP LOCKED``.
"""

from __future__ import annotations

import logging

import aiopg
from aiohttp import web

from shared.audit.chain import AuditChain
from shared.changes.writes import expiry, write_changes
from shared.db import Target, listen, wait_notices
from shared.runtime.supervisor import Backoff, complete_then_cancel
from shared.sql import expiry as sql
from shared.sql import namespaces as ns_sql

from .metrics import ExpiryMetrics

log = logging.getLogger(__name__)

BATCH = 200
MAX_SLEEP_SECONDS = 5.0
#: When a due key is locked by someone else (a writer, another worker), look again after this,
#: doubling up to MAX_RECHECK_SECONDS: whoever holds it will write it, and we must not spin.
RECHECK_SECONDS = 0.05
MAX_RECHECK_SECONDS = 0.5


class ExpiryWorker:
    """``run_once()`` expires what is due now; ``run()`` does so for ever."""

    def __init__(self, listener: Target, pool: aiopg.Pool, metrics: ExpiryMetrics, chain: AuditChain) -> None:
        self._listener = listener
        self._pool = pool
        self._chain = chain
        self._metrics = metrics

    async def run_once(self) -> int:
        """Expire every key whose deadline has passed; return how many."""
        total = 0
        while True:
            async with self._pool.acquire() as conn, conn.cursor() as cur, cur.begin():
                # A batch in a few round trips: due rows, the namespace ACLs once, one write.
                states, clock = await sql.lock_due(cur, BATCH)
                if clock is not None:
                    ns_acls = await ns_sql.all_acls(cur) if any(s.acl is None for s in states) else {}
                    changes = [expiry(state, max(clock, state.last_modified), ns_acls) for state in states]
                    await write_changes(cur, changes, self._chain)
            for state in states:
                assert state.expires_at is not None and clock is not None
                self._metrics.expiry_delay.observe(max(0.0, (clock - state.expires_at).total_seconds()))
            self._metrics.expiries.inc(len(states))
            total += len(states)
            if len(states) < BATCH:
                return total

    async def seconds_to_next_deadline(self) -> float | None:
        """How long until the next deadline by Postgres's clock (≤ 0: one is due), None without one."""
        async with self._pool.acquire() as conn, conn.cursor() as cur:
            return await sql.seconds_to_next_deadline(cur)

    async def run(self) -> None:
        """Expire due keys, then sleep until the next deadline or a wake-up, for ever."""
        await listen(self._listener, [sql.CHANNEL], self._serve)

    async def _serve(self, conn: aiopg.Connection) -> None:
        recheck = Backoff(first=RECHECK_SECONDS, cap=MAX_RECHECK_SECONDS)
        while True:
            expired = await complete_then_cancel(self.run_once())
            if expired:
                log.info("expired %d keys", expired)
            due_in = await self.seconds_to_next_deadline()
            sleep = MAX_SLEEP_SECONDS if due_in is None else min(MAX_SLEEP_SECONDS, due_in)
            if sleep <= 0:  # due but locked by someone else: back off, don't spin
                sleep = recheck.next()
            else:
                recheck.reset()
            await wait_notices(conn, sleep)  # a write that sets a deadline wakes us early


WORKER = web.AppKey("worker", ExpiryWorker)
