"""``GET /watch``: one WebSocket connection of a watcher (SPEC §6).

One reader loop per socket handles the client's messages; events are written by the hub straight to
the socket's transport (:meth:`WatchConnection.deliver`), never awaited one socket at a time. The
transport's write buffer is the per-connection bound: a consumer that lets it grow past
``MAX_BUFFER_BYTES`` is closed with 4008 and resumes losslessly with ``since_version``.

Ordering: a subscribe registers its patterns first (live events for it are held back), then replays
or snapshots up to the hub's revision at that moment, then releases the held events. The replayed
range and the held range cannot overlap, so nothing is sent twice and nothing is skipped.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

import aiopg
from aiohttp import WSMsgType, web

from shared.audit.writer import AuditRecord, AuditWriter
from shared.changes.events import ChangeEvent, commit_events, commits, like_patterns
from shared.changes.kinds import AuditAction
from shared.db import POSTGRES_UNREACHABLE
from shared.errors import BadRequest, DynConfigError
from shared.runtime.web import close_websockets, request_id
from shared.security.acl import Principal
from shared.security.auth import LEEWAY_SECONDS, TokenVerifier
from shared.security.ratelimit import RateLimiter
from shared.sql.changelog import events_after, head, resume_point, snapshot_pages

from .frames import json_frame
from .hub import Hub
from .metrics import NotifierMetrics
from .protocol import (
    AUTH_TIMEOUT,
    AUTH_TIMEOUT_SECONDS,
    CLOSE_BAD_REQUEST,
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL,
    CLOSE_SLOW_CONSUMER,
    CLOSE_TRY_AGAIN,
    CLOSE_UNAUTHORIZED,
    MAX_PATTERNS,
    NO_TOKEN,
    NOT_TEXT,
    OTHER_USER,
    REASON_AUTH_TIMEOUT,
    REASON_BAD_SINCE,
    REASON_HELD_EVENTS,
    REASON_INTERNAL,
    REASON_INVALID_TOKEN,
    REASON_NO_TOKEN,
    REASON_SHUTDOWN,
    REASON_SLOW_CONSUMER,
    REASON_TOKEN_EXPIRED,
    REASON_UNAVAILABLE,
    TOKEN_EXPIRED,
    UNAVAILABLE,
    BadMessage,
    Subscribe,
    bad_request,
    close_message,
    error_event_of,
    parse_message,
    parse_subscribe,
    parse_token,
    parse_unsubscribe,
    pattern_matches,
    rate_limited,
    since_from_request,
    token_from_request,
)

log = logging.getLogger(__name__)

MAX_BUFFER_BYTES = 4 * 1024 * 1024
MAX_HELD_EVENTS = 10_000
REPLAY_PAGE = 1000
HUB_CATCH_UP_SECONDS = 2.0


class WatchConnection:
    """The state of one watcher: who it is, what it watches (its :class:`~notifier.hub.Feed`), what it
    has been sent."""

    def __init__(
        self,
        ws: web.WebSocketResponse,
        transport: asyncio.Transport,
        *,
        hub: Hub,
        verifier: TokenVerifier,
        limiter: RateLimiter,
        pool: aiopg.Pool,
        audit: AuditWriter,
        metrics: NotifierMetrics,
        request_id: str,
    ) -> None:
        self.ws = ws
        self._transport = transport
        self._feed = hub.feed(self)
        self._verifier = verifier
        self._limiter = limiter
        self._pool = pool
        self._audit = audit
        self._metrics = metrics
        self._request_id = request_id
        self.principal: Principal = Principal("", False)
        self.authenticated = False
        self.last_sent = 0
        self.split_txn = False
        self._holding = False
        self._held: list[tuple[int, bytes]] = []
        self._pending: list[bytes] = []  # live events fanned out, not yet written (see deliver)
        self._closing = False
        self._expiry: asyncio.TimerHandle | None = None
        self._close_task: asyncio.Task[bool] | None = None
        self._resyncing: asyncio.Task[None] | None = None

    # --- what the hub calls ------------------------------------------------------------------------

    def deliver(self, revision: int, frame: bytes) -> bool:
        """Queue one live event (already encoded) unless it was sent before; never blocks. True when it
        is the first queued since the last flush: the hub calls :meth:`flush` once it has fanned out
        what it has, so the events of one pass go out in one write per socket."""
        if self._closing or revision <= self.last_sent:
            return False
        if self._holding:
            self._held.append((revision, frame))
            if len(self._held) > MAX_HELD_EVENTS:
                self._kick(CLOSE_SLOW_CONSUMER, REASON_HELD_EVENTS.format(limit=MAX_HELD_EVENTS))
            return False
        first = not self._pending
        self._pending.append(frame)
        self.last_sent = revision
        return first

    def flush(self) -> None:
        """Write the queued live events (called by the hub; every other write flushes first)."""
        pending, self._pending = self._pending, []
        if pending:
            self._write_frames(pending)

    def resync(self, revision: int) -> None:
        """The change log started again below what we sent (a restored database): ``reset`` and a
        snapshot at ``revision``, then live events from there."""
        if self._closing or not self._feed.patterns:
            return
        self._resyncing = asyncio.create_task(self._resync(revision), name="watch-resync")

    def _write(self, revision: int, frame: bytes) -> None:
        self.flush()
        if self._write_frames([frame]):
            self.last_sent = revision

    def _write_frames(self, frames: list[bytes]) -> bool:
        transport = self._transport
        if self._closing or transport.is_closing():
            return False
        transport.write(frames[0] if len(frames) == 1 else b"".join(frames))
        if transport.get_write_buffer_size() > MAX_BUFFER_BYTES:
            self._metrics.slow_consumers.inc()
            self._kick(CLOSE_SLOW_CONSUMER, REASON_SLOW_CONSUMER.format(limit=MAX_BUFFER_BYTES))
        return True

    # --- closing -----------------------------------------------------------------------------------

    def _kick(self, code: int, reason: str, error_event: dict[str, Any] | None = None) -> None:
        """Stop sending events and close the socket (in the background)."""
        if self._closing:
            return
        self._closing = True
        self._pending.clear()  # the client resumes from the last event it got
        self._feed.close()
        if error_event is not None and not self._transport.is_closing():
            self._transport.write(json_frame(error_event))
        self._close_task = asyncio.create_task(self.ws.close(code=code, message=close_message(reason)))

    def unavailable(self) -> None:
        """Postgres could not serve this watcher (a subscribe's replay or head during an outage): an
        error event and close 1013, try again later. The client reconnects and resumes with
        ``since_version``, as after any close, and loses nothing."""
        self._kick(CLOSE_TRY_AGAIN, REASON_UNAVAILABLE, UNAVAILABLE)

    def _token_expired(self) -> None:
        self._kick(CLOSE_UNAUTHORIZED, REASON_TOKEN_EXPIRED, TOKEN_EXPIRED)

    async def finish(self) -> None:
        """Release everything the connection holds (called once, when the socket is done)."""
        self._closing = True
        self._feed.close()
        if self._expiry is not None:
            self._expiry.cancel()
        if self._close_task is not None:
            try:
                await self._close_task
            except (ConnectionError, asyncio.CancelledError):
                pass

    # --- messages ----------------------------------------------------------------------------------

    async def send(self, message: dict[str, Any]) -> None:
        """A connection-specific message (subscribed, errors, replay), in order with live events."""
        self.flush()
        if not self._closing and not self._transport.is_closing():
            await self.ws.send_str(json.dumps(message, separators=(",", ":"), ensure_ascii=False))

    async def authenticate(self, token: Any) -> bool:
        """Verify a token (first or fresh); on failure an error event. Returns success."""
        try:
            principal, exp = await self._verifier.verify(parse_token(token))
        except DynConfigError as exc:
            await self.send(error_event_of(exc))
            return False
        if self.authenticated and principal.username != self.principal.username:
            await self.send(OTHER_USER)
            return False
        if principal != self.principal:
            self.principal = principal
            self._feed.principal_changed()
        self.authenticated = True
        if self._expiry is not None:
            self._expiry.cancel()
        delay = max(0.0, exp + LEEWAY_SECONDS - time.time())
        self._expiry = asyncio.get_running_loop().call_later(delay, self._token_expired)
        return True

    async def within_limit(self) -> bool:
        """Count one request of the watcher's user (SPEC §6: each client message is one); over the
        limit, answer with a ``Rate Limited`` error event and return False: the message is ignored, the
        connection stays open."""
        decision = await self._limiter.hit(self.principal.username)
        if not decision.allowed:
            await self.send(rate_limited(decision.message, decision.retry_after))
        return decision.allowed

    async def handle(self, text: str, query_since: int | None) -> None:
        """One client message (counted against the rate limit once its user is known)."""
        counted = self.authenticated
        if counted and not await self.within_limit():
            return
        message = parse_message(text)
        if "token" in message:
            ok = await self.authenticate(message["token"])
            if not ok and not self.authenticated:
                self._kick(CLOSE_UNAUTHORIZED, REASON_INVALID_TOKEN)
                return
        if not self.authenticated:
            await self.send(NO_TOKEN)
            self._kick(CLOSE_UNAUTHORIZED, REASON_NO_TOKEN)
            return
        # The first token message: its user is known only now. Over the limit, the token still
        # authenticates the connection (it stays open, as for any message), the rest is ignored.
        if not counted and not await self.within_limit():
            return
        if "subscribe" in message:
            await self.subscribe(parse_subscribe(message, None if self._feed.patterns else query_since))
        elif "unsubscribe" in message:
            await self.unsubscribe(parse_unsubscribe(message["unsubscribe"]))
        elif "token" not in message:
            raise BadMessage("expected subscribe, unsubscribe or token")

    async def unsubscribe(self, patterns: list[str]) -> None:
        self._feed.remove([p for p in dict.fromkeys(patterns) if p in self._feed.patterns])
        await self.send({"event": "unsubscribed", "patterns": patterns})

    async def subscribe(self, request: Subscribe) -> None:
        """Register patterns, then replay (``since_version``) or snapshot, then go live."""
        watched = self._feed.patterns
        new = [p for p in dict.fromkeys(request.patterns) if p not in watched]
        if len(watched) + len(new) > MAX_PATTERNS:
            raise BadMessage(f"at most {MAX_PATTERNS} patterns per connection")
        old = set(watched)
        first = not old
        since = request.since
        if request.split_txn is not None:
            self.split_txn = request.split_txn
        # Start from everything committed by now, even what the hub has not fanned out yet: a write
        # whose answer the client already has must be in the replay or snapshot, not come later as a
        # change. The hub is normally there within milliseconds; if it is not within 2 s (relay down),
        # start from where it is — its events follow live.
        await self._feed.reached(await committed_head(self._pool), HUB_CATCH_UP_SECONDS)
        self._holding = True
        try:
            through = self._feed.add(new)
            self._audit.add(
                AuditRecord(
                    self.principal.username, AuditAction.WATCH, ",".join(new)[:1000] or None, "ok", self._request_id
                )
            )
            await self.send({"event": "subscribed", "patterns": request.patterns, "revision": through})
            if new and since is not None:
                reset = await self._replay(new, old, since, through)
                if first and since > through and not reset:
                    self.last_sent = max(self.last_sent, since)  # the client already has those
            elif new and request.snapshot:
                await self._snapshot(new, old, through)
            if first:
                self.last_sent = max(self.last_sent, through)
        finally:
            self._release_held()

    # --- replay, snapshot, resync ------------------------------------------------------------------

    def _release_held(self) -> None:
        """Go live: write the live events held back while replaying, those not already sent."""
        self._holding = False
        held, self._held = self._held, []
        for revision, frame in held:
            if self._closing:
                break
            if revision > self.last_sent:
                self._write(revision, frame)

    async def _replay(self, new: list[str], old: set[str], since: int, through: int) -> bool:
        """Every event after ``since`` up to ``through``; or, when the log no longer holds them all, a
        ``reset`` and a snapshot. Returns whether it sent a reset instead."""
        try:
            async for page in replay_pages(self._pool, new, since, through):
                for commit in commits(page):  # sent with the connection back in the pool
                    await self._send_commit(commit, old)
                if self._closing:
                    break
        except StartOver:
            await self._reset(new, old, through)
            return True
        return False

    async def _reset(self, new: list[str], old: set[str], through: int) -> None:
        await self.send({"event": "reset", "revision": through})
        await self._snapshot(new, old, through)

    async def _snapshot(self, new: list[str], old: set[str], through: int) -> None:
        async for page in snapshot_pages(self._pool, new, through):
            for event in page:  # sent with the connection back in the pool
                if self._closing:
                    return
                await self._send_event(event, old)

    async def _resync(self, revision: int) -> None:
        self._holding = True
        try:
            self.last_sent = 0
            self._held = [(r, frame) for r, frame in self._held if r > revision]
            await self._reset(sorted(self._feed.patterns), set(), revision)
            self.last_sent = max(self.last_sent, revision)
        finally:
            self._release_held()

    async def _send_event(self, event: ChangeEvent, old: set[str]) -> None:
        message = self._readable(event, old)
        if message is not None:
            await self.send(message)
            self._metrics.events_delivered.inc()

    async def _send_commit(self, commit: Sequence[ChangeEvent], old: set[str]) -> None:
        """A replayed write's event, or a transaction's changes as the hub sends them live: one ``txn``
        frame of those this watcher may read, or (``split_txn``) those as single events."""
        changes = [message for event in commit if (message := self._readable(event, old)) is not None]
        messages = commit_events(commit, changes, split=self.split_txn)
        for message in messages:
            await self.send(message)
        if messages:
            self._metrics.events_delivered.inc()

    def _readable(self, event: ChangeEvent, old: set[str]) -> dict[str, Any] | None:
        if old and any(pattern_matches(p, event.key) for p in old):
            return None  # the client gets this key through an earlier subscription
        return self._feed.readable(event)


CONNECTIONS = web.AppKey("connections", set[WatchConnection])
#: Connections for watchers' replays and snapshots, apart from the pool of the relay and the hub, so
#: no number of subscribing watchers can take what propagation needs.
WATCH_POOL = web.AppKey("watch_pool", aiopg.Pool)


class StartOver(Exception):
    """The change log no longer holds every event a replay needs (pruned, or never in this log)."""


async def replay_pages(
    pool: aiopg.Pool, patterns: list[str], since: int, through: int
) -> AsyncIterator[list[ChangeEvent]]:
    """The events after ``since`` up to ``through`` on ``patterns``, a page at a time; raises
    :class:`StartOver` instead of leaving a gap. A database connection is held only to read a page,
    never while the consumer sends it (a slow watcher must not take what the relay and the hub need).
    The boundary is read again after each page, so a prune in between is noticed."""
    like = like_patterns(patterns)
    after = since
    while True:
        async with pool.acquire() as conn, conn.cursor() as cur:
            _, pruned = await head(cur)
            if after == since and (await resume_point(cur, since)).start_over:
                pruned = since + 1
            events = []
            if pruned <= after < through:
                events = await events_after(cur, after, through=through, patterns=like, limit=REPLAY_PAGE)
                _, pruned = await head(cur)
        if pruned > after:
            raise StartOver
        yield events
        if len(events) < REPLAY_PAGE:
            return
        after = events[-1].shown_revision  # a page ends a transaction: past every change of it


async def committed_head(pool: aiopg.Pool) -> int:
    """The last revision committed (perhaps not yet fanned out by the hub)."""
    async with pool.acquire() as conn, conn.cursor() as cur:
        current, _ = await head(cur)
    return current


async def serve(conn: WatchConnection, request: web.Request) -> None:
    """Run one socket until it is done, whatever happens: a Postgres outage closes it 1013 (the client
    resumes), anything unexpected 1011 (the socket is upgraded: an HTTP 500 can no longer be sent)."""
    try:
        await _read(conn, request)
    except POSTGRES_UNREACHABLE as exc:  # an outage is expected: one line, and the client resumes
        log.warning(
            "watch: Postgres unavailable (request %s): %s; closing 1013", request_id(request), type(exc).__name__
        )
        conn.unavailable()
    except Exception:
        log.exception("watch connection failed (request %s)", request_id(request))
        await conn.ws.close(code=CLOSE_INTERNAL, message=close_message(REASON_INTERNAL))


async def _read(conn: WatchConnection, request: web.Request) -> None:
    """Authenticate, then read the client's messages until the socket closes."""
    ws = conn.ws
    try:
        query_since = since_from_request(request)
    except BadRequest as exc:
        await conn.send(bad_request(exc.message))
        await ws.close(code=CLOSE_BAD_REQUEST, message=close_message(REASON_BAD_SINCE))
        return
    token = token_from_request(request)
    if token is not None and not await conn.authenticate(token):
        await ws.close(code=CLOSE_UNAUTHORIZED, message=close_message(REASON_INVALID_TOKEN))
        return
    deadline = time.monotonic() + AUTH_TIMEOUT_SECONDS
    while not ws.closed:
        timeout = None if conn.authenticated else max(0.0, deadline - time.monotonic())
        try:
            msg = await ws.receive(timeout=timeout)
        except TimeoutError:
            await conn.send(AUTH_TIMEOUT)
            reason = REASON_AUTH_TIMEOUT.format(seconds=AUTH_TIMEOUT_SECONDS)
            await ws.close(code=CLOSE_UNAUTHORIZED, message=close_message(reason))
            return
        if msg.type == WSMsgType.TEXT:
            try:
                await conn.handle(msg.data, query_since)
            except BadMessage as exc:
                await conn.send(bad_request(str(exc)))
        elif msg.type == WSMsgType.BINARY:
            if conn.authenticated and not await conn.within_limit():
                continue
            await conn.send(NOT_TEXT)
        else:  # CLOSE, CLOSING, CLOSED, ERROR
            return


async def close_all(connections: Iterable[WatchConnection]) -> None:
    """On shutdown: close every watch socket with 1001 (going away)."""
    await close_websockets(
        [conn.ws for conn in connections], code=CLOSE_GOING_AWAY, reason=close_message(REASON_SHUTDOWN)
    )
