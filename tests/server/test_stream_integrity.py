"""Stream integrity at the edges (SPEC §4 poll, §6 watch and reset, §8 keyring): an event a notifier
cannot decrypt, a prune racing a reader, a ``since_version`` past the head, a head that goes backwards.

Real Postgres, Redis, notifiers and API servers; no mocks. The database is shared by the whole
session, so every test looks only at keys under its ``unique_prefix``, and a test that changes
``relay_state`` or ``outbox`` rows directly touches only rows of its own keys and leaves the change
log consistent when it ends (see each test's comments). Races are made deterministic from outside,
by holding real Postgres locks, not by timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import aiopg
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient, TestServer
from support import ADMIN, Api, WatchRecorder, eventually, wait_caught_up

from api_server.cache import cache_key
from notifier.hub import HUB
from shared.security.crypto import Keyring
from shared.settings import Settings

Client = TestClient[Any, Any]
Token = Callable[..., str]
Keys = tuple[tuple[str, bytes], ...]
CHANGE_EVENTS = ("update", "delete", "expired")
TIMEOUT = 10.0


# --- helpers --------------------------------------------------------------------------------------


class PollApi(Api):
    """Writes and polls through a real api_server app, as the admin."""

    async def poll(self, since: int, namespace: str) -> dict[str, Any]:
        params = {"since_version": str(since), "namespace": namespace}
        async with self.client.get("/keys", params=params, headers=self.headers()) as resp:
            text = await resp.text()
            assert resp.status == 200, text
        body: dict[str, Any] = json.loads(text)
        return body


class Stream(WatchRecorder):
    """One real ``/watch`` connection; every message after ``subscribed``, in order."""

    def changes(self, prefix: str) -> list[dict[str, Any]]:
        """Change events of keys under ``prefix``, in arrival order."""
        return [e for e in self.events if str(e.get("key", "")).startswith(prefix)]

    async def wait_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait (at most ``timeout`` s) until ``predicate()`` holds; return whether it does."""
        return await self.holds(predicate, timeout)


Watch = Callable[..., Awaitable[Stream]]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
async def watch(session: aiohttp.ClientSession, token: Token) -> AsyncIterator[Watch]:
    """``await watch(server, patterns, **subscribe_fields)``: connect as the admin, subscribe, return
    the :class:`Stream` once ``subscribed`` arrived. Every stream is closed at teardown."""
    opened: list[Stream] = []

    async def open_(server: TestServer, patterns: list[str], **extra: Any) -> Stream:
        stream: Stream = await Stream.open(session, server.make_url("/watch"), token(ADMIN), patterns, **extra)
        opened.append(stream)
        return stream

    yield open_
    for stream in opened:
        await stream.ws.close()
        await stream.task


async def relay_state(pg: aiopg.Pool) -> tuple[int, int]:
    """(head, pruned_through) of the change log."""
    async with pg.acquire() as conn, conn.cursor() as cur:
        await cur.execute("SELECT head, pruned_through FROM relay_state")
        head, pruned = await cur.fetchone()
    return int(head), int(pruned)


async def relayed(pg: aiopg.Pool, prefix: str) -> list[tuple[str, int, int]]:
    """(key, version, revision) of the relayed changes of keys under ``prefix``, in revision order."""
    async with pg.acquire() as conn, conn.cursor() as cur:
        await cur.execute(
            "SELECT key, version, revision FROM outbox WHERE key LIKE %s AND revision IS NOT NULL ORDER BY revision",
            (prefix + ".%",),
        )
        return [(str(k), int(v), int(r)) for k, v, r in await cur.fetchall()]


async def wait_relayed(pg: aiopg.Pool, prefix: str, count: int) -> list[tuple[str, int, int]]:
    """Wait until ``count`` changes of keys under ``prefix`` have a revision; return them."""
    rows: list[tuple[str, int, int]] = []

    async def enough() -> bool:
        nonlocal rows
        rows = await relayed(pg, prefix)
        return len(rows) >= count

    await eventually(enough, TIMEOUT, lambda: f"{count} changes relayed; only {len(rows)}", interval=0.02)
    assert len(rows) == count, rows
    return rows


