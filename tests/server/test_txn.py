"""``POST /txn`` (SPEC §4) and how watchers and pollers receive a transaction (SPEC §6): all or
nothing, one revision, each op checked as its own call would be; one ``txn`` frame per reader with
only what it may read; resume and polling never split one."""

from __future__ import annotations

import asyncio
import datetime
import uuid
from collections.abc import Callable
from typing import Any

import aiohttp
import aiopg
import pytest
from aiohttp.test_utils import TestClient, TestServer
from support import ADMIN, Api, WatchRecorder, assert_error, eventually

from shared.sql import audit as audit_sql

Client = TestClient[Any, Any]


class TxnRecorder(WatchRecorder):
    CHANGE_EVENTS = frozenset({"update", "delete", "expired", "txn"})


@pytest.fixture
def api(client: Client, token: Callable[..., str]) -> Api:
    return Api(client, token)


def puts(*pairs: tuple[str, Any]) -> list[dict[str, Any]]:
    return [{"op": "put", "key": key, "value": value} for key, value in pairs]


async def txn(api: Api, body: Any, user: str = ADMIN, **headers: str) -> tuple[int, Any]:
    return await api.call("POST", "/txn", user, body, **headers)


def assert_failed_at(status: int, body: Any, expected: int, part: str, index: int) -> None:
    assert_error(status, body, expected)
    assert (body.get("in"), body.get("index")) == (part, index), body


async def versions(api: Api, *keys: str) -> list[int | None]:
    out: list[int | None] = []
    for key in keys:
        status, body = await api.call("GET", f"/keys/{key}")
        out.append(body["version"] if status == 200 else None)
    return out


async def grant(api: Api, namespace: str, read: list[str], write: list[str]) -> None:
    await api.ok("PUT", f"/namespaces/{namespace}", body={"acls": {"read": read, "write": write}})


# --- the call ----------------------------------------------------------------------------------------


async def test_a_transaction_writes_every_key_at_one_revision_of_its_own(api: Api, unique_prefix: str) -> None:
    a, b, c = (f"{unique_prefix}.{name}" for name in "abc")
    await api.put(b, "old")
    await api.put(c, "gone")
    status, body = await txn(
        api,
        {
            "compare": [{"key": a, "exists": False}, {"key": b, "version": 1}],
            "ops": [*puts((a, {"on": True}), (b, 2)), {"op": "delete", "key": c}],
        },
    )
    assert status == 200, body
    revision = body["revision"]
    assert body["results"] == [{"key": a, "version": 1}, {"key": b, "version": 2}, {"key": c, "version": 2}]
    for key, value in ((a, {"on": True}), (b, 2)):
        got = await api.ok("GET", f"/keys/{key}")
        assert (got["value"], got["revision"]) == (value, revision), got
    assert (await api.call("GET", f"/keys/{c}"))[0] == 404
    history = await api.ok("GET", f"/keys/{b}/history")
    assert [v["version"] for v in history["versions"]] == [2, 1]
    # Nobody else's write has that revision: the next write has a revision of its own, after it.
    after = await api.put(a, "next")
    assert after["revision"] > revision


async def test_a_failing_compare_fails_the_whole_transaction_and_writes_nothing(api: Api, unique_prefix: str) -> None:
    a, b = f"{unique_prefix}.a", f"{unique_prefix}.b"
    await api.put(a, 1)
    await api.put(a, 2)
    ops = puts((a, 3), (b, 3))
    for compare, index, says in (
        ([{"key": a, "version": 2}, {"key": a, "version": 1}], 1, "version 2, not 1"),
        ([{"key": a, "exists": False}], 0, "exists"),
        ([{"key": b, "exists": True}], 0, "does not exist"),
        ([{"key": b, "version": 1}], 0, "does not exist"),
    ):
        status, body = await txn(api, {"compare": compare, "ops": ops})
        assert_failed_at(status, body, 412, "compare", index)
        assert says in body["message"], body
    assert await versions(api, a, b) == [2, None]


