"""``EventStream``: the ``/watch`` WebSocket as an endless, lossless async iterator of change events.

    async with EventStream("ws://localhost:8080/watch", token, ["app.*"], snapshot=True) as stream:
        async for event in stream:          # {"event": "update", "key": ..., "revision": 17, ...}
            ...

It reconnects forever (exponential backoff with jitter) and resumes with ``since_version`` set to the
revision of the last event it yielded, so across reconnects every change arrives exactly once and in
revision order. Yielded kinds: ``update``, ``delete``, ``expired``, ``txn``, ``reset`` (and, with
``markers=True``, ``synced``); ``subscribed``, ``unsubscribed`` and ``error`` are handled here; any other
kind (from a newer server) is skipped.

A transaction (``POST /txn``) comes as one ``txn`` event, ``{"event": "txn", "revision": R, "changes":
[change events, each with revision R]}``: the server's default, whole or not at all, and the stream
resumes after ``R`` like after any event. Only a snapshot sends the keys of one transaction as single
``update`` events sharing one revision, so the stream tells events apart by revision *and* key: one
of them is never dropped as a repeat of another. If the connection drops during a snapshot, the
last revision yielded may be missing some of its keys: the stream resumes after the revision before it
(all of whose keys came first, the snapshot being in revision order) and yields the rest of that
transaction as a ``txn`` event holding only the changes not yielded yet, so still every change exactly
once; when there is no revision before it, it resubscribes with a fresh snapshot and yields a ``reset``
first, as for an interrupted post-reset snapshot.
The one exception to "revisions only grow": after a ``reset`` comes the snapshot to replace your state
with, whose events keep their original (possibly older) revisions; all of them are yielded. If the
connection drops before that snapshot is complete, the stream resubscribes with a fresh snapshot and
yields another ``reset`` first.

How the end of a replay is found: right after each ``subscribe`` the stream sends ``{"unsubscribe": []}``.
The server handles one message at a time, so its answer (``unsubscribed`` with no patterns) arrives
after every replayed or snapshot event of that subscription and before any live one. That barrier ends
a post-``reset`` snapshot exactly (no guessing with quiet periods) and is what ``synced`` reports.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import random
import time
from collections import deque
from typing import Any, TypeGuard

import aiohttp
from aiohttp import WSMsgType

from .auth import TokenSource, resolve_token
from .errors import ApiError, BadRequest, Unauthorized
from .handshake import RefusedHandshake
from .models import CHANGE_KINDS, TXN_EVENT

log = logging.getLogger(__name__)

CLOSE_UNAUTHORIZED = 4401
REFRESH_MARGIN_SECONDS = 60.0
_CONNECT_ERRORS = (aiohttp.ClientError, OSError, asyncio.TimeoutError)


def token_expiry(token: str) -> float | None:
    """The ``exp`` claim of a JWT (read without verifying it; only used to plan a refresh), or None."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        exp = claims.get("exp") if isinstance(claims, dict) else None
    except (IndexError, ValueError):
        return None
    return float(exp) if isinstance(exp, (int, float)) and not isinstance(exp, bool) else None


def refresh_delay(exp: float, now: float) -> float:
    """Seconds until a token expiring at ``exp`` should be replaced: 60 s before, or at half-life."""
    remaining = exp - now
    delay = remaining - REFRESH_MARGIN_SECONDS if remaining > 2 * REFRESH_MARGIN_SECONDS else remaining / 2
    return max(delay, 1.0)


