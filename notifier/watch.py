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
import re
import time
from typing import Any

import aiopg
from aiohttp import WSMsgType, web

from shared.acl import Principal
from shared.audit import AuditRecord, AuditWriter
from shared.auth import LEEWAY_SECONDS, TokenVerifier, bearer_token
from shared.changelog import ChangeEvent, events_after, head, like_patterns, resume_point, snapshot_pages
from shared.errors import DynConfigError, Unauthorized
from shared.ratelimit import RateLimiter
from shared.validation import key_problem

from .frames import json_frame
from .hub import Hub, pattern_matches
from .metrics import NotifierMetrics

log = logging.getLogger(__name__)

MAX_PATTERNS = 1000
AUTH_TIMEOUT_SECONDS = 10.0
MAX_BUFFER_BYTES = 4 * 1024 * 1024
MAX_HELD_EVENTS = 10_000
REPLAY_PAGE = 1000
HUB_CATCH_UP_SECONDS = 2.0
CLOSE_UNAUTHORIZED = 4401
CLOSE_SLOW_CONSUMER = 4008
CLOSE_BAD_REQUEST = 4400
CLOSE_TRY_AGAIN = 1013  # RFC 6455 §7.4.1 (IANA): try again later
# The reason sent with each close code (a browser shows it as CloseEvent.reason). Every close of a watch
# socket, here and in main.py, takes its reason from this list.
REASON_INVALID_TOKEN = "unauthorized: invalid or expired token"
REASON_NO_TOKEN = "unauthorized: send a token first"
REASON_AUTH_TIMEOUT = "unauthorized: no valid token within {seconds:g} s"
REASON_TOKEN_EXPIRED = "unauthorized: token expired"
REASON_SLOW_CONSUMER = "slow consumer: backlog over {limit} bytes, resume with since_version"
REASON_HELD_EVENTS = "slow consumer: over {limit} events held back during replay, resume with since_version"
REASON_BAD_SINCE = "bad request: invalid since_version"
REASON_SHUTDOWN = "server shutting down"
REASON_INTERNAL = "internal server error"
REASON_UNAVAILABLE = "database unavailable: reconnect and resume with since_version"
MAX_REASON_BYTES = 123  # RFC 6455 §5.5: 125 bytes of payload, 2 of them the code
_PREFIX = re.compile(r"^[A-Za-z0-9._:/-]{0,255}\*$")


def close_message(reason: str) -> bytes:
    """``reason`` as a close frame's payload: UTF-8, cut to 123 bytes at a character boundary."""
    return reason.encode()[:MAX_REASON_BYTES].decode(errors="ignore").encode()


class BadMessage(Exception):
    """A client message we answer with an error event (the connection stays open)."""