async def health(session: aiohttp.ClientSession, server: TestServer) -> tuple[int, Any]:
    async with session.get(server.make_url("/health")) as resp:
        return resp.status, await resp.json(content_type=None)


async def wait_unhealthy(session: aiohttp.ClientSession, server: TestServer, timeout: float) -> tuple[int, Any]:
    """Poll ``/health`` until it answers 503 or ``timeout`` passes; return the last answer."""
    last: tuple[int, Any] = (0, None)

    async def unhealthy() -> bool:
        nonlocal last
        last = await health(session, server)
        return last[0] == 503

    with contextlib.suppress(AssertionError):  # the caller checks the answer
        await eventually(unhealthy, timeout, "a 503 from /health", interval=0.1)
    return last


def summary(events: list[dict[str, Any]]) -> list[tuple[str, str, int, Any]]:
    return [(e["event"], e["key"], e["version"], e.get("value")) for e in events]


# --- 1. an event the notifier cannot decrypt --------------------------------------------------------


@pytest.fixture
async def rotated_keyring(
    settings: Settings, pg: aiopg.Pool, redis_client: aioredis.Redis, unique_prefix: str
) -> AsyncIterator[Keys]:
    """A keyring whose active key ``k2`` is new, with the session's ``k1`` still listed (a rotation
    under way). At teardown every stored value of this test's keys is sealed with ``k1`` again, so no
    later test (replaying or polling the whole log with the session keyring) meets a ``k2`` blob."""
    ring: Keys = (("k2", os.urandom(32)), *settings.encryption_keys)
    yield ring
    back = Keyring((*settings.encryption_keys, ring[0]))  # k1 active again; k2 still decrypts
    pattern = unique_prefix + ".%"
    async with pg.acquire() as conn, conn.cursor() as cur, cur.begin():
        await cur.execute("SELECT key, value_enc FROM keys WHERE key LIKE %s AND value_enc IS NOT NULL", (pattern,))
        for key, blob in await cur.fetchall():
            fresh = back.encrypt(back.decrypt(bytes(blob), aad=key), aad=key)
            await cur.execute("UPDATE keys SET value_enc = %s WHERE key = %s", (fresh, key))
        await cur.execute(
            "SELECT key, version, value_enc FROM key_history WHERE key LIKE %s AND value_enc IS NOT NULL", (pattern,)
        )
        for key, version, blob in await cur.fetchall():
            fresh = back.encrypt(back.decrypt(bytes(blob), aad=key), aad=key)
            await cur.execute(
                "UPDATE key_history SET value_enc = %s WHERE key = %s AND version = %s", (fresh, key, version)
            )
        await cur.execute("SELECT key FROM keys WHERE key LIKE %s", (pattern,))
        cached = [cache_key(key) for (key,) in await cur.fetchall()]
    if cached:
        await redis_client.delete(*cached)