async def test_each_op_is_checked_as_its_own_call_and_the_first_failure_names_its_index(
    api: Api, unique_prefix: str
) -> None:
    ns = unique_prefix
    open_, locked = f"{ns}.open", f"{ns}.locked"
    writer = f"{ns}-writer"
    await grant(api, f"{ns}.open", ["*"], [writer])
    await grant(api, ns, ["*"], [])
    await api.put(locked, "admins only")
    await api.put(f"{open_}.x", "x")
    # An ACL failure in any position refuses the whole transaction, with that op's 403 and index.
    for ops, index in (
        ([{"op": "put", "key": locked, "value": 1}, *puts((f"{open_}.y", 1))], 0),
        ([*puts((f"{open_}.y", 1)), {"op": "patch", "key": locked, "value": 1}], 1),
        ([*puts((f"{open_}.y", 1), (f"{open_}.x", 2)), {"op": "delete", "key": locked}], 2),
    ):
        status, body = await txn(api, {"ops": ops}, writer)
        assert_failed_at(status, body, 403, "ops", index)
    assert await versions(api, locked, f"{open_}.x", f"{open_}.y") == [1, 1, None]
    # 404 for a patch or delete of a key that does not exist (which the caller could read).
    status, body = await txn(api, {"ops": [*puts((f"{open_}.y", 1)), {"op": "delete", "key": f"{open_}.none"}]})
    assert_failed_at(status, body, 404, "ops", 1)
    # A non-admin may not set ttl or acls when replacing (403, as alone); an admin may.
    status, body = await txn(api, {"ops": [{"op": "put", "key": f"{open_}.x", "value": 2, "ttl": 60}]}, writer)
    assert_failed_at(status, body, 403, "ops", 0)
    status, body = await txn(api, {"ops": [{"op": "patch", "key": f"{open_}.x", "acls": {"read": ["*"]}}]}, writer)
    assert_failed_at(status, body, 403, "ops", 0)
    # A compare reads: without read on the key, 403 whether or not it exists.
    await grant(api, f"{ns}.secret", [], [writer])
    for key in (f"{ns}.secret.exists", f"{ns}.secret.never"):
        if key.endswith("exists"):
            await api.put(key, 1)
        status, body = await txn(
            api, {"compare": [{"key": key, "exists": True}], "ops": puts((f"{open_}.y", 1))}, writer
        )
        assert_failed_at(status, body, 403, "compare", 0)
    status, body = await txn(api, {"ops": puts((f"{open_}.y", 1), (f"{open_}.z", 1))}, writer)
    assert status == 200, body


@pytest.mark.parametrize(
    ("body", "part", "index"),
    [
        ({"ops": []}, None, None),
        ({"ops": [{"op": "put", "key": f"k{i}", "value": i} for i in range(129)]}, None, None),
        ({"ops": [{"op": "put", "key": "t.a", "value": 1}, {"op": "put", "key": "t.a", "value": 2}]}, "ops", 1),
        ({"ops": [{"op": "put", "key": "t.a", "value": 1}, {"op": "rename", "key": "t.b"}]}, "ops", 1),
        ({"ops": [{"op": "put", "key": "t.a"}]}, "ops", 0),
        ({"ops": [{"op": "put", "key": "bad..key", "value": 1}]}, "ops", 0),
        ({"ops": [{"op": "patch", "key": "t.a"}]}, "ops", 0),
        ({"ops": [{"op": "delete", "key": "t.a", "value": 1}]}, "ops", 0),
        ({"ops": [{"op": "put", "key": "t.a", "value": 1, "ttl": 0}]}, "ops", 0),
        ({"ops": puts(("t.a", 1)), "compare": [{"key": "t.a", "version": 1, "exists": True}]}, "compare", 0),
        ({"ops": puts(("t.a", 1)), "compare": [{"key": "t.a"}]}, "compare", 0),
        ({"ops": puts(("t.a", 1)), "compare": [{"key": "t.a", "exists": "yes"}]}, "compare", 0),
        ({"ops": puts(("t.a", 1)), "extra": 1}, None, None),
        ([{"op": "put"}], None, None),
    ],
)
async def test_a_malformed_transaction_is_a_400_naming_its_part(api: Api, body: Any, part: str, index: int) -> None:
    status, answer = await txn(api, body)
    assert_error(status, answer, 400)
    assert (answer.get("in"), answer.get("index")) == (part, index), answer
    assert await versions(api, "t.a") == [None]