class EventStream:
    """A resumable subscription to ``patterns`` on a notifier's ``/watch`` (see the module docstring).

    ``since_version`` resumes after a known revision; otherwise ``snapshot=True`` starts with the current
    value of every matching key. ``token`` is a string or a (sync or async) callable; a callable is asked
    for a fresh token at every connect and shortly before the current one expires (sent in-band, so the
    connection stays open). ``markers=True`` also yields ``{"event": "synced", "revision": R}`` each time
    a (re)subscription has delivered everything up to revision ``R`` (the replay or snapshot is complete).

    A handshake answered without an upgrade is said in one line with its status: 429 and 5xx are retried
    with backoff (at least ``Retry-After``); any other status before the first connection succeeded
    raises the typed error of that status (a wrong URL or token: retrying would not help), and after it
    is retried like a lost connection. ``url_setting`` names what sets the URL in that message.

    Also readable: ``connects`` (connections made so far), ``last_close_code`` and ``last_close_reason``
    (the server's close code and the reason it sent with it, e.g. ``4008``, ``"slow consumer: …"``), and
    ``last_message_at`` (``time.monotonic()`` when the last frame, ping or pong arrived; None before the first).
    """

    def __init__(
        self,
        watch_url: str,
        token: TokenSource,
        patterns: list[str],
        *,
        since_version: int | None = None,
        snapshot: bool = False,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        session: aiohttp.ClientSession | None = None,
        heartbeat: float = 15.0,
        markers: bool = False,
        url_setting: str = "the watch URL",
    ) -> None:
        if not patterns:
            raise ValueError("at least one pattern is needed")
        self.watch_url = watch_url
        self.patterns = list(patterns)
        self._token = token
        self._since = since_version
        self._snapshot = snapshot
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._delay = backoff_initial
        self._planned: float | None = None  # the next pause, when a failure already said how long
        self._url_setting = url_setting
        self._session = session
        self._own_session = session is None
        self._heartbeat = heartbeat
        self._markers = markers
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._last = _Yielded()  # the resume point: the last revision yielded (or synced), and its keys
        self._complete = True  # every change of that revision was yielded (not only some snapshot events)
        self._snapshotting = False  # the subscription asked for a snapshot, and its barrier has not come
        self._reset_through: int | None = None  # inside a post-reset snapshot (ends at the barrier)
        self._snap = _Yielded()  # what was yielded of the post-reset snapshot
        self._resnapshot = False  # resubscribed with a snapshot to replace an interrupted one (after a reset)
        self._through = 0  # the server's head when the current subscription started
        self._subscribed = False
        self._error: dict[str, Any] | None = None
        self._refusal: ApiError | None = None
        self._pending: deque[dict[str, Any]] = deque()
        self._attempts = 0
        self._closed = False
        self._wake: asyncio.Event | None = None
        self.connects = 0
        self.last_close_code: int | None = None
        self.last_close_reason = ""
        self.last_message_at: float | None = None

    @property
    def revision(self) -> int | None:
        """The revision of the last event yielded (or synced), or None. The stream resumes after it (or
        after the one before it, when the connection dropped between a snapshot's events of one revision)."""
        return self._last.revision

    @property
    def connected(self) -> bool:
        """True while the socket is open and the subscription was accepted."""
        return self._ws is not None and not self._ws.closed and self._subscribed

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> dict[str, Any]:
        """The next event; reconnects as often as needed. Raises BadRequest if the server refuses the
        subscription (invalid pattern), StopAsyncIteration once closed."""
        while True:
            if self._closed:
                raise StopAsyncIteration
            if self._pending:
                return self._pending.popleft()
            ws = self._ws
            if ws is None:
                await self._connect()
                if self._refusal is not None:
                    await self.close()
                    raise self._refusal
                continue
            msg = await ws.receive()
            self.last_message_at = time.monotonic()
            if msg.type == WSMsgType.TEXT:
                try:
                    event = json.loads(msg.data)
                except ValueError:
                    log.warning("ignoring a frame that is not JSON")
                    continue
                if isinstance(event, dict):
                    self._handle(event)
                if self._refusal is not None:
                    await self.close()
                    raise self._refusal
            elif msg.type == WSMsgType.PING:
                await ws.pong(msg.data)
            elif msg.type in (WSMsgType.PONG, WSMsgType.BINARY):
                continue
            else:  # CLOSE, CLOSING, CLOSED, ERROR
                await self._disconnected(ws, msg.extra if msg.type == WSMsgType.CLOSE else "")
                if self._refusal is not None:
                    await self.close()
                    raise self._refusal

    async def close(self) -> None:
        """Stop: close the socket (and the session if the stream made it); iteration ends."""
        self._closed = True
        if self._wake is not None:
            self._wake.set()
        await self._drop_socket()
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    # --- events ------------------------------------------------------------------------------------

    def _handle(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        revision = event.get("revision")
        if kind in CHANGE_KINDS and isinstance(revision, int):
            self._change(event, revision, [str(event.get("key"))])
        elif kind == TXN_EVENT and isinstance(revision, int) and _is_changes(changes := event.get("changes")):
            self._change(event, revision, [str(change.get("key")) for change in changes])
        elif kind == "reset" and isinstance(revision, int):
            log.warning(
                "the server no longer has the change log after revision %s: reset and snapshot", self._last.revision
            )
            self._reset_through, self._snap = revision, _Yielded()
            self._pending.append(event)
        elif kind == "subscribed":
            self._subscribed = True
            self._through = revision if isinstance(revision, int) else 0
            if self._resnapshot:  # a snapshot was cut short: this one replaces it, after a reset
                self._resnapshot, self._reset_through, self._snap = False, self._through, _Yielded()
                self._pending.append({"event": "reset", "revision": self._through})
            self._delay = self._backoff_initial
            log.info("subscribed to %d pattern(s) at revision %s", len(self.patterns), self._through)
        elif kind == "unsubscribed" and event.get("patterns") == []:
            self._barrier()
        elif kind == "error":
            self._error = event
            log.warning("server error: %s: %s", event.get("error"), event.get("message"))

    def _change(self, event: dict[str, Any], revision: int, keys: list[str]) -> None:
        """A change event (one key) or a ``txn`` event (its changes' keys): yield what is new of it."""
        through = self._reset_through
        if through is not None:
            if revision <= through:  # part of the post-reset snapshot
                if fresh := self._snap.take(revision, keys):
                    self._pending.append(_only(event, fresh))
                return
            self._end_reset(through)
        fresh = self._last.take(revision, keys)
        if event["event"] == TXN_EVENT and revision == self._last.revision:
            self._complete = True  # a transaction comes whole: nothing more of its revision will come
        elif fresh:
            # A snapshot may send more keys with this revision (one transaction's); anything else is whole.
            self._complete = not self._snapshotting
        if fresh:
            self._pending.append(_only(event, fresh))

    def _end_reset(self, through: int) -> None:
        self._reset_through = None
        self._last.advance(through)
        self._complete = self._complete or self._last.revision == through

    def _barrier(self) -> None:
        """Everything of the current subscription's replay or snapshot has arrived."""
        if not self._subscribed:  # the server answered the subscribe with an error event
            error = self._error or {}
            phrase, message = str(error.get("error", "Bad Request")), str(error.get("message", ""))
            self._refusal = BadRequest(400, phrase, message, error)
            return
        if self._reset_through is not None:
            self._end_reset(self._reset_through)
        # Nothing matching happened up to the head announced by `subscribed`: resume from there.
        self._last.advance(self._through)
        self._complete, self._snapshotting = True, False
        if self._markers:
            self._pending.append({"event": "synced", "revision": self._last.revision})

    # --- connection --------------------------------------------------------------------------------

    def _subscribe_message(self) -> dict[str, Any]:
        message: dict[str, Any] = {"subscribe": self.patterns}
        # An interrupted post-reset snapshot, or a snapshot cut inside its first revision: start again.
        self._resnapshot = self._reset_through is not None or (not self._complete and self._last.previous is None)
        self._snapshotting = False
        if self._resnapshot:  # its events are told apart by the reset's revision, not by _snapshotting
            message["snapshot"] = True
            return message
        since = self._resume_after()
        if since is not None:
            message["since_version"] = since
        elif self._snapshot:
            message["snapshot"] = self._snapshotting = True
        return message

    def _resume_after(self) -> int | None:
        """The ``since_version`` of a resubscription: the last revision yielded, or the one yielded before
        it while only some snapshot events of it were (the replay brings its transaction whole)."""
        if self._last.revision is None:
            return self._since
        return self._last.revision if self._complete else self._last.previous

    async def _connect(self) -> None:
        if self._wake is None:
            self._wake = asyncio.Event()
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=10))
        while not self._closed:
            if self._attempts:
                await self._backoff()
                if self._closed:
                    return
            self._attempts += 1
            try:
                token = await resolve_token(self._token)
            except Exception:  # a failing token callable must not end the stream
                log.exception("the token source failed")
                continue
            try:
                ws = await self._session.ws_connect(
                    self.watch_url,
                    headers={"Authorization": f"Bearer {token}"},
                    heartbeat=self._heartbeat,
                    autoping=False,
                    timeout=aiohttp.ClientWSTimeout(ws_close=2.0),
                )
            except aiohttp.WSServerHandshakeError as exc:
                if not self._closed and self._handshake_refused(exc):
                    return
                continue
            except _CONNECT_ERRORS as exc:
                if not self._closed:
                    delay = self._plan_retry()
                    log.warning(
                        "cannot connect to %s: %s; retrying in %.1f s", self.watch_url, exc.__class__.__name__, delay
                    )
                continue
            except RuntimeError:
                if self._closed:  # close() closed the session under us
                    return
                raise
            if self._closed:
                await ws.close()
                return
            self.connects += 1
            self._ws, self._subscribed, self._error = ws, False, None
            try:
                await ws.send_json(self._subscribe_message())
                await ws.send_json({"unsubscribe": []})  # the end-of-replay barrier
            except _CONNECT_ERRORS:
                await self._disconnected(ws)
                continue
            if not isinstance(self._token, str):
                self._refresher = asyncio.create_task(self._refresh(ws, token), name="dynconfig-token-refresh")
            return

    def _handshake_refused(self, exc: aiohttp.WSServerHandshakeError) -> bool:
        """Say what the handshake got; True when that is final (the refusal is then set)."""
        answer = RefusedHandshake.from_error(self.watch_url, exc.status, exc.headers)
        if not answer.retryable and not self.connects:
            self._refusal = answer.error(self._url_setting)
            return True
        delay = self._plan_retry(at_least=answer.retry_after)
        log.warning("%s; retrying in %.1f s", answer.said(self._url_setting), delay)
        return False

    def _plan_retry(self, at_least: float = 0.0) -> float:
        """The pause before the next attempt (said in the caller's warning), and the backoff's next step."""
        self._planned = max(at_least, random.uniform(self._delay / 2, self._delay))
        self._delay = min(self._delay * 2, self._backoff_max)
        return self._planned

    async def _backoff(self) -> None:
        if self._planned is None:
            self._plan_retry()
        delay, self._planned = self._planned or 0.0, None
        assert self._wake is not None
        try:
            await asyncio.wait_for(self._wake.wait(), delay)
        except TimeoutError:
            pass

    async def _disconnected(self, ws: aiohttp.ClientWebSocketResponse, reason: Any = "") -> None:
        code = ws.close_code
        reason = reason if isinstance(reason, str) else ""
        self.last_close_code, self.last_close_reason = code, reason
        closed = f"{code}: {reason}" if reason else f"{code}"
        await self._drop_socket()
        if self._closed:
            return
        if code == CLOSE_UNAUTHORIZED and isinstance(self._token, str):
            # A fixed token will not get better by retrying: give up with the server's reason.
            error = self._error or {}
            message = str(error.get("message") or reason or "the server refused the token")
            self._refusal = Unauthorized(401, "Unauthorized", message, error)
        elif code == CLOSE_UNAUTHORIZED:
            log.warning("the server closed the watch (%s); reconnecting with a fresh token", closed)
        else:
            log.warning(
                "watch connection lost (close code %s); resuming after revision %s", closed, self._resume_after()
            )

    async def _drop_socket(self) -> None:
        ws, self._ws = self._ws, None
        self._subscribed = False
        refresher, self._refresher = self._refresher, None
        if refresher is not None:
            refresher.cancel()
            await asyncio.wait([refresher])
        if ws is not None and not ws.closed:
            try:
                await ws.close()
            except _CONNECT_ERRORS:
                pass

    async def _refresh(self, ws: aiohttp.ClientWebSocketResponse, token: str) -> None:
        """Send a fresh token before the current one expires, for as long as this socket lives."""
        while not ws.closed:
            exp = token_expiry(token)
            if exp is None:
                return  # not a JWT we can read: rely on reconnect-after-4401
            await asyncio.sleep(refresh_delay(exp, time.time()))
            try:
                fresh = await resolve_token(self._token)
                await ws.send_json({"token": fresh})
            except _CONNECT_ERRORS:
                return
            except Exception:
                log.exception("the token source failed; retrying")
                await asyncio.sleep(min(5.0, max(1.0, exp - time.time()) / 2))
                continue
            log.debug("sent a fresh token")
            token = fresh