async def test_an_event_the_notifier_cannot_decrypt_turns_it_unhealthy_and_never_leaves_a_gap(
    make_client: Callable[..., Awaitable[Client]],
    make_notifier: Callable[..., Awaitable[TestServer]],
    settings: Settings,
    rotated_keyring: Keys,
    token: Token,
    pg: aiopg.Pool,
    session: aiohttp.ClientSession,
    watch: Watch,
    unique_prefix: str,
) -> None:
    p = unique_prefix
    first, second = f"{p}.first", f"{p}.second"
    api = PollApi(await make_client(settings.replace(encryption_keys=rotated_keyring)), token)  # writes seal with k2
    lacking = await make_notifier()  # the session keyring: k1 only (not yet rolled); it is the relayer
    stuck = await watch(lacking, [f"{p}.*"])
    since = stuck.subscribed["revision"]

    await api.put(first, {"n": 1})
    unhealthy = await wait_unhealthy(session, lacking, timeout=5.0)
    await api.put(second, {"n": 2})
    (_, _, rev_first), (_, _, rev_second) = await wait_relayed(pg, p, 2)

    # A notifier that holds k2 serves both changes, in order, to a watcher resuming from before them.
    holder = await make_notifier(settings.replace(encryption_keys=rotated_keyring), relay=False)
    resumed = await watch(holder, [f"{p}.*"], since_version=since)
    await resumed.wait_until(lambda: len(resumed.changes(p)) >= 2, TIMEOUT)
    assert [(e["key"], e["revision"], e.get("value")) for e in resumed.changes(p)] == [
        (first, rev_first, {"n": 1}),
        (second, rev_second, {"n": 2}),
    ], resumed.messages

    # The watcher on the notifier without k2 may get nothing more, or an error, but never the second
    # change without the first (a value that cannot be decrypted must not silently vanish).
    await stuck.wait_until(lambda: any(e["revision"] == rev_second for e in stuck.changes(p)), 1.0)
    got = [e["revision"] for e in stuck.changes(p)]
    assert got in ([], [rev_first], [rev_first, rev_second]), (
        f"revision {rev_first} (sealed with a key this notifier lacks) was skipped: the watcher got {got}"
    )
    others = [m for m in stuck.messages if m.get("event") not in CHANGE_EVENTS]
    assert all(m.get("event") == "error" for m in others), others

    # While it cannot deliver, the notifier says so: 503 in the error shape, naming the stuck loop.
    status, body = unhealthy
    pump = next((t for t in getattr(lacking.app[HUB], "_tasks", []) if t.get_name() == "hub-pump"), None)
    assert status == 503, (
        f"notifier /health answered {status} {body} 5 s after its hub met revision {rev_first}, which it "
        f"cannot decrypt (hub pump task: {'ended' if pump is not None and pump.done() else 'unknown or running'})"
    )
    assert body.get("error") == "Service Unavailable" and isinstance(body.get("message"), str), body
    assert "hub" in json.dumps(body).lower() or "pump" in json.dumps(body).lower(), body
    status, body = await health(session, lacking)
    assert status == 503, f"/health back to {status} {body} though revision {rev_first} is still undelivered"


# --- 2. a prune between reading the retention boundary and reading the events ------------------------


async def wait_blocked(pg: aiopg.Pool, after: int, timeout: float = 5.0) -> bool:
    """Wait until some backend waits for a lock in a query reading events after revision ``after``."""

    async def waiting() -> bool:
        async with pg.acquire() as conn, conn.cursor() as cur:
            await cur.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE wait_event_type = 'Lock' AND pid <> pg_backend_pid() AND query LIKE %s",
                (f"%revision > {after} %",),
            )
            (count,) = await cur.fetchone()
        return bool(count)

    try:
        await eventually(waiting, timeout, "a reader waiting for the lock", interval=0.02)
    except AssertionError:
        return False  # reported by the caller's messages, not a failure by itself
    return True