async def test_concurrent_conflicting_transactions_exactly_one_wins(api: Api, unique_prefix: str) -> None:
    """Each moves the same key from its version 1, with a key of its own: one commits, the others
    find the version moved (412) and write nothing at all."""
    shared = f"{unique_prefix}.shared"
    await api.put(shared, "start")
    contenders = 12

    async def contend(i: int) -> tuple[int, Any]:
        own = f"{unique_prefix}.own{i}"
        body = {"compare": [{"key": shared, "version": 1}], "ops": puts((shared, i), (own, i))}
        return await txn(api, body)

    answers = await asyncio.gather(*(contend(i) for i in range(contenders)))
    won = [i for i, (status, _) in enumerate(answers) if status == 200]
    assert len(won) == 1, answers
    for i, (status, body) in enumerate(answers):
        if i != won[0]:
            assert_failed_at(status, body, 412, "compare", 0)
    owns = await versions(api, *(f"{unique_prefix}.own{i}" for i in range(contenders)))
    assert owns == [1 if i == won[0] else None for i in range(contenders)]
    got = await api.ok("GET", f"/keys/{shared}")
    assert (got["value"], got["version"]) == (won[0], 2)


async def test_audit_records_one_row_per_op_sharing_the_transaction_id(api: Api, unique_prefix: str) -> None:
    keys = [f"{unique_prefix}.a", f"{unique_prefix}.b"]
    await api.put(keys[1], 0)
    request_id = f"txn-{uuid.uuid4()}"
    status, body = await txn(api, {"ops": puts((keys[0], 1), (keys[1], 1))}, **{"X-Request-Id": request_id})
    assert status == 200, body
    records = (await api.ok("GET", f"/audit?actor={ADMIN}&limit=50"))["records"]
    mine = sorted((r["key"], r["action"], r["version"]) for r in records if r["requestId"] == request_id)
    assert mine == [(keys[0], "create", 1), (keys[1], "replace", 2)]
    # A refused transaction: one record, of the op that failed, as its own call records it.
    refused_id = f"txn-{uuid.uuid4()}"
    status, body = await txn(
        api, {"compare": [{"key": keys[0], "version": 9}], "ops": puts((keys[1], 2))}, **{"X-Request-Id": refused_id}
    )
    assert_failed_at(status, body, 412, "compare", 0)

    async def refused() -> list[tuple[str, str, str]]:
        rows = (await api.ok("GET", f"/audit?actor={ADMIN}&limit=50"))["records"]
        return [(r["key"], r["action"], r["outcome"]) for r in rows if r["requestId"] == refused_id]

    await eventually(lambda: refused(), 5, "the refusal audited")
    assert await refused() == [(keys[0], "compare", "precondition_failed")]


# --- watchers and pollers ------------------------------------------------------------------------------


async def test_a_watcher_gets_one_txn_frame_of_what_it_may_read(
    api: Api, notifier_server: TestServer, token: Callable[..., str], unique_prefix: str
) -> None:
    ns = unique_prefix
    reader = f"{ns}-reader"
    await grant(api, f"{ns}.public", [reader], [])
    await grant(api, f"{ns}.private", [], [])
    public, private = f"{ns}.public.x", f"{ns}.private.y"
    url = notifier_server.make_url("/watch")
    async with aiohttp.ClientSession() as session:
        admin = await TxnRecorder.open(session, url, token(ADMIN), [f"{ns}.*"])
        limited = await TxnRecorder.open(session, url, token(reader), [f"{ns}.*"])
        split = await TxnRecorder.open(session, url, token(ADMIN), [f"{ns}.*"], txn="split")
        try:
            status, only_private = await txn(api, {"ops": puts((private, 0))})
            assert status == 200, only_private
            status, body = await txn(api, {"ops": [*puts((public, 1), (private, 1))]})
            assert status == 200, body
            revision = body["revision"]
            assert await admin.holds(lambda: len(admin.events) >= 2, 10), admin.messages
            assert await split.holds(lambda: len(split.events) >= 3, 10), split.messages
            assert await limited.holds(lambda: len(limited.events) >= 1, 10), limited.messages
            frame = admin.events[1]
            assert (frame["event"], frame["revision"]) == ("txn", revision), frame
            assert [(c["event"], c["key"], c["value"], c["revision"]) for c in frame["changes"]] == [
                ("update", public, 1, revision),
                ("update", private, 1, revision),
            ]
            # The reader sees the transaction whole, as far as it may read it: no frame for the first
            # (nothing it may read), one frame holding only the public key for the second.
            await asyncio.sleep(0.2)
            assert len(limited.events) == 1, limited.events
            assert limited.events[0]["event"] == "txn" and limited.events[0]["revision"] == revision
            assert [c["key"] for c in limited.events[0]["changes"]] == [public]
            # "txn": "split": single events, one after the other, with the transaction's revision.
            assert [(e["event"], e["key"], e["revision"]) for e in split.events[1:]] == [
                ("update", public, revision),
                ("update", private, revision),
            ]
        finally:
            for watcher in (admin, limited, split):
                await watcher.close()