class _Yielded:
    """The last revision yielded and which keys of it. Events of one revision may come in several frames
    (a snapshot sends each key of a transaction as its own event), so a repeat is told by both."""

    def __init__(self) -> None:
        self.revision: int | None = None
        self.keys: set[str] = set()
        self.previous: int | None = None  # the revision yielded before ``revision``

    def take(self, revision: int, keys: list[str]) -> list[str]:
        """The ``keys`` of an event at ``revision`` not yielded yet (all of them past the last revision, none
        before it), counted as yielded from now on."""
        if self.revision is not None and revision < self.revision:
            return []
        if revision != self.revision:
            self.previous, self.revision, self.keys = self.revision, revision, set()
        fresh = [key for key in keys if key not in self.keys]
        self.keys.update(fresh)
        return fresh

    def advance(self, revision: int) -> None:
        """Everything up to ``revision`` counts as yielded."""
        if self.revision is None or revision > self.revision:
            self.previous, self.revision, self.keys = self.revision, revision, set()


def _is_changes(changes: Any) -> TypeGuard[list[dict[str, Any]]]:
    return isinstance(changes, list) and all(isinstance(change, dict) for change in changes)


def _only(event: dict[str, Any], keys: list[str]) -> dict[str, Any]:
    """``event`` as it is, or a ``txn`` event holding only the changes of ``keys`` (the rest was yielded)."""
    changes = event.get("changes")
    if event["event"] != TXN_EVENT or not isinstance(changes, list) or len(changes) == len(keys):
        return event
    wanted = set(keys)
    return {**event, "changes": [change for change in changes if str(change.get("key")) in wanted]}
