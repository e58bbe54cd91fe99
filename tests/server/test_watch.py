"""The ``/watch`` WebSocket protocol (SPEC §6) against a real notifier, with writes through the real API.

Every watcher is a real WebSocket client on 127.0.0.1 (aiohttp's, or, for the slow-consumer test, a raw
TCP socket doing the handshake by hand). The database is shared by the whole session and the relay
forwards every test's rows, so assertions only look at keys under this test's ``unique_prefix``; a
"sentinel" write that the watcher may read, made after the writes it must not see, proves absence
(events arrive in revision order, so anything delivered would come before the sentinel).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import socket
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import aiopg
import pytest
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families
from support import ADMIN, Api, client_frame, eventually, wait_caught_up

import notifier.watch
from notifier.hub import HUB
from notifier.watch import CONNECTIONS

ALICE = "alice"
BOB = "bob"
TIMEOUT = 10.0
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")
Client = TestClient[Any, Any]
Token = Callable[..., str]


# --- helpers ------------------------------------------------------------------------------------


class WatchApi(Api):
    """Namespace ACLs, as the admin, that must succeed."""

    async def put_ns(self, ns: str, read: list[str], write: list[str]) -> None:
        status, body = await self.call("PUT", f"/namespaces/{ns}", body={"acls": {"read": read, "write": write}})
        assert status in (200, 201), body

    async def delete_ns(self, ns: str) -> None:
        status, body = await self.call("DELETE", f"/namespaces/{ns}")
        assert status == 204, body


class Watcher:
    """One real WebSocket connection to ``/watch``."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self._pending: deque[dict[str, Any]] = deque()

    async def send(self, message: Any) -> None:
        await self.ws.send_str(json.dumps(message))

    async def recv(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        """The next text message, decoded; fails on a close or a non-text frame."""
        if self._pending:
            return self._pending.popleft()
        msg = await asyncio.wait_for(self.ws.receive(), timeout)
        assert msg.type == WSMsgType.TEXT, f"expected a text message, got {msg.type!r} {msg.data!r} {msg.extra!r}"
        decoded = json.loads(msg.data)
        assert isinstance(decoded, dict), decoded
        return decoded

    async def subscribe(self, patterns: Any, **extra: Any) -> dict[str, Any]:
        """Send a subscribe and return the ``subscribed`` answer (earlier events are kept for recv)."""
        await self.send({"subscribe": patterns, **extra})
        early: list[dict[str, Any]] = []
        while True:
            message = await self.recv()
            if message.get("event") == "subscribed":
                self._pending.extend(early)
                return message
            assert message.get("event") in ("update", "delete", "expired"), message
            early.append(message)

    async def until(self, last_key: str, prefix: str, timeout: float = TIMEOUT) -> list[dict[str, Any]]:
        """Change events for keys under ``prefix`` up to and including the first one for ``last_key``."""
        seen: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while True:
            message = await self.recv(max(0.01, deadline - time.monotonic()))
            assert message.get("event") in ("update", "delete", "expired"), message
            if not message["key"].startswith(prefix):
                continue
            seen.append(message)
            if message["key"] == last_key:
                return seen

    async def changes(self, prefix: str, count: int, timeout: float = TIMEOUT) -> list[dict[str, Any]]:
        """The next ``count`` change events for keys under ``prefix``."""
        seen: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while len(seen) < count:
            message = await self.recv(max(0.01, deadline - time.monotonic()))
            assert message.get("event") in ("update", "delete", "expired"), message
            if message["key"].startswith(prefix):
                seen.append(message)
        return seen

    async def expect_close(self, code: int, reason: str, timeout: float = TIMEOUT) -> list[dict[str, Any]]:
        """Read until the server's close frame; assert its code and reason; return the text messages before it."""
        before: list[dict[str, Any]] = list(self._pending)
        self._pending.clear()
        deadline = time.monotonic() + timeout
        while True:
            msg = await asyncio.wait_for(self.ws.receive(), max(0.01, deadline - time.monotonic()))
            if msg.type == WSMsgType.TEXT:
                before.append(json.loads(msg.data))
                continue
            assert msg.type == WSMsgType.CLOSE, f"expected a close frame, got {msg.type!r} {msg.data!r}"
            assert (msg.data, msg.extra) == (code, reason), (
                f"close {msg.data} {msg.extra!r}, expected {code} {reason!r}"
            )
            return before


Connect = Callable[..., Awaitable[Watcher]]
_BACKGROUND = {"hub-pump", "hub-redis", "hub-pg", "hub-tick", "relay", "jwks-refresh", "audit-flush"}


async def close_notifier(server: TestServer, within: float = 10.0) -> bool:
    """Close a notifier; True when it shut down within ``within`` seconds.

    Past that, the hub/relay tasks that swallowed their cancellation are cancelled again until the
    close finishes, so a server bug (reported) cannot hang the whole test session.
    """
    closing = asyncio.ensure_future(server.close())
    done, _ = await asyncio.wait({closing}, timeout=within)
    while not closing.done():
        for task in asyncio.all_tasks():
            if task.cancelling() and not task.done() and task.get_name() in _BACKGROUND:
                task.cancel()
        await asyncio.wait({closing}, timeout=0.5)
    await closing
    return bool(done)


@pytest.fixture
def api(client: Client, token: Token) -> WatchApi:
    return WatchApi(client, token)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
async def connect(
    session: aiohttp.ClientSession, notifier_server: TestServer, token: Token, pg: aiopg.Pool
) -> AsyncIterator[Connect]:
    """``await connect(user=ADMIN, *, auth="header"|"query"|None, jwt=None, query=None, server=None)``."""
    opened: list[aiohttp.ClientWebSocketResponse] = []

    async def open_(
        user: str = ADMIN,
        *,
        auth: str | None = "header",
        jwt: str | None = None,
        query: dict[str, str] | None = None,
        server: TestServer | None = None,
    ) -> Watcher:
        jwt = jwt if jwt is not None else token(user)
        params = dict(query or {})
        headers = {}
        if auth == "header":
            headers["Authorization"] = f"Bearer {jwt}"
        elif auth == "query":
            params["access_token"] = jwt
        target = server or notifier_server
        await wait_caught_up(pg, target)
        url = target.make_url("/watch")
        ws = await session.ws_connect(url, params=params, headers=headers, heartbeat=None, autoping=True)
        opened.append(ws)
        return Watcher(ws)

    yield open_
    for ws in opened:
        await ws.close()


async def relay_state(pg: aiopg.Pool) -> tuple[int, int]:
    """(head, pruned_through) of the change log."""
    async with pg.acquire() as conn, conn.cursor() as cur:
        await cur.execute("SELECT head, pruned_through FROM relay_state")
        head, pruned = await cur.fetchone()
    return int(head), int(pruned)


async def wait_relayed(pg: aiopg.Pool, prefix: str, count: int) -> None:
    """Wait until ``count`` changes of keys under ``prefix`` have a revision."""
    relayed = 0

    async def enough() -> bool:
        nonlocal relayed
        async with pg.acquire() as conn, conn.cursor() as cur:
            await cur.execute("SELECT count(*) FROM outbox WHERE key LIKE %s AND revision IS NOT NULL", (prefix + "%",))
            (relayed,) = await cur.fetchone()
        return relayed >= count

    await eventually(enough, TIMEOUT, lambda: f"{count} changes relayed; only {relayed}")
    assert relayed == count, f"{relayed} relayed changes under {prefix}, expected {count}"


async def wait_namespace_loaded(server: TestServer, namespace: str, present: bool) -> None:
    """Synchronisation only: wait until the hub has (re)loaded a namespace ACL change."""
    await eventually(
        lambda: (namespace in server.app[HUB].namespace_acls) == present,
        5.0,
        f"notifier reloading namespace {namespace}",
        interval=0.02,
    )


def assert_strictly_increasing(events: list[dict[str, Any]]) -> None:
    revisions = [e["revision"] for e in events]
    assert all(isinstance(r, int) for r in revisions), revisions
    assert revisions == sorted(set(revisions)), revisions


def summary(events: list[dict[str, Any]]) -> list[tuple[str, str, int, Any]]:
    """(event, key, version, value) of each event, for compact comparisons."""
    return [(e["event"], e["key"], e["version"], e.get("value")) for e in events]


def assert_error(message: dict[str, Any], phrase: str) -> None:
    assert message["event"] == "error", message
    assert message["error"] == phrase, message
    assert isinstance(message["message"], str) and message["message"], message
    assert set(message) <= {"event", "error", "message", "fields"}, message


# --- auth ---------------------------------------------------------------------------------------


async def test_authorization_header_authenticates(connect: Connect, unique_prefix: str) -> None:
    w = await connect(ADMIN, auth="header")
    answer = await w.subscribe([f"{unique_prefix}.a"])
    assert answer["event"] == "subscribed" and answer["patterns"] == [f"{unique_prefix}.a"]


async def test_access_token_query_parameter_authenticates(connect: Connect, unique_prefix: str) -> None:
    w = await connect(ADMIN, auth="query")
    answer = await w.subscribe([f"{unique_prefix}.a"])
    assert answer["event"] == "subscribed" and answer["patterns"] == [f"{unique_prefix}.a"]


async def test_token_message_before_subscribe_authenticates(
    connect: Connect, token: Token, api: WatchApi, unique_prefix: str
) -> None:
    key = f"{unique_prefix}.a"
    w = await connect(auth=None)
    await w.send({"token": token(ADMIN)})
    answer = await w.subscribe([key])
    assert answer["patterns"] == [key]
    await api.put(key, 1)
    assert summary(await w.changes(unique_prefix, 1)) == [("update", key, 1, 1)]


async def test_token_inside_subscribe_message_authenticates(
    connect: Connect, token: Token, api: WatchApi, unique_prefix: str
) -> None:
    key = f"{unique_prefix}.a"
    w = await connect(auth=None)
    answer = await w.subscribe([key], token=token(ADMIN))
    assert answer["patterns"] == [key]
    await api.put(key, 1)
    assert summary(await w.changes(unique_prefix, 1)) == [("update", key, 1, 1)]


@pytest.fixture(params=["garbage", "unpublished-key", "expired"])
def bad_token(request: pytest.FixtureRequest, token: Token, jwks: Any) -> str:
    if request.param == "garbage":
        return "not-a-jwt"
    if request.param == "unpublished-key":
        return token(ADMIN, key=jwks.new_key())
    return token(ADMIN, exp_in=-120)  # well past exp plus the 30 s leeway of §2


async def test_bad_token_in_header_gets_error_then_4401(connect: Connect, bad_token: str) -> None:
    w = await connect(auth="header", jwt=bad_token)
    before = await w.expect_close(4401, "unauthorized: invalid or expired token")
    assert len(before) == 1, before
    assert_error(before[0], "Unauthorized")


async def test_bad_token_in_query_gets_error_then_4401(connect: Connect, bad_token: str) -> None:
    w = await connect(auth="query", jwt=bad_token)
    before = await w.expect_close(4401, "unauthorized: invalid or expired token")
    assert len(before) == 1, before
    assert_error(before[0], "Unauthorized")


async def test_bad_token_message_gets_error_then_4401(connect: Connect, bad_token: str) -> None:
    w = await connect(auth=None)
    await w.send({"token": bad_token})
    before = await w.expect_close(4401, "unauthorized: invalid or expired token")
    assert len(before) == 1, before
    assert_error(before[0], "Unauthorized")


async def test_bad_token_inside_subscribe_gets_error_then_4401(
    connect: Connect, bad_token: str, unique_prefix: str
) -> None:
    w = await connect(auth=None)
    await w.send({"subscribe": [f"{unique_prefix}.a"], "token": bad_token})
    before = await w.expect_close(4401, "unauthorized: invalid or expired token")
    assert len(before) == 1, before  # no "subscribed"
    assert_error(before[0], "Unauthorized")


async def test_no_token_within_auth_timeout_gets_error_then_4401(
    connect: Connect, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(notifier.watch, "AUTH_TIMEOUT_SECONDS", 0.5)
    w = await connect(auth=None)
    before = await w.expect_close(4401, "unauthorized: no valid token within 0.5 s", timeout=5.0)
    assert len(before) == 1, before
    assert_error(before[0], "Unauthorized")


async def test_subscribe_before_any_token_gets_error_then_4401(connect: Connect, unique_prefix: str) -> None:
    w = await connect(auth=None)
    await w.send({"subscribe": [f"{unique_prefix}.a"]})
    before = await w.expect_close(4401, "unauthorized: send a token first")
    assert len(before) == 1, before
    assert_error(before[0], "Unauthorized")


# --- subscribe, patterns, event shapes ----------------------------------------------------------


async def test_subscribed_carries_patterns_and_current_revision(
    connect: Connect, api: WatchApi, pg: aiopg.Pool, unique_prefix: str
) -> None:
    await api.put(f"{unique_prefix}.a", 1)
    await wait_relayed(pg, unique_prefix, 1)
    head, _ = await relay_state(pg)
    w = await connect()
    patterns = [f"{unique_prefix}.a", f"{unique_prefix}.b.*"]
    answer = await w.subscribe(patterns)
    assert set(answer) == {"event", "patterns", "revision"}, answer
    assert answer["patterns"] == patterns
    assert isinstance(answer["revision"], int) and answer["revision"] >= head


async def test_update_patch_delete_events_have_the_documented_shape(
    connect: Connect, api: WatchApi, unique_prefix: str
) -> None:
    key = f"{unique_prefix}.app.feature"
    w = await connect()
    await w.subscribe([key])
    put = await api.put(key, {"on": True})
    patch = await api.patch(key, "false")
    await api.delete(key)
    update, patched, deleted = await w.changes(unique_prefix, 3)

    assert update == {
        "event": "update",
        "key": key,
        "version": 1,
        "revision": update["revision"],
        "value": {"on": True},
        "lastModified": put["lastModified"],
    }
    assert patched == {
        "event": "update",
        "key": key,
        "version": 2,
        "revision": patched["revision"],
        "value": "false",
        "lastModified": patch["lastModified"],
    }
    assert set(deleted) == {"event", "key", "version", "revision", "lastModified"}, deleted  # no value
    assert (deleted["event"], deleted["key"], deleted["version"]) == ("delete", key, 3)
    assert RFC3339.match(deleted["lastModified"]), deleted
    assert_strictly_increasing([update, patched, deleted])


async def test_exact_pattern_matches_only_that_key(connect: Connect, api: WatchApi, unique_prefix: str) -> None:
    key = f"{unique_prefix}.a"
    w = await connect()
    await w.subscribe([key])
    for other in (f"{unique_prefix}.a.b", f"{unique_prefix}.ab", f"{unique_prefix}.a/b"):
        await api.put(other, 0)
    await api.put(key, 1)
    assert summary(await w.until(key, unique_prefix)) == [("update", key, 1, 1)]


async def test_prefix_pattern_matches_descendants_not_siblings(
    connect: Connect, api: WatchApi, unique_prefix: str
) -> None:
    p = f"{unique_prefix}.p"
    w = await connect()
    await w.subscribe([f"{p}.*"])
    await api.put(f"{unique_prefix}.pother", 0)
    await api.put(p, 0)  # "p.*" is p's descendants, not p itself
    await api.put(f"{p}.x.y", 1)
    await api.put(f"{p}.end", 2)
    events = await w.until(f"{p}.end", unique_prefix)
    assert summary(events) == [("update", f"{p}.x.y", 1, 1), ("update", f"{p}.end", 1, 2)]


async def test_star_pattern_matches_every_key(connect: Connect, api: WatchApi, unique_prefix: str) -> None:
    w = await connect()
    await w.subscribe(["*"])
    await api.put(f"{unique_prefix}.a", 1)
    await api.put(f"{unique_prefix}/b/c", 2)
    await api.put(f"{unique_prefix}-z", 3)
    events = await w.until(f"{unique_prefix}-z", unique_prefix)
    assert summary(events) == [
        ("update", f"{unique_prefix}.a", 1, 1),
        ("update", f"{unique_prefix}/b/c", 1, 2),
        ("update", f"{unique_prefix}-z", 1, 3),
    ]


async def test_unsubscribe_answers_and_stops_those_events(connect: Connect, api: WatchApi, unique_prefix: str) -> None:
    gone, kept = f"{unique_prefix}.gone", f"{unique_prefix}.kept"
    w = await connect()
    await w.subscribe([gone, kept, f"{unique_prefix}.x.*"])
    await w.send({"unsubscribe": [gone, f"{unique_prefix}.x.*"]})
    answer = await w.recv()
    assert answer == {"event": "unsubscribed", "patterns": [gone, f"{unique_prefix}.x.*"]}
    await api.put(gone, 1)
    await api.put(f"{unique_prefix}.x.y", 1)
    await api.put(kept, 2)
    assert summary(await w.until(kept, unique_prefix)) == [("update", kept, 1, 2)]


@pytest.mark.parametrize(
    "patterns",
    [["a..b"], ["a*b"], [123], [], "app.*", None, ["ok.key", "bad key"], [""], ["x" * 300]],
    ids=["empty-segment", "star-inside", "number", "empty-list", "not-a-list", "null", "one-bad", "empty", "long"],
)
async def test_invalid_subscribe_gets_bad_request_and_connection_stays_usable(
    connect: Connect, api: WatchApi, unique_prefix: str, patterns: Any
) -> None:
    key = f"{unique_prefix}.a"
    w = await connect()
    await w.send({"subscribe": patterns})
    assert_error(await w.recv(), "Bad Request")
    answer = await w.subscribe([key])
    assert answer["patterns"] == [key]
    await api.put(key, 1)
    assert summary(await w.until(key, unique_prefix)) == [("update", key, 1, 1)]


async def test_invalid_subscribe_registers_none_of_its_patterns(
    connect: Connect, api: WatchApi, unique_prefix: str
) -> None:
    good, end = f"{unique_prefix}.good", f"{unique_prefix}.end"
    w = await connect()
    await w.send({"subscribe": [good, "a..b"]})
    assert_error(await w.recv(), "Bad Request")
    await w.subscribe([end])
    await api.put(good, 1)
    await api.put(end, 2)
    assert summary(await w.until(end, unique_prefix)) == [("update", end, 1, 2)]


@pytest.mark.parametrize(
    "extra",
    [
        {"since_version": -1},
        {"since_version": 1.5},
        {"since_version": "x"},
        {"since_version": True},
        {"snapshot": "yes"},
    ],
    ids=["negative", "fraction", "string", "bool", "snapshot-not-bool"],
)
async def test_invalid_since_version_or_snapshot_gets_bad_request(
    connect: Connect, api: WatchApi, unique_prefix: str, extra: dict[str, Any]
) -> None:
    key = f"{unique_prefix}.a"
    w = await connect()
    await w.send({"subscribe": [key], **extra})
    assert_error(await w.recv(), "Bad Request")
    await w.subscribe([key])
    await api.put(key, 1)
    assert summary(await w.until(key, unique_prefix)) == [("update", key, 1, 1)]


@pytest.mark.parametrize(
    "frame",
    ["not json", "[1, 2]", '"subscribe"', '{"hello": 1}', b"\x00binary"],
    ids=["malformed-json", "json-array", "json-string", "unknown-message", "binary"],
)
async def test_malformed_or_unknown_message_gets_bad_request_and_connection_stays_open(
    connect: Connect, api: WatchApi, unique_prefix: str, frame: str | bytes
) -> None:
    key = f"{unique_prefix}.a"
    w = await connect()
    if isinstance(frame, bytes):
        await w.ws.send_bytes(frame)
    else:
        await w.ws.send_str(frame)
    assert_error(await w.recv(), "Bad Request")
    await w.subscribe([key])
    await api.put(key, 1)
    assert summary(await w.until(key, unique_prefix)) == [("update", key, 1, 1)]


# --- the 1000-pattern limit ---------------------------------------------------------------------


async def test_1000_patterns_are_accepted(connect: Connect, api: WatchApi, unique_prefix: str) -> None:
    patterns = [f"{unique_prefix}.k{i}" for i in range(1000)]
    w = await connect()
    answer = await w.subscribe(patterns)
    assert answer["patterns"] == patterns
    await api.put(f"{unique_prefix}.k999", 1)
    assert summary(await w.changes(unique_prefix, 1)) == [("update", f"{unique_prefix}.k999", 1, 1)]


async def test_1001_patterns_in_one_subscribe_are_refused_whole(
    connect: Connect, api: WatchApi, unique_prefix: str
) -> None:
    refused = [f"{unique_prefix}.r{i}" for i in range(1001)]
    w = await connect()
    await w.send({"subscribe": refused})
    assert_error(await w.recv(), "Bad Request")
    # None of the 1001 were registered: 1000 new ones still fit.
    accepted = [f"{unique_prefix}.k{i}" for i in range(1000)]
    assert (await w.subscribe(accepted))["patterns"] == accepted
    await api.put(f"{unique_prefix}.r0", 0)
    await api.put(f"{unique_prefix}.k0", 1)
    assert summary(await w.until(f"{unique_prefix}.k0", unique_prefix)) == [("update", f"{unique_prefix}.k0", 1, 1)]


async def test_subscribe_past_1000_in_two_steps_is_refused_and_earlier_patterns_still_deliver(
    connect: Connect, api: WatchApi, unique_prefix: str
) -> None:
    first = [f"{unique_prefix}.k{i}" for i in range(600)]
    second = [f"{unique_prefix}.r{i}" for i in range(401)]
    w = await connect()
    await w.subscribe(first)
    await w.send({"subscribe": second})
    assert_error(await w.recv(), "Bad Request")
    await api.put(f"{unique_prefix}.r0", 0)  # refused whole: not watched
    await api.put(f"{unique_prefix}.k599", 1)
    assert summary(await w.until(f"{unique_prefix}.k599", unique_prefix)) == [("update", f"{unique_prefix}.k599", 1, 1)]
    # Exactly 400 more still fit (600 + 400 = 1000).
    assert (await w.subscribe(second[:400]))["patterns"] == second[:400]


# --- since_version: replay, then live -----------------------------------------------------------


async def write_five(api: WatchApi, prefix: str) -> list[tuple[str, str, int, Any]]:
    """Five changes under ``prefix``; returns their expected (event, key, version, value)."""
    a, b, c = f"{prefix}.a", f"{prefix}.b", f"{prefix}.c"
    await api.put(a, "a1")
    await api.put(b, "b1")
    await api.patch(a, "a2")
    await api.delete(b)
    await api.put(c, {"c": 1})
    return [
        ("update", a, 1, "a1"),
        ("update", b, 1, "b1"),
        ("update", a, 2, "a2"),
        ("delete", b, 2, None),
        ("update", c, 1, {"c": 1}),
    ]


@pytest.mark.parametrize("where", ["message", "query"])
async def test_since_version_replays_missed_events_then_live_without_gap_or_duplicate(
    connect: Connect, api: WatchApi, pg: aiopg.Pool, unique_prefix: str, where: str
) -> None:
    before, _ = await relay_state(pg)
    expected = await write_five(api, unique_prefix)
    await wait_relayed(pg, unique_prefix, 5)

    live_key = f"{unique_prefix}.live"

    async def live_writes() -> None:
        for i in range(1, 11):
            await api.put(live_key, i)

    # Live writes race with the subscribe, so some land during the replay: the seam is exercised.
    writer = asyncio.create_task(live_writes())
    try:
        if where == "query":
            w = await connect(query={"since_version": str(before)})
            answer = await w.subscribe([f"{unique_prefix}.*"])
        else:
            w = await connect()
            answer = await w.subscribe([f"{unique_prefix}.*"], since_version=before)
        assert answer["event"] == "subscribed"
        events = await w.until(live_key, unique_prefix)
        while events[-1]["version"] < 10:
            events += await w.until(live_key, unique_prefix)
    finally:
        await writer
    assert summary(events[:5]) == expected
    assert summary(events[5:]) == [("update", live_key, i, i) for i in range(1, 11)]
    assert_strictly_increasing(events)
    assert events[0]["revision"] > before


async def test_resume_with_since_version_gets_exactly_the_missed_events(
    connect: Connect, api: WatchApi, pg: aiopg.Pool, unique_prefix: str
) -> None:
    a, end = f"{unique_prefix}.a", f"{unique_prefix}.end"
    w = await connect()
    await w.subscribe([f"{unique_prefix}.*"])
    await api.put(a, 1)
    (first,) = await w.changes(unique_prefix, 1)
    last = first["revision"]
    await w.ws.close()

    await api.patch(a, 2)
    await api.put(f"{unique_prefix}.b", 3)
    await api.delete(a)
    await wait_relayed(pg, unique_prefix, 4)

    w2 = await connect()
    await w2.subscribe([f"{unique_prefix}.*"], since_version=last)
    await api.put(end, 4)
    events = await w2.until(end, unique_prefix)
    assert summary(events) == [
        ("update", a, 2, 2),
        ("update", f"{unique_prefix}.b", 1, 3),
        ("delete", a, 3, None),
        ("update", end, 1, 4),
    ]
    assert_strictly_increasing([first, *events])


# --- snapshot and reset -------------------------------------------------------------------------


async def test_snapshot_sends_current_values_of_live_keys_first_then_live(
    connect: Connect, api: WatchApi, pg: aiopg.Pool, unique_prefix: str
) -> None:
    a, b, c, d = (f"{unique_prefix}.{name}" for name in "abcd")
    await api.put(a, "a1")
    await api.put(b, "b1")
    await api.patch(b, "b2")
    await api.put(c, "c1")
    await api.delete(c)
    await api.put(f"{unique_prefix}x.other", "not matched")
    await wait_relayed(pg, unique_prefix, 6)

    w = await connect()
    await w.subscribe([f"{unique_prefix}.*"], snapshot=True)
    await api.put(d, "d1")
    events = await w.until(d, unique_prefix)
    assert summary(events) == [("update", a, 1, "a1"), ("update", b, 2, "b2"), ("update", d, 1, "d1")]
    assert all(set(e) == {"event", "key", "version", "revision", "value", "lastModified"} for e in events), events
    assert_strictly_increasing(events)


async def test_snapshot_leaves_out_keys_past_their_ttl(
    connect: Connect, api: WatchApi, pg: aiopg.Pool, unique_prefix: str
) -> None:
    short, kept, end = f"{unique_prefix}.short", f"{unique_prefix}.kept", f"{unique_prefix}.end"
    await api.put(short, "gone soon", ttl=1)
    await api.put(kept, "kept")
    await wait_relayed(pg, unique_prefix, 2)
    await asyncio.sleep(1.2)  # past the deadline; no expiry worker runs here, the key is still a row
    w = await connect()
    await w.subscribe([f"{unique_prefix}.*"], snapshot=True)
    await api.put(end, "end")
    events = [e for e in await w.until(end, unique_prefix) if e["event"] == "update"]
    assert summary(events) == [("update", kept, 1, "kept"), ("update", end, 1, "end")]


@pytest.mark.parametrize("where", ["message", "query"])
async def test_since_version_of_any_size_past_the_head_gets_reset_then_snapshot(
    connect: Connect, api: WatchApi, unique_prefix: str, where: str
) -> None:
    # 20 digits: more than a Postgres bigint holds, so the watch must not hand it to SQL, and a query
    # parameter is read as the JSON number in a subscribe message is.
    key, since = f"{unique_prefix}.a", 10**19 + 7
    await api.put(key, 1)
    if where == "query":
        w = await connect(query={"since_version": str(since)})
        answer = await w.subscribe([f"{unique_prefix}.*"])
    else:
        w = await connect()
        answer = await w.subscribe([f"{unique_prefix}.*"], since_version=since)
    assert answer["event"] == "subscribed", answer
    reset = await w.recv()
    assert reset == {"event": "reset", "revision": answer["revision"]}, reset
    assert summary(await w.until(key, unique_prefix)) == [("update", key, 1, 1)]


async def test_since_version_older_than_the_change_log_gets_reset_then_snapshot_then_live(
    connect: Connect, api: WatchApi, pg: aiopg.Pool, unique_prefix: str
) -> None:
    a, b, c, d = (f"{unique_prefix}.{name}" for name in "abcd")
    before, _ = await relay_state(pg)
    await api.put(a, "a1")
    await api.put(b, "b1")
    await api.patch(b, "b2")
    await api.put(c, "c1")
    await api.delete(c)
    await wait_relayed(pg, unique_prefix, 5)
    head, old_pruned = await relay_state(pg)
    # Pretend the log was pruned through ``head``; the DB is shared, so put it back afterwards.
    async with pg.acquire() as conn, conn.cursor() as cur:
        await cur.execute("UPDATE relay_state SET pruned_through = %s", (head,))
    try:
        w = await connect()
        answer = await w.subscribe([f"{unique_prefix}.*"], since_version=before)
        reset = await w.recv()
        assert reset == {"event": "reset", "revision": reset["revision"]}, reset
        assert isinstance(reset["revision"], int) and reset["revision"] >= head
        assert answer["revision"] >= head
        await api.put(d, "d1")
        events = await w.until(d, unique_prefix)
    finally:
        async with pg.acquire() as conn, conn.cursor() as cur:
            await cur.execute(
                "UPDATE relay_state SET pruned_through = %s WHERE pruned_through = %s", (old_pruned, head)
            )
    assert summary(events) == [("update", a, 1, "a1"), ("update", b, 2, "b2"), ("update", d, 1, "d1")]
    assert_strictly_increasing(events)


# --- ACL at delivery ----------------------------------------------------------------------------


@pytest.mark.parametrize("pattern", ["*", "prefix"])
async def test_watchers_never_receive_keys_they_may_not_read_and_admins_receive_all(
    connect: Connect, api: WatchApi, notifier_server: TestServer, unique_prefix: str, pattern: str
) -> None:
    p = unique_prefix
    await api.put_ns(f"{p}.open", [ALICE], [])
    await api.put_ns(f"{p}.closed", [BOB], [])
    await wait_namespace_loaded(notifier_server, f"{p}.open", True)
    await wait_namespace_loaded(notifier_server, f"{p}.closed", True)
    subscription = "*" if pattern == "*" else f"{p}.*"
    alice = await connect(ALICE)
    await alice.subscribe([subscription])
    admin = await connect(ADMIN)
    await admin.subscribe([subscription])

    writes: list[tuple[str, dict[str, Any], bool]] = [
        (f"{p}.mine", {"acls": {"read": [ALICE], "write": []}}, True),
        (f"{p}.theirs", {"acls": {"read": [BOB], "write": [ALICE]}}, False),  # write does not imply read
        (f"{p}.wild", {"acls": {"read": ["ali*"], "write": []}}, True),
        (f"{p}.open.k", {}, True),  # namespace grants
        (f"{p}.closed.k", {}, False),  # namespace denies
        (f"{p}.open.own", {"acls": {"read": [BOB], "write": []}}, False),  # key ACL beats namespace
        (f"{p}.nobody", {}, False),  # no ACL anywhere: creator (admin) only
    ]
    for key, extra, _ in writes:
        await api.put(key, key, **extra)
    await api.delete(f"{p}.theirs")
    end = f"{p}.zz.end"
    await api.put(end, "end", acls={"read": ["*"], "write": []})

    seen_by_alice = [(e["event"], e["key"]) for e in await alice.until(end, p)]
    assert seen_by_alice == [("update", k) for k, _, visible in writes if visible] + [("update", end)]
    seen_by_admin = [(e["event"], e["key"]) for e in await admin.until(end, p)]
    assert seen_by_admin == [("update", k) for k, _, _ in writes] + [("delete", f"{p}.theirs"), ("update", end)]


@pytest.mark.parametrize("mode", ["since_version", "snapshot"])
async def test_replay_and_snapshot_leave_out_keys_the_watcher_may_not_read(
    connect: Connect, api: WatchApi, pg: aiopg.Pool, unique_prefix: str, mode: str
) -> None:
    p = unique_prefix
    before, _ = await relay_state(pg)
    await api.put(f"{p}.mine", "mine", acls={"read": [ALICE], "write": []})
    await api.put(f"{p}.theirs", "secret", acls={"read": [BOB], "write": []})
    await api.put(f"{p}.nobody", "secret")
    await wait_relayed(pg, p, 3)
    alice = await connect(ALICE)
    extra = {"since_version": before} if mode == "since_version" else {"snapshot": True}
    await alice.subscribe([f"{p}.*"], **extra)
    end = f"{p}.zz.end"
    await api.put(end, "end", acls={"read": ["*"], "write": []})
    assert summary(await alice.until(end, p)) == [("update", f"{p}.mine", 1, "mine"), ("update", end, 1, "end")]


async def test_update_that_removes_the_watchers_read_access_is_not_delivered_to_it(
    connect: Connect, api: WatchApi, unique_prefix: str
) -> None:
    key, end = f"{unique_prefix}.k", f"{unique_prefix}.end"
    alice = await connect(ALICE)
    await alice.subscribe([f"{unique_prefix}.*"])
    await api.put(key, "public", acls={"read": [ALICE], "write": []})
    assert summary(await alice.until(key, unique_prefix)) == [("update", key, 1, "public")]
    await api.put(key, "secret", acls={"read": [BOB], "write": []})
    await api.put(end, "end", acls={"read": ["*"], "write": []})
    assert summary(await alice.until(end, unique_prefix)) == [("update", end, 1, "end")]


async def test_creator_only_key_is_delivered_to_its_creator_only(
    connect: Connect, api: WatchApi, notifier_server: TestServer, unique_prefix: str
) -> None:
    team = f"{unique_prefix}.team"
    key = f"{team}.k"
    await api.put_ns(team, [], [ALICE])
    await api.put(key, "v1", user=ALICE)  # created under a namespace that lets alice write
    await api.delete_ns(team)  # now no ACL anywhere: creator and admins only
    await wait_namespace_loaded(notifier_server, team, False)
    alice = await connect(ALICE)
    await alice.subscribe([f"{unique_prefix}.*"])
    bob = await connect(BOB)
    await bob.subscribe([f"{unique_prefix}.*"])
    await api.patch(key, "v2")
    end = f"{unique_prefix}.zz.end"
    await api.put(end, "end", acls={"read": ["*"], "write": []})
    assert summary(await alice.until(end, unique_prefix)) == [("update", key, 2, "v2"), ("update", end, 1, "end")]
    assert summary(await bob.until(end, unique_prefix)) == [("update", end, 1, "end")]


async def probe(api: WatchApi, watcher: Watcher, key: str, end: str, prefix: str) -> bool:
    """Write ``key`` then the sentinel ``end``; did ``watcher`` receive ``key``?"""
    await api.put(key, time.time())
    await api.put(end, time.time())
    return any(e["key"] == key for e in await watcher.until(end, prefix))


async def test_namespace_acl_change_while_connected_changes_what_is_delivered(
    connect: Connect, api: WatchApi, unique_prefix: str
) -> None:
    ns = f"{unique_prefix}.ns"
    key, end = f"{ns}.k", f"{unique_prefix}.end"
    await api.put(key, 0)  # no ACL anywhere: only the creator (admin) may read
    await api.put(end, 0, acls={"read": ["*"], "write": []})
    alice = await connect(ALICE)
    await alice.subscribe([f"{unique_prefix}.*"])
    assert not await probe(api, alice, key, end, unique_prefix)

    # Grant: the notifier is told at once (plus a 5 s safety refresh); allow it ~2 s to reload.
    await api.put_ns(ns, [ALICE], [])
    deadline = time.monotonic() + 2.5
    while not await probe(api, alice, key, end, unique_prefix):
        assert time.monotonic() < deadline, "grant not applied to the open watch within ~2 s"
    assert await probe(api, alice, key, end, unique_prefix)

    # Revoke.
    await api.put_ns(ns, [BOB], [])
    deadline = time.monotonic() + 2.5
    while await probe(api, alice, key, end, unique_prefix):
        assert time.monotonic() < deadline, "revocation not applied to the open watch within ~2 s"
    assert not await probe(api, alice, key, end, unique_prefix)


# --- token refresh ------------------------------------------------------------------------------


async def test_token_expiry_closes_the_watch_with_4401(
    connect: Connect, token: Token, monkeypatch: pytest.MonkeyPatch, unique_prefix: str
) -> None:
    monkeypatch.setattr(notifier.watch, "LEEWAY_SECONDS", 0)
    jwt = token(ALICE, exp_in=2)
    exp = json.loads(base64.urlsafe_b64decode(jwt.split(".")[1] + "==="))["exp"]
    w = await connect(ALICE, jwt=jwt)
    await w.subscribe([f"{unique_prefix}.a"])
    before = await w.expect_close(4401, "unauthorized: token expired", timeout=8.0)
    closed_at = time.time()
    assert len(before) == 1, before
    assert_error(before[0], "Unauthorized")
    # SPEC §6: within 5 s of exp (leeway 0 here); not before exp (exp is whole seconds, hence the slack).
    assert exp - 0.2 <= closed_at <= exp + 5.0, (exp, closed_at)


async def test_fresh_token_for_same_user_keeps_the_watch_open(
    connect: Connect, api: WatchApi, token: Token, monkeypatch: pytest.MonkeyPatch, unique_prefix: str
) -> None:
    monkeypatch.setattr(notifier.watch, "LEEWAY_SECONDS", 0)
    key = f"{unique_prefix}.a"
    jwt = token(ALICE, exp_in=2)
    exp = json.loads(base64.urlsafe_b64decode(jwt.split(".")[1] + "==="))["exp"]
    w = await connect(ALICE, jwt=jwt)
    await w.subscribe([key])
    await w.send({"token": token(ALICE, exp_in=3600)})
    await asyncio.sleep(max(0.0, exp + 1.5 - time.time()))
    await api.put(key, 1, acls={"read": [ALICE], "write": []})
    assert summary(await w.changes(unique_prefix, 1)) == [("update", key, 1, 1)]
    assert not w.ws.closed


async def test_fresh_token_for_another_user_is_refused(
    connect: Connect, token: Token, monkeypatch: pytest.MonkeyPatch, unique_prefix: str
) -> None:
    monkeypatch.setattr(notifier.watch, "LEEWAY_SECONDS", 0)
    w = await connect(ALICE, jwt=token(ALICE, exp_in=2))
    await w.subscribe([f"{unique_prefix}.a"])
    await w.send({"token": token(BOB, exp_in=3600)})
    assert_error(await w.recv(), "Unauthorized")
    # The refused token did not extend the session: the old one still expires.
    before = await w.expect_close(4401, "unauthorized: token expired", timeout=8.0)
    assert len(before) == 1, before
    assert_error(before[0], "Unauthorized")


# --- slow consumer ------------------------------------------------------------------------------


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One (unmasked, unfragmented) server frame: (opcode, payload)."""
    b0, b1 = await reader.readexactly(2)
    size = b1 & 0x7F
    if size == 126:
        size = int.from_bytes(await reader.readexactly(2), "big")
    elif size == 127:
        size = int.from_bytes(await reader.readexactly(8), "big")
    assert not b1 & 0x80, "server frames are not masked"
    return b0 & 0x0F, await reader.readexactly(size)


async def raw_watcher(
    server: TestServer, jwt: str, patterns: list[str]
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A hand-made WebSocket client with a tiny receive buffer, subscribed to ``patterns``."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.port))
    reader, writer = await asyncio.open_connection(sock=sock)
    nonce = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET /watch HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {nonce}\r\nSec-WebSocket-Version: 13\r\n"
            f"Authorization: Bearer {jwt}\r\n\r\n"
        ).encode()
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    assert head.startswith(b"HTTP/1.1 101"), head
    writer.write(client_frame(0x1, json.dumps({"subscribe": patterns}).encode()))
    opcode, payload = await asyncio.wait_for(read_frame(reader), TIMEOUT)
    assert opcode == 0x1 and json.loads(payload)["event"] == "subscribed", payload
    return reader, writer


async def test_slow_consumer_is_closed_with_4008_and_others_get_every_event(
    connect: Connect,
    api: WatchApi,
    token: Token,
    notifier_server: TestServer,
    monkeypatch: pytest.MonkeyPatch,
    unique_prefix: str,
) -> None:
    monkeypatch.setattr(notifier.watch, "MAX_BUFFER_BYTES", 256 * 1024)
    key = f"{unique_prefix}.big"
    slow_user, fast_user = f"slow-{unique_prefix}", f"fast-{unique_prefix}"
    acls = {"read": [slow_user, fast_user], "write": []}
    count = 60
    fast = await connect(fast_user)
    await fast.subscribe([key])
    reader, writer = await raw_watcher(notifier_server, token(slow_user), [key])
    try:
        fast_task = asyncio.create_task(fast.changes(unique_prefix, count, timeout=60))
        for i in range(1, count + 1):
            await api.put(key, f"{i:04d}" + "x" * 100_000, acls=acls)
        fast_events = await fast_task
        assert [(e["key"], e["version"], e["value"][:4]) for e in fast_events] == [
            (key, i, f"{i:04d}") for i in range(1, count + 1)
        ]
        assert_strictly_increasing(fast_events)

        # Now drain the slow socket: the events it was sent, then the close frame.
        slow_events: list[dict[str, Any]] = []
        close_code: int | None = None
        close_reason = b""
        try:
            while True:
                opcode, payload = await asyncio.wait_for(read_frame(reader), TIMEOUT)
                if opcode == 0x8:
                    close_code, close_reason = int.from_bytes(payload[:2], "big"), payload[2:]
                    writer.write(client_frame(0x8, payload[:2]))
                    break
                if opcode == 0x1:
                    slow_events.append(json.loads(payload))
        except asyncio.IncompleteReadError:
            pass  # connection dropped without a close frame; checked below
    finally:
        writer.close()
    assert close_code == 4008, f"slow consumer not closed with 4008 (close code {close_code})"
    assert close_reason == b"slow consumer: backlog over 262144 bytes, resume with since_version"
    assert len(slow_events) < count, "the slow consumer was not cut off before the end"
    # What it got is a gap-free prefix of the stream, so it can resume with since_version.
    assert [e["version"] for e in slow_events] == list(range(1, len(slow_events) + 1))
    await eventually(
        lambda: not any(c.principal.username == slow_user for c in notifier_server.app[CONNECTIONS]),
        TIMEOUT,
        "the closed slow consumer gone from CONNECTIONS",
    )

    # It resumes losslessly from the last revision it applied.
    resumed = await connect(slow_user)
    since = slow_events[-1]["revision"] if slow_events else fast_events[0]["revision"] - 1
    await resumed.subscribe([key], since_version=since)
    rest = await resumed.changes(unique_prefix, count - len(slow_events), timeout=30)
    assert [e["version"] for e in rest] == list(range(len(slow_events) + 1, count + 1))


# --- shutdown and metrics -----------------------------------------------------------------------


async def test_notifier_shuts_down_promptly_even_right_after_start(
    make_notifier: Callable[..., Awaitable[TestServer]],
) -> None:
    # SPEC §1: every process shuts down within 10 s. Closing soon after start-up is the case that
    # catches a background task swallowing its cancellation (a race), so try it several times.
    for attempt in range(8):
        server = await make_notifier()
        assert await close_notifier(server, within=10.0), f"notifier shutdown hung (attempt {attempt + 1})"


async def test_server_shutdown_closes_watchers_with_1001(
    connect: Connect, notifier_server: TestServer, unique_prefix: str
) -> None:
    w1 = await connect()
    await w1.subscribe([f"{unique_prefix}.*"])
    w2 = await connect(ALICE)
    await w2.subscribe(["*"])
    closing = asyncio.create_task(close_notifier(notifier_server))
    try:
        await w1.expect_close(1001, "server shutting down")
        await w2.expect_close(1001, "server shutting down")
    finally:
        await closing


def test_close_reasons_fit_in_a_close_frame() -> None:
    # RFC 6455 §5.5: a close frame's payload is at most 125 bytes, 2 of them the code.
    for reason in (
        notifier.watch.REASON_INVALID_TOKEN,
        notifier.watch.REASON_NO_TOKEN,
        notifier.watch.REASON_TOKEN_EXPIRED,
        notifier.watch.REASON_BAD_SINCE,
        notifier.watch.REASON_SHUTDOWN,
        notifier.watch.REASON_INTERNAL,
        notifier.watch.REASON_AUTH_TIMEOUT.format(seconds=10.0),
        notifier.watch.REASON_SLOW_CONSUMER.format(limit=2**63),
        notifier.watch.REASON_HELD_EVENTS.format(limit=2**63),
    ):
        assert reason and notifier.watch.close_message(reason) == reason.encode()
        assert len(reason.encode()) <= 123, reason
    # Anything longer is cut at a character boundary: the payload stays valid UTF-8.
    cut = notifier.watch.close_message("é" * 100)
    assert len(cut) == 122 and cut.decode() == "é" * 61


def metric(text: str, name: str) -> float:
    """The sum of the samples called exactly ``name``."""
    total, found = 0.0, False
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                total += sample.value
                found = True
    assert found, f"{name} missing from /metrics"
    return total


async def test_metrics_show_connections_deliveries_and_propagation_lag(
    connect: Connect, api: WatchApi, session: aiohttp.ClientSession, notifier_server: TestServer, unique_prefix: str
) -> None:
    key = f"{unique_prefix}.a"
    w = await connect()
    await w.subscribe([key])
    await api.put(key, 1)
    await api.patch(key, 2)
    assert len(await w.changes(unique_prefix, 2)) == 2
    async with session.get(notifier_server.make_url("/metrics")) as resp:
        assert resp.status == 200
        text = await resp.text()
    assert metric(text, "dynconfig_ws_connections") == 1
    assert metric(text, "dynconfig_events_delivered_total") == 2
    assert metric(text, "dynconfig_propagation_lag_seconds_count") >= 2