async def test_resume_and_polling_never_split_a_transaction(
    api: Api, notifier_server: TestServer, token: Callable[..., str], unique_prefix: str
) -> None:
    ns = unique_prefix
    before = (await api.put(f"{ns}.before", 0))["revision"]
    status, body = await txn(api, {"ops": puts(*((f"{ns}.k{i:03}", i) for i in range(40)))})
    assert status == 200, body
    revision = body["revision"]
    after = (await api.put(f"{ns}.after", 0))["revision"]
    url = notifier_server.make_url("/watch")
    async with aiohttp.ClientSession() as session:
        # From before the transaction: it comes whole, then the write after it.
        resumed = await TxnRecorder.open(session, url, token(ADMIN), [f"{ns}.*"], since_version=before)
        # From the transaction's revision: nothing of it again.
        past = await TxnRecorder.open(session, url, token(ADMIN), [f"{ns}.*"], since_version=revision)
        # Split: its changes one by one, with its revision, in the replay too.
        split = await TxnRecorder.open(session, url, token(ADMIN), [f"{ns}.*"], since_version=before, txn="split")
        try:
            assert await resumed.holds(lambda: len(resumed.events) >= 2, 10), resumed.messages
            assert await past.holds(lambda: len(past.events) >= 1, 10), past.messages
            assert await split.holds(lambda: len(split.events) >= 41, 10), split.messages
            frame, last = resumed.events
            assert frame["event"] == "txn" and frame["revision"] == revision and len(frame["changes"]) == 40
            assert last["revision"] == after
            assert [e["revision"] for e in past.events] == [after]
            assert [(e["event"], e["revision"]) for e in split.events] == [("update", revision)] * 40 + [
                ("update", after)
            ]
        finally:
            for watcher in (resumed, past, split):
                await watcher.close()
    # Polling: one txn event, never cut by the limit.
    for limit in ("1", "2", "100"):
        polled = await api.ok("GET", f"/keys?since_version={before}&namespace={ns}&limit={limit}")
        first = polled["events"][0]
        assert first["event"] == "txn" and first["revision"] == revision and len(first["changes"]) == 40, first
        if limit == "1":
            assert polled["more"] is True and len(polled["events"]) == 1
    polled = await api.ok("GET", f"/keys?since_version={revision}&namespace={ns}")
    assert [e["revision"] for e in polled["events"]] == [after]


