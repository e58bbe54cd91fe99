"""The hub: one per notifier replica. It follows the event stream and fans each event out.

Events arrive from Redis pub/sub in batches. The hub keeps the last position of the change log it
fanned out; an event that skips ahead makes it backfill the gap from Postgres first, one it has seen
is dropped. While Redis is down it reads Postgres instead (woken by ``NOTIFY dynconfig_revisions``),
and it polls once a second regardless, so no event is ever lost on the way. Each event is encoded into
one WebSocket frame that is written to every entitled subscriber (:mod:`notifier.frames`).

A transaction's changes (consecutive positions, one revision: shared/sql/writes.py) always travel
together — in one relay batch, one backfill page — and are fanned out as one: each subscriber gets one
``txn`` frame of the changes it may read (none: nothing), or those changes as single events when it
asked for ``"txn": "split"`` (SPEC §6). Positions outside transactions are revisions, so ``last`` is
always a revision clients have seen.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

import aiopg
import psycopg2
from aiohttp import web

from shared.changes.events import ChangeEvent, Readers, commit_events, commits, may_read_event
from shared.db import Target, listen, ping, wait_notices
from shared.redis import REDIS_ERRORS, RedisLink
from shared.runtime.supervisor import Backoff, Supervisor, cancel_and_wait
from shared.security.acl import Acl, Principal
from shared.security.crypto import Keyring
from shared.security.nsacls import NamespaceAcls
from shared.sql.changelog import REVISIONS_CHANNEL, events_after, head, resume_point
from shared.timeutil import utcnow

from .frames import json_frame
from .index import Patterns, Subscriber
from .metrics import NotifierMetrics
from .pubsub import CHANNEL, decode_batch

log = logging.getLogger(__name__)

BACKFILL_PAGE = 1000
#: Delivery lists kept, by (key, readers); all are dropped when subscriptions or namespace ACLs change.
DELIVERY_LISTS = 10_000
SAFETY_POLL_SECONDS = 1.0
NAMESPACE_REFRESH_SECONDS = 5.0


class Feed:
    """One subscriber's handle on the hub, from :meth:`Hub.feed`: all a watch connection asks of the
    hub. It keeps the subscriber's patterns, so the hub's index and the connection cannot disagree.
    It is part of the hub (it works on the hub's index and keyring), the one way in from outside."""

    def __init__(self, hub: Hub, subscriber: Subscriber) -> None:
        self._hub = hub
        self._subscriber = subscriber
        self.patterns: set[str] = set()

    async def reached(self, revision: int, within: float) -> None:
        """Wait until the hub has fanned out ``revision``, at most ``within`` s."""
        await self._hub.reached(revision, within)

    def add(self, patterns: list[str]) -> int:
        """Start live events for ``patterns``; returns the revision the hub has fanned out through
        (events after it come live, those up to it are the connection's to replay)."""
        self._hub._patterns.add(self._subscriber, patterns)
        self.patterns.update(patterns)
        return self._hub.last

    def remove(self, patterns: Iterable[str]) -> None:
        """Stop live events for ``patterns``."""
        patterns = list(patterns)
        self._hub._patterns.remove(self._subscriber, patterns)
        self.patterns.difference_update(patterns)

    def close(self) -> None:
        """Stop every live event."""
        self.remove(self.patterns)

    def principal_changed(self) -> None:
        """The subscriber reads as someone else now (the hub's delivery lists took the old one's verdicts)."""
        self._hub._patterns.changed()

    def readable(self, event: ChangeEvent) -> dict[str, Any] | None:
        """``event`` as sent to this subscriber, if it may read it (a replayed or snapshot event: the
        same ACLs and keys as live ones)."""
        hub = self._hub
        if not may_read_event(self._subscriber.principal, event.readers(hub.namespace_acls)):
            return None
        return event.wire(hub._keyring)


class Hub:
    """Follows the change stream for this replica and fans it out to :class:`Subscriber` objects."""

    def __init__(
        self,
        listener: Target,
        pool: aiopg.Pool,
        link: RedisLink,
        keyring: Keyring,
        namespaces: NamespaceAcls,
        metrics: NotifierMetrics,
        supervisor: Supervisor,
    ) -> None:
        self._listener = listener
        self._supervisor = supervisor
        self._pool = pool
        self._link = link
        self._keyring = keyring
        self._metrics = metrics
        self._patterns = Patterns()
        self._namespaces = namespaces
        self.last = 0
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self.redis_ok = False
        self._inbox: deque[list[ChangeEvent]] = deque()
        self._wake = asyncio.Event()
        self._poll_now = False
        self._tasks: list[asyncio.Task[None]] = []
        #: Subscribers with events queued by this pass of the pump (:meth:`_flush`).
        self._touched: list[Subscriber] = []
        self._deliveries: dict[tuple[str, Readers], list[Subscriber]] = {}
        self._deliveries_for: tuple[int, dict[str, Acl]] = (-1, {})

    @property
    def namespace_acls(self) -> dict[str, Acl]:
        """The namespace ACLs events are fanned out with (this process's copy, kept current by NOTIFY)."""
        return self._namespaces.last

    # --- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Read the current head and the namespace ACLs, then start the background tasks."""
        async with self._pool.acquire() as conn, conn.cursor() as cur:
            self.last, _ = await head(cur)
        self._metrics.hub_revision.set(self.last)
        spawn = self._supervisor.spawn
        self._tasks = [
            spawn("hub-pump", self._pump),
            spawn("hub-redis", self._redis_listener),
            spawn("hub-pg", self._pg_listener),
            spawn("hub-tick", self._ticker),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            await cancel_and_wait(task)

    def feed(self, subscriber: Subscriber) -> Feed:
        """A new subscriber's handle on this hub."""
        return Feed(self, subscriber)

    # --- inputs ------------------------------------------------------------------------------------

    async def _redis_listener(self) -> None:
        backoff = Backoff(cap=2.0)
        while True:
            pubsub = self._link.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(CHANNEL)
                self._set_redis_ok(True)
                backoff.reset()
                while True:
                    message = await pubsub.get_message(timeout=5.0)
                    if message is None:
                        await pubsub.ping()  # notice a dead connection even when nothing is published
                        continue
                    if message.get("type") == "message":
                        self._inbox.append(decode_batch(message["data"]))
                        self._wake.set()
            except REDIS_ERRORS as exc:
                if self.redis_ok:
                    log.warning("hub: Redis subscription lost (%s); reading events from Postgres", exc)
                self._set_redis_ok(False)
            finally:
                try:
                    await pubsub.aclose()
                except REDIS_ERRORS:
                    pass
            await asyncio.sleep(backoff.next())

    def _set_redis_ok(self, ok: bool) -> None:
        if ok and not self.redis_ok:
            log.info("hub: subscribed to Redis channel %s", CHANNEL)
            self._poll_now = True  # catch up on anything published while we were away
            self._wake.set()
        self.redis_ok = ok

    async def _pg_listener(self) -> None:
        await listen(self._listener, [REVISIONS_CHANNEL], self._on_notices)

    async def _on_notices(self, conn: aiopg.Connection) -> None:
        async with conn.cursor() as cur:
            while True:
                notices = await wait_notices(conn, 10.0)
                if not notices:
                    await ping(cur)  # notice a dead connection even when all is quiet
                    continue
                if not self.redis_ok:
                    self._poll_now = True
                    self._wake.set()

    async def _ticker(self) -> None:
        elapsed = 0.0
        while True:
            await asyncio.sleep(SAFETY_POLL_SECONDS)
            elapsed += SAFETY_POLL_SECONDS
            self._poll_now = True
            self._wake.set()
            if elapsed >= NAMESPACE_REFRESH_SECONDS:
                elapsed = 0.0
                if not self._namespaces.trusted:  # its listener is down: refresh the copy ourselves
                    try:
                        await self._namespaces.reload()
                    except (psycopg2.Error, OSError) as exc:
                        log.warning("hub: cannot refresh namespace ACLs: %s", exc.__class__.__name__)

    # --- the pump: the only place that advances ``last`` -----------------------------------------

    async def _pump(self) -> None:
        """Fan out events in revision order. Anything unexpected (an event that cannot be decrypted)
        propagates to the supervisor, which restarts the pump with backoff and reports it failing;
        ``last`` has not passed that event, so it is retried, never skipped."""
        self._poll_now = True  # (re)started: catch up from Postgres first
        self._wake.set()
        self._flush()  # what a failed pass fanned out before the event it could not encode
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                while self._inbox:
                    for commit in commits(self._inbox[0]):
                        await self._accept(commit)
                    self._inbox.popleft()
                    self._flush()
                if self._poll_now:
                    self._poll_now = False
                    await self._backfill(through=None)
                self._supervisor.ok("hub-pump")
            except (TimeoutError, psycopg2.Error, OSError) as exc:
                self._flush()
                log.warning("hub: cannot read events from Postgres (%s); retrying", exc.__class__.__name__)
                self._poll_now = True
                await asyncio.sleep(0.5)
                self._wake.set()

    async def _accept(self, commit: Sequence[ChangeEvent]) -> None:
        """One write's change, or one transaction's changes (in the order of the log)."""
        first = commit[0].revision
        if first <= self.last:
            return
        if first > self.last + 1:
            await self._backfill(through=first - 1)
            if first != self.last + 1:
                return  # the backfill already covered it
        end = commit[-1]
        if end.txn is not None and end.revision < end.txn:
            # Part of a transaction: the previous release's relay cuts batches anywhere. Fanned out
            # whole from Postgres (its rows are committed: the relay read them); the rest is dropped
            # when it arrives.
            await self._backfill(through=end.txn)
            return
        self._fan_out(commit)

    def _flush(self) -> None:
        """Write what this pass fanned out: one write per socket, however many events it got. Called
        before every await of the pump, so no other write to a socket can come between."""
        touched, self._touched = self._touched, []
        if not touched:
            return
        started = time.perf_counter()
        for subscriber in touched:
            subscriber.flush()
        self._metrics.fanout_write.observe(time.perf_counter() - started)
        self._metrics.live_writes.inc(len(touched))

    async def _backfill(self, through: int | None) -> None:
        self._flush()
        async with self._pool.acquire() as conn, conn.cursor() as cur:
            if through is None:
                point = await resume_point(cur, self.last)
                # Behind what we fanned out, or past revisions we fanned out (skipped by a restore marked
                # under us, dynconfig_admin/backup.py): a database restored from a backup.
                if point.head < self.last or (self.last >= point.pruned and not point.known):
                    self._restart_numbering(point.head)
                    return
            while through is None or self.last < through:
                events = await events_after(cur, self.last, through=through, limit=BACKFILL_PAGE)
                for commit in commits(events):
                    self._fan_out(commit)
                self._flush()
                self._metrics.backfilled.inc(len(events))
                if len(events) < BACKFILL_PAGE:
                    if through is not None and self.last < through:
                        # Revisions are contiguous, but pruning may have removed the oldest ones.
                        self.last = through
                        self._advanced()
                    break

    async def reached(self, revision: int, within: float) -> bool:
        """Wait until this hub has fanned out ``revision`` (at most ``within`` s); return whether it has."""
        if self.last >= revision:
            return True
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append((revision, waiter))
        try:
            await asyncio.wait_for(asyncio.shield(waiter), within)
        except TimeoutError:
            return self.last >= revision
        finally:
            self._waiters = [(r, w) for r, w in self._waiters if w is not waiter]
        return True

    def _advanced(self) -> None:
        for revision, waiter in self._waiters:
            if revision <= self.last and not waiter.done():
                waiter.set_result(None)

    def _restart_numbering(self, current: int) -> None:
        """The log no longer holds what we fanned out (a database restored from a backup): every watcher
        gets a ``reset`` and a snapshot at the new head, and we follow from there."""
        log.warning(
            "hub: the change log no longer holds revision %d (head %d: a restored database); resynchronising watchers",
            self.last,
            current,
        )
        self._inbox.clear()
        self.last = current
        self._advanced()
        self._metrics.hub_revision.set(current)
        for subscriber in self._patterns.everyone():
            subscriber.resync(current)

    def _entitled(self, event: ChangeEvent) -> list[Subscriber]:
        """The subscribers that get ``event``: built once per (key, readers) and kept until who watches
        what, or a namespace ACL, changes; the ACL verdict is taken once per principal."""
        if self._deliveries_for != (self._patterns.generation, self.namespace_acls):
            self._deliveries.clear()
            self._deliveries_for = (self._patterns.generation, self.namespace_acls)
        readers = event.readers(self.namespace_acls)
        entitled = self._deliveries.get((event.key, readers))
        if entitled is None:
            verdicts: dict[Principal, bool] = {}
            entitled = []
            for subscriber in self._patterns.matching(event.key):
                who = subscriber.principal
                verdict = verdicts.get(who)
                if verdict is None:
                    verdict = verdicts[who] = may_read_event(who, readers)
                if verdict:
                    entitled.append(subscriber)
            if len(self._deliveries) >= DELIVERY_LISTS:
                self._deliveries.clear()
            self._deliveries[(event.key, readers)] = entitled
        return entitled

    def _fan_out(self, commit: Sequence[ChangeEvent]) -> None:
        """Send a write's event, or a transaction's, to every subscriber entitled to it. Encoded before
        ``last`` moves: an event that cannot be encoded (its value cannot be decrypted) raises here,
        with ``last`` still before it, so it is retried rather than skipped."""
        event = commit[-1]
        if len(commit) == 1 and event.txn is None:
            entitled = self._entitled(event)
            frame = json_frame(event.wire(self._keyring)) if entitled else b""
            deliveries = [(subscriber, frame) for subscriber in entitled]
        else:
            deliveries = self._txn_deliveries(commit)
        self.last = event.revision
        if self._waiters:
            self._advanced()
        self._metrics.hub_revision.set(event.revision)
        now = utcnow()
        for change in commit:
            self._metrics.propagation_lag.observe(max(0.0, (now - change.at).total_seconds()))
        revision = event.shown_revision
        for subscriber, frame in deliveries:
            if subscriber.deliver(revision, frame):
                self._touched.append(subscriber)
        self._metrics.events_delivered.inc(len(deliveries))

    def _txn_deliveries(self, commit: Sequence[ChangeEvent]) -> list[tuple[Subscriber, bytes]]:
        """Per subscriber, the frame of the transaction's changes it may read: one ``txn`` frame, or
        (``split_txn``) their single events' frames; built once per distinct set of changes."""
        seen: dict[Subscriber, list[int]] = {}
        for i, change in enumerate(commit):
            for subscriber in self._entitled(change):
                seen.setdefault(subscriber, []).append(i)
        if not seen:
            return []
        changes = [change.wire(self._keyring) for change in commit]
        frames: dict[tuple[tuple[int, ...], bool], bytes] = {}
        deliveries = []
        for subscriber, picked in seen.items():
            which = (tuple(picked), subscriber.split_txn)
            frame = frames.get(which)
            if frame is None:
                sent = commit_events(commit, [changes[i] for i in picked], split=subscriber.split_txn)
                frame = frames[which] = b"".join(json_frame(message) for message in sent)
            deliveries.append((subscriber, frame))
        return deliveries


HUB = web.AppKey("hub", Hub)