@pytest.mark.parametrize("reader", ["poll", "watch"])
async def test_a_prune_between_reading_the_boundary_and_the_events_gives_reset_not_a_silent_gap(
    client: Client,
    notifier_server: TestServer,
    token: Token,
    pg: aiopg.Pool,
    watch: Watch,
    unique_prefix: str,
    reader: str,
) -> None:
    p = unique_prefix
    api = PollApi(client, token)
    keys = [f"{p}.k{i}" for i in range(4)]
    for i, key in enumerate(keys):
        await api.put(key, i)
    revisions = [revision for _, _, revision in await wait_relayed(pg, p, 4)]
    await wait_caught_up(pg, notifier_server)
    _, old_pruned = await relay_state(pg)
    assert revisions == list(range(revisions[0], revisions[0] + 4)), f"precondition: contiguous {revisions}"
    since, prune_through = revisions[0] - 1, revisions[1]
    assert old_pruned <= since

    # The prune is simulated on this test's rows only: delete the outbox rows of revisions
    # (since, prune_through] (all this test's) and set pruned_through; both are undone in ``finally``.
    # It commits while the reader waits between reading pruned_through and reading the events:
    # the reader is held by an ACCESS EXCLUSIVE lock on ``outbox`` (relay_state is locked first so the
    # relay waits there rather than deadlocking with us).
    saved: list[tuple[Any, ...]] = []
    started: asyncio.Future[Any] | None = None
    try:
        async with pg.acquire() as conn, conn.cursor() as cur:
            async with cur.begin():
                await cur.execute("SELECT head FROM relay_state FOR UPDATE")
                await cur.execute("LOCK TABLE outbox IN ACCESS EXCLUSIVE MODE")
                if reader == "poll":
                    started = asyncio.create_task(api.poll(since, p))
                else:
                    started = asyncio.ensure_future(watch(notifier_server, [f"{p}.*"], since_version=since))
                blocked = await wait_blocked(pg, since)
                columns = "id, key, version, event, at, revision, relayed_at"
                await cur.execute(
                    f"SELECT {columns} FROM outbox WHERE revision > %s AND revision <= %s", (since, prune_through)
                )
                saved = list(await cur.fetchall())
                assert [row[1] for row in saved] == keys[:2], saved
                await cur.execute("DELETE FROM outbox WHERE revision > %s AND revision <= %s", (since, prune_through))
                await cur.execute("UPDATE relay_state SET pruned_through = %s", (prune_through,))
            result = await asyncio.wait_for(started, TIMEOUT)
            if reader == "poll":
                revs = [e["revision"] for e in result["events"]]
                assert result.get("reset") is True or revs == revisions, (
                    f"poll after {since} answered {revs} without reset, though revisions "
                    f"{revisions[:2]} were pruned while it ran (reader held between its reads: {blocked})"
                )
            else:
                stream: Stream = result
                end = f"{p}.z"
                await api.put(end, "end")
                await stream.wait_until(lambda: any(e["key"] == end for e in stream.changes(p)), TIMEOUT)
                first = stream.messages[0] if stream.messages else {}
                if first.get("event") == "reset":
                    snapshot_keys = {e["key"] for e in stream.changes(p)}
                    assert set(keys) <= snapshot_keys, stream.messages
                else:
                    revs = [e["revision"] for e in stream.changes(p) if e["key"] != end]
                    assert revs == revisions, (
                        f"watch since {since} replayed {revs} without reset, though revisions "
                        f"{revisions[:2]} were pruned while it ran (reader held between its reads: {blocked})"
                    )
    finally:
        if started is not None and not started.done():
            started.cancel()
            with contextlib.suppress(BaseException):
                await started
        async with pg.acquire() as conn, conn.cursor() as cur, cur.begin():
            for row in saved:
                await cur.execute(
                    "INSERT INTO outbox (id, key, version, event, at, revision, relayed_at)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                    row,
                )
            await cur.execute(
                "UPDATE relay_state SET pruned_through = %s WHERE pruned_through = %s", (old_pruned, prune_through)
            )


# --- 3. since_version past the head (a database restored from a backup) -------------------------------


async def test_watch_since_version_beyond_the_head_gets_reset_then_snapshot_then_live(
    client: Client, notifier_server: TestServer, token: Token, pg: aiopg.Pool, watch: Watch, unique_prefix: str
) -> None:
    p = unique_prefix
    a, b, end = f"{p}.a", f"{p}.b", f"{p}.end"
    api = PollApi(client, token)
    await api.put(a, "a1")
    await api.put(b, "b1")
    await api.put(b, "b2")
    await wait_relayed(pg, p, 3)
    await wait_caught_up(pg, notifier_server)
    head, _ = await relay_state(pg)

    stream = await watch(notifier_server, [f"{p}.*"], since_version=head + 1000)
    await stream.wait_until(lambda: bool(stream.messages), 3.0)
    assert stream.messages and stream.messages[0].get("event") == "reset", (
        f"since_version {head + 1000} is past the head {head}: expected a reset, got {stream.messages} in 3 s"
    )
    reset = stream.messages[0]
    current, _ = await relay_state(pg)
    assert set(reset) == {"event", "revision"} and head <= reset["revision"] <= current, reset
    await api.put(end, "e1")
    await stream.wait_until(lambda: any(e["key"] == end for e in stream.changes(p)), TIMEOUT)
    assert summary(stream.changes(p)) == [("update", a, 1, "a1"), ("update", b, 2, "b2"), ("update", end, 1, "e1")]