async def test_ttls_expiry_and_the_rate_limit_behave_as_for_single_writes(
    api: Api,
    pg: aiopg.Pool,
    make_client: Callable[..., Any],
    settings: Any,
    token: Callable[..., str],
    unique_prefix: str,
) -> None:
    short, kept = f"{unique_prefix}.short", f"{unique_prefix}.kept"
    status, body = await txn(api, {"ops": [{"op": "put", "key": short, "value": 1, "ttl": 1}, *puts((kept, 1))]})
    assert status == 200, body
    # Its deadline is one second past its write. Read from the row, not by a GET, which a loaded
    # machine can make later than that deadline (the key is then rightly gone).
    async with pg.acquire() as conn, conn.cursor() as cur:
        await cur.execute("SELECT ttl, expires_at - last_modified FROM keys WHERE key = %s", (short,))
        assert await cur.fetchone() == (1, datetime.timedelta(seconds=1))
    await eventually(  # gone at its deadline, as for a PUT
        lambda: _status(api, f"/keys/{short}", 404), what=f"{short} gone after its one-second ttl"
    )
    # Written again past its deadline: its expiry is recorded first (version 2), then the write.
    status, body = await txn(api, {"compare": [{"key": short, "exists": False}], "ops": puts((short, 2))})
    assert status == 200 and body["results"] == [{"key": short, "version": 3}], body
    history = await api.ok("GET", f"/keys/{short}/history")
    assert [(v["version"], v["event"]) for v in history["versions"]] == [(3, "update"), (2, "expired"), (1, "update")]
    # One request of the rate limit, however many ops.
    limited = await make_client(settings.replace(rate_limit=5))
    auth = {"Authorization": f"Bearer {token(f'{unique_prefix}-limited')}"}
    await grant(api, unique_prefix, ["*"], [f"{unique_prefix}-limited"])
    ops = puts(*((f"{unique_prefix}.rl{i}", i) for i in range(20)))
    async with limited.post("/txn", json={"ops": ops}, headers=auth) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["X-RateLimit-Remaining"] == "4"


# --- rows held by another transaction (another replica, the expiry worker) ------------------------------


async def _status(api: Api, path: str, status: int) -> bool:
    return (await api.call("GET", path))[0] == status


async def hold_row(pg: aiopg.Pool, key: str) -> Any:
    """A connection inside a transaction that holds ``key``'s row (close it to let go)."""
    holder = await aiopg.connect(pg._dsn)
    cur = await holder.cursor()
    await cur.execute("BEGIN")
    await cur.execute("SELECT 1 FROM keys WHERE key = %s FOR UPDATE", (key,))
    return holder


async def key_row(pg: aiopg.Pool, key: str) -> Any:
    async with pg.acquire() as conn, conn.cursor() as cur:
        await cur.execute("SELECT version FROM keys WHERE key = %s", (key,))
        return await cur.fetchone()


async def test_an_outsider_learns_nothing_from_a_transaction_not_even_from_a_held_row(
    api: Api, pg: aiopg.Pool, unique_prefix: str
) -> None:
    """A caller with no rights gets the same immediate 403 whether the key exists (its row held by another
    transaction) or not, as for a single write; before, the transaction waited for the row and
    answered 503 after the statement timeout for a key that exists."""
    secret, missing = f"{unique_prefix}.secret", f"{unique_prefix}.missing"
    outsider = f"{unique_prefix}-outsider"
    await api.put(secret, 1)
    holder = await hold_row(pg, secret)
    try:
        for key in (secret, missing):
            for body, part in (
                ({"ops": puts((key, 2))}, "ops"),
                ({"compare": [{"key": key, "exists": True}], "ops": puts((f"{unique_prefix}.other", 1))}, "compare"),
            ):
                status, answer = await asyncio.wait_for(txn(api, body, outsider), 3)
                assert_failed_at(status, answer, 403, part, 0)
    finally:
        holder.close()


async def test_a_transaction_that_waits_for_a_held_row_leaves_no_placeholder_behind(
    api: Api, pg: aiopg.Pool, unique_prefix: str
) -> None:
    held, new = f"{unique_prefix}.held", f"{unique_prefix}.new"
    await api.put(held, 0)
    holder = await hold_row(pg, held)
    try:
        waiting = asyncio.ensure_future(txn(api, {"ops": puts((held, 1), (new, 1))}))
        await asyncio.sleep(0.5)  # moved to the contended lane, waiting for the row
        assert await key_row(pg, new) is None, "a placeholder of the new key was committed while waiting"
    finally:
        holder.close()
    status, body = await asyncio.wait_for(waiting, 10)
    assert status == 200 and body["results"] == [{"key": held, "version": 2}, {"key": new, "version": 1}], body