def pattern_problem(pattern: Any) -> str | None:
    """Why ``pattern`` is not a valid watch pattern (exact key, or a prefix ending in ``*``)."""
    if not isinstance(pattern, str):
        return "patterns are strings"
    if pattern.endswith("*"):
        return None if _PREFIX.match(pattern) else f"invalid prefix pattern {pattern!r}"
    problem = key_problem(pattern)
    return f"invalid pattern {pattern!r}: {problem}" if problem else None


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
        message = "The database is unavailable; reconnect and resume with since_version"
        self._kick(
            CLOSE_TRY_AGAIN, REASON_UNAVAILABLE, {"event": "error", "error": "Service Unavailable", "message": message}
        )

    def _token_expired(self) -> None:
        self._kick(
            CLOSE_UNAUTHORIZED,
            REASON_TOKEN_EXPIRED,
            {"event": "error", "error": "Unauthorized", "message": "Token expired; reconnect with a fresh token"},
        )

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
            if not isinstance(token, str) or not token:
                raise Unauthorized("token must be a non-empty string")
            principal, exp = await self._verifier.verify(token)
        except DynConfigError as exc:
            await self.send({"event": "error", **exc.body()})
            return False
        if self.authenticated and principal.username != self.principal.username:
            await self.send(
                {"event": "error", "error": "Unauthorized", "message": "A fresh token must be for the same user"}
            )
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
            message = f"{decision.message}; message ignored, retry in {decision.retry_after} s"
            await self.send({"event": "error", "error": "Rate Limited", "message": message})
        return decision.allowed

    async def handle(self, text: str, query_since: int | None) -> None:
        """One client message (counted against the rate limit once its user is known)."""
        counted = self.authenticated
        if counted and not await self.within_limit():
            return
        try:
            message = json.loads(text)
        except ValueError:
            raise BadMessage("messages are JSON objects") from None
        if not isinstance(message, dict):
            raise BadMessage("messages are JSON objects")
        if "token" in message:
            ok = await self.authenticate(message["token"])
            if not ok and not self.authenticated:
                self._kick(CLOSE_UNAUTHORIZED, REASON_INVALID_TOKEN)
                return
        if not self.authenticated:
            await self.send({"event": "error", "error": "Unauthorized", "message": "Send a token first"})
            self._kick(CLOSE_UNAUTHORIZED, REASON_NO_TOKEN)
            return
        # The first token message: its user is known only now. Over the limit, the token still
        # authenticates the connection (it stays open, as for any message), the rest is ignored.
        if not counted and not await self.within_limit():
            return
        if "subscribe" in message:
            await self.subscribe(message, query_since)
        elif "unsubscribe" in message:
            await self.unsubscribe(message["unsubscribe"])
        elif "token" not in message:
            raise BadMessage("expected subscribe, unsubscribe or token")

    async def unsubscribe(self, patterns: Any) -> None:
        if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
            raise BadMessage("unsubscribe takes a list of patterns")
        self._feed.remove([p for p in dict.fromkeys(patterns) if p in self._feed.patterns])
        await self.send({"event": "unsubscribed", "patterns": patterns})

    async def subscribe(self, message: dict[str, Any], query_since: int | None) -> None:
        """Register patterns, then replay (``since_version``) or snapshot, then go live."""
        patterns = message["subscribe"]
        if not isinstance(patterns, list) or not patterns:
            raise BadMessage("subscribe takes a non-empty list of patterns")
        for pattern in patterns:
            problem = pattern_problem(pattern)
            if problem:
                raise BadMessage(problem)
        since = message.get("since_version", query_since if not self._feed.patterns else None)
        if since is not None and (not isinstance(since, int) or isinstance(since, bool) or since < 0):
            raise BadMessage("since_version must be a whole number >= 0")
        want_snapshot = message.get("snapshot", False)
        if not isinstance(want_snapshot, bool):
            raise BadMessage("snapshot must be true or false")
        watched = self._feed.patterns
        new = [p for p in dict.fromkeys(patterns) if p not in watched]
        if len(watched) + len(new) > MAX_PATTERNS:
            raise BadMessage(f"at most {MAX_PATTERNS} patterns per connection")
        old = set(watched)
        first = not old
        # Start from everything committed by now, even what the hub has not fanned out yet: a write
        # whose answer the client already has must be in the replay or snapshot, not come later as a
        # change. The hub is normally there within milliseconds; if it is not within 2 s (relay down),
        # start from where it is — its events follow live.
        await self._feed.reached(await self._committed_head(), HUB_CATCH_UP_SECONDS)
        self._holding = True
        try:
            through = self._feed.add(new)
            self._audit.add(
                AuditRecord(self.principal.username, "watch", ",".join(new)[:1000] or None, "ok", self._request_id)
            )
            await self.send({"event": "subscribed", "patterns": patterns, "revision": through})
            if new and since is not None:
                reset = await self._replay(new, old, since, through)
                if first and since > through and not reset:
                    self.last_sent = max(self.last_sent, since)  # the client already has those
            elif new and want_snapshot:
                await self._snapshot(new, old, through)
            if first:
                self.last_sent = max(self.last_sent, through)
        finally:
            self._release_held()

    async def _committed_head(self) -> int:
        async with self._pool.acquire() as conn, conn.cursor() as cur:
            current, _ = await head(cur)
        return current

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
        """Every event after ``since`` up to ``through``, a page at a time. A database connection is held
        only to read a page, never while a send waits on the client (a slow watcher must not take
        what the relay and the hub need). The boundary is read again after each page, so a prune in
        between gives a ``reset``, never a silent gap. Returns whether it sent a reset instead."""
        patterns = like_patterns(new)
        after = since
        while not self._closing:
            async with self._pool.acquire() as conn, conn.cursor() as cur:
                _, pruned = await head(cur)
                if after == since and (await resume_point(cur, since)).start_over:  # pruned, or never in this log
                    pruned = since + 1
                events = []
                if pruned <= after < through:
                    events = await events_after(cur, after, through=through, patterns=patterns, limit=REPLAY_PAGE)
                    _, pruned = await head(cur)
            if pruned > after:
                await self._reset(new, old, through)
                return True
            for event in events:
                after = event.revision
                await self._send_event(event, old)
            if len(events) < REPLAY_PAGE:
                break
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
        if old and any(pattern_matches(p, event.key) for p in old):
            return  # the client gets this key through an earlier subscription
        message = self._feed.readable(event)
        if message is not None:
            await self.send(message)
            self._metrics.events_delivered.inc()


def token_from_request(request: web.Request) -> str | None:
    """A token from the Authorization header or the ``access_token`` query parameter."""
    header = request.headers.get("Authorization")
    if header:
        try:
            return bearer_token(header)
        except Unauthorized:
            return ""
    return request.query.get("access_token")


def since_from_request(request: web.Request) -> int | None:
    raw = request.query.get("since_version")
    if raw is None:
        return None
    if not raw.isascii() or not raw.isdigit():
        raise BadMessage("since_version must be a whole number >= 0")
    return int(raw)


async def serve(conn: WatchConnection, request: web.Request) -> None:
    """Authenticate, then read the client's messages until the socket closes."""
    ws = conn.ws
    try:
        query_since = since_from_request(request)
    except BadMessage as exc:
        await conn.send({"event": "error", "error": "Bad Request", "message": str(exc)})
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
            await conn.send({"event": "error", "error": "Unauthorized", "message": "No valid token within 10 s"})
            reason = REASON_AUTH_TIMEOUT.format(seconds=AUTH_TIMEOUT_SECONDS)
            await ws.close(code=CLOSE_UNAUTHORIZED, message=close_message(reason))
            return
        if msg.type == WSMsgType.TEXT:
            try:
                await conn.handle(msg.data, query_since)
            except BadMessage as exc:
                await conn.send({"event": "error", "error": "Bad Request", "message": str(exc)})
        elif msg.type == WSMsgType.BINARY:
            if conn.authenticated and not await conn.within_limit():
                continue
            await conn.send({"event": "error", "error": "Bad Request", "message": "messages are JSON text"})
        else:  # CLOSE, CLOSING, CLOSED, ERROR
            return