async def test_poll_since_version_beyond_the_head_answers_reset_with_the_head(
    client: Client, token: Token, pg: aiopg.Pool, unique_prefix: str
) -> None:
    api = PollApi(client, token)
    head, _ = await relay_state(pg)
    body = await api.poll(head + 1000, unique_prefix)
    current, _ = await relay_state(pg)
    assert body.get("reset") is True and body["events"] == [], (
        f"poll since {head + 1000} (past the head {head}) answered {body}"
    )
    assert head <= body["revision"] <= current, (head, body)


# --- 4. the head goes backwards under a running hub ------------------------------------------------------


async def test_a_hub_that_sees_the_head_go_backwards_resynchronises(
    client: Client,
    notifier_server: TestServer,
    token: Token,
    pg: aiopg.Pool,
    redis_client: aioredis.Redis,
    watch: Watch,
    unique_prefix: str,
) -> None:
    p = unique_prefix
    api = PollApi(client, token)
    stream = await watch(notifier_server, [f"{p}.*"])
    olds = [f"{p}.old{i}" for i in range(3)]
    for i, key in enumerate(olds):
        await api.put(key, i)
    assert await stream.wait_until(lambda: len(stream.changes(p)) >= 3, TIMEOUT), stream.messages
    old = [e["revision"] for e in stream.changes(p)]
    restored_head = old[0] - 1

    # Simulate a restore from a backup taken at ``restored_head``: the rows this test wrote since
    # then (its keys, their history and outbox rows) disappear and the head goes back. Only this
    # test's rows are above that head (checked), so the change log stays consistent for later tests:
    # revisions up to the head are assigned once each, with no hole and no duplicate (the writes
    # below carry the head forward again). Cached states of the vanished keys are dropped too.
    pattern = p + ".%"
    async with pg.acquire() as conn, conn.cursor() as cur, cur.begin():
        await cur.execute("SELECT head FROM relay_state FOR UPDATE")
        (head,) = await cur.fetchone()
        await cur.execute(
            "SELECT count(*) FROM outbox WHERE revision > %s AND key NOT LIKE %s", (restored_head, pattern)
        )
        (foreign,) = await cur.fetchone()
        assert head == old[-1] and foreign == 0, f"precondition: only this test wrote after {restored_head}"
        await cur.execute("DELETE FROM outbox WHERE key LIKE %s", (pattern,))
        await cur.execute("DELETE FROM key_history WHERE key LIKE %s", (pattern,))
        await cur.execute("DELETE FROM keys WHERE key LIKE %s", (pattern,))
        await cur.execute("UPDATE relay_state SET head = %s", (restored_head,))
    await redis_client.delete(*(cache_key(key) for key in olds))
    hub_last = notifier_server.app[HUB].last

    # Each new change gets a revision the hub has already passed; the head stays below the hub's
    # last revision after the first one, so a hub that looks at the head can notice.
    new1, new2 = f"{p}.new1", f"{p}.new2"
    for key, value, count in ((new1, "n1", 1), (new2, "n2", 2)):
        await api.put(key, value)
        rows = await wait_relayed(pg, p, count)
        assert rows[-1][2] == restored_head + count <= hub_last, (rows, hub_last)

        def got(key: str = key) -> bool:
            return any(e["key"] == key for e in stream.changes(p)[3:])

        await stream.wait_until(got, 5.0)
        after = stream.messages[stream.messages.index(stream.changes(p)[2]) + 1 :]
        assert got(), (
            f"after the head went back from {head} to {restored_head}, the watcher got {after} in 5 s "
            f"for the change of {key} (revision {restored_head + count}, the hub is at {hub_last})"
        )
    news = [e for e in after if e.get("event") in CHANGE_EVENTS]
    assert summary(news)[-2:] == [("update", new1, 1, "n1"), ("update", new2, 1, "n2")], after