async def test_a_write_queued_behind_a_transaction_that_meets_a_contended_key_is_answered(
    api: Api, pg: aiopg.Pool, unique_prefix: str
) -> None:
    """A write of a key whose earlier write waits in the contended lane goes there too (arrival order
    per key), and so does every later write of a key such a transaction also writes. Here a batch holds
    a transaction of ``held`` (contended) and ``free``, then a PUT of ``free``: the PUT must follow the
    transaction into the contended lane. Before, it was sent to neither lane and never answered."""
    held, free, other = f"{unique_prefix}.held", f"{unique_prefix}.free", f"{unique_prefix}.other"
    await api.put(held, 0)
    row = await hold_row(pg, held)
    head = await aiopg.connect(pg._dsn)
    try:
        first = asyncio.ensure_future(api.call("PUT", f"/keys/{held}", ADMIN, {"value": 1}))
        await asyncio.sleep(0.5)  # in the contended lane, waiting for the row
        cur = await head.cursor()
        await cur.execute("BEGIN")
        await cur.execute(audit_sql.HEAD_FOR_UPDATE)  # the main lane's next commit waits for the chain
        stalled = asyncio.ensure_future(api.call("PUT", f"/keys/{other}", ADMIN, {"value": 1}))
        await asyncio.sleep(0.5)  # that batch is in its transaction: what comes now is the next batch
        both = asyncio.ensure_future(txn(api, {"ops": puts((held, 2), (free, 1))}))
        after = asyncio.ensure_future(api.call("PUT", f"/keys/{free}", ADMIN, {"value": 2}))
        await asyncio.sleep(0.5)
        head.close()
        assert (await asyncio.wait_for(stalled, 10))[0] == 201
    finally:
        head.close()
        row.close()
    assert (await asyncio.wait_for(first, 10))[0] == 200
    status, body = await asyncio.wait_for(both, 10)
    assert status == 200 and body["results"] == [{"key": held, "version": 3}, {"key": free, "version": 1}], body
    status, body = await asyncio.wait_for(after, 10)
    assert (status, body["version"]) == (200, 2), body


async def test_a_transaction_cut_between_two_relay_messages_reaches_a_watcher_whole(
    api: Api,
    make_notifier: Callable[..., Any],
    pg: aiopg.Pool,
    redis_client: Any,
    token: Callable[..., str],
    unique_prefix: str,
) -> None:
    """The previous release's relay may publish a transaction's changes in two messages (its batches end
    anywhere). The hub reads a cut transaction whole from Postgres before fanning it out; before, it sent
    the first part as a txn frame, and the rest, with the same revision, never reached the watcher."""
    from notifier.pubsub import CHANNEL, encode_batch
    from notifier.relay import RELAY_LOCK
    from shared.sql.changelog import events_after

    a, b = f"{unique_prefix}.a", f"{unique_prefix}.b"
    async with pg.acquire() as conn, conn.cursor() as cur:
        await cur.execute("SELECT pg_try_advisory_lock(%s)", (RELAY_LOCK,))  # no notifier relays: we do
        assert (await cur.fetchone())[0], "another relay holds the lock"
        try:
            notifier = await make_notifier(relay=False)
            async with aiohttp.ClientSession() as session:
                watcher = await TxnRecorder.open(
                    session, notifier.make_url("/watch"), token(ADMIN), [f"{unique_prefix}.*"]
                )
                try:
                    status, body = await txn(api, {"ops": puts((a, 1), (b, 1))})
                    assert status == 200, body
                    revision = body["revision"]
                    first_part = await events_after(cur, revision - 2, through=revision - 1)
                    assert [e.key for e in first_part] == [a]
                    await redis_client.publish(CHANNEL, encode_batch(first_part))
                    assert await watcher.holds(lambda: len(watcher.events) >= 1, 10), watcher.messages
                    await asyncio.sleep(1.5)  # the hub's safety poll reads what it missed from Postgres
                    assert [(e["event"], e["revision"], [c["key"] for c in e["changes"]]) for e in watcher.events] == [
                        ("txn", revision, [a, b])
                    ]
                finally:
                    await watcher.close()
        finally:
            await cur.execute("SELECT pg_advisory_unlock(%s)", (RELAY_LOCK,))
