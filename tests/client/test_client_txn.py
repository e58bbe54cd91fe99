"""Transactions (``POST /txn``) on the client's side, against the real system: ``Client.txn()`` and its
typed errors through the api_server app; ``txn`` events through a real notifier (in-process, or a real
process killed and restarted) to ``EventStream``, ``LiveConfig`` and ``SyncLiveConfig``; polling; and
``dynconfig txn`` as a real subprocess. Every key starts with this test's ``unique_prefix``.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from support import ADMIN
from test_cli import REPO, cli_command, cli_env, imported_by, run_cli
from test_client import base_url_of
from test_event_stream import take, ws_url
from test_sync_live_config import http

from dynconfig_client import (
    BadRequest,
    Change,
    Client,
    EventKind,
    EventStream,
    Forbidden,
    KeyVersion,
    LiveConfig,
    NotFound,
    PreconditionFailed,
    SyncLiveConfig,
    TxnChange,
    TxnEvent,
    TxnResult,
    parse_event,
)

TIMEOUT = 15.0
Token = Callable[..., str]


@pytest.fixture
async def admin(client: Any, token: Token) -> AsyncIterator[Client]:
    """A Client of the in-process api_server app, as the admin."""
    async with Client(base_url_of(client), token()) as c:
        yield c


def changes_of(event: dict[str, Any]) -> list[tuple[Any, ...]]:
    """(kind, key, version, value, revision) of each change of a ``txn`` event, sorted."""
    return sorted((c["event"], c["key"], c["version"], c.get("value"), c["revision"]) for c in event["changes"])


# --- Client.txn() ----------------------------------------------------------------------------------


async def test_a_built_transaction_commits_every_op_at_one_revision(admin: Client, unique_prefix: str) -> None:
    a, b, c, d = (f"{unique_prefix}.{name}" for name in "abcd")
    await admin.put(b, "old")
    await admin.put(c, "doomed")
    txn = (
        admin.txn()
        .compare_exists(a, False)
        .compare_version(b, 1)
        .put(a, {"on": True}, ttl=600, acls={"read": ["*"], "write": [ADMIN]})
        .patch(b, 2)
        .delete(c)
    )
    assert txn.body() == {
        "compare": [{"key": a, "exists": False}, {"key": b, "version": 1}],
        "ops": [
            {"op": "put", "key": a, "value": {"on": True}, "ttl": 600, "acls": {"read": ["*"], "write": [ADMIN]}},
            {"op": "patch", "key": b, "value": 2},
            {"op": "delete", "key": c},
        ],
    }
    assert repr(txn) == f"<Txn 2 compare(s); ops: put {a}, patch {b}, delete {c}>"  # never the values

    result = await txn.commit()
    assert isinstance(result, TxnResult)
    assert result.results == [KeyVersion(a, 1), KeyVersion(b, 2), KeyVersion(c, 2)]
    assert result.versions == {a: 1, b: 2, c: 2}
    item_a, item_b = await admin.get(a), await admin.get(b)
    assert (item_a.value, item_a.ttl, item_a.revision) == ({"on": True}, 600, result.revision)
    assert (item_b.value, item_b.version, item_b.revision) == (2, 2, result.revision)
    with pytest.raises(NotFound):
        await admin.get(c)

    # The builder holds its body: committing it again finds its first compare no longer true.
    with pytest.raises(PreconditionFailed) as again:
        await txn.commit()
    assert (again.value.in_, again.value.index) == ("compare", 0)

    # A body as it is (compare is optional): what `dynconfig txn FILE` sends.
    raw = await admin.commit_txn({"ops": [{"op": "put", "key": d, "value": [1]}, {"op": "delete", "key": a}]})
    assert raw.results == [KeyVersion(d, 1), KeyVersion(a, 2)] and raw.revision > result.revision


async def test_a_failed_compare_or_op_raises_its_typed_error_naming_its_place(
    admin: Client, unique_prefix: str
) -> None:
    a, b = f"{unique_prefix}.a", f"{unique_prefix}.b"
    await admin.put(a, 1)
    await admin.put(a, 2)

    with pytest.raises(PreconditionFailed) as compare:
        await admin.txn().compare_version(a, 2).compare_exists(b).put(a, 3).put(b, 3).commit()
    error = compare.value
    assert (error.status, error.error, error.in_, error.index) == (412, "Precondition Failed", "compare", 1)
    assert (error.body["in"], error.body["index"]) == ("compare", 1)
    assert str(error) == f"412 Precondition Failed at compare[1]: {error.message}"

    with pytest.raises(PreconditionFailed) as stale:
        await admin.txn().compare_version(a, 1).put(a, 3).commit()
    assert (stale.value.in_, stale.value.index) == ("compare", 0)

    with pytest.raises(NotFound) as missing:
        await admin.txn().put(a, 3).patch(b, 1).commit()
    assert (missing.value.in_, missing.value.index) == ("ops", 1)

    with pytest.raises(BadRequest) as twice:
        await admin.txn().put(a, 3).put(a, 4).commit()
    assert (twice.value.in_, twice.value.index) == ("ops", 1) and twice.value.fields

    with pytest.raises(BadRequest) as empty:  # wrong as a whole: no part to name
        await admin.txn().commit()
    assert (empty.value.in_, empty.value.index) == (None, None)
    assert str(empty.value) == f"400 Bad Request: {empty.value.message}"

    # Nothing of any of them was written; other calls' errors name no part, and read as before.
    assert (await admin.get(a)).version == 2
    with pytest.raises(NotFound) as plain:
        await admin.get(b)
    assert (plain.value.in_, plain.value.index) == (None, None)
    assert str(plain.value) == "404 Not Found: Key does not exist"


async def test_an_op_the_caller_may_not_do_fails_the_transaction_with_forbidden(
    admin: Client, client: Any, token: Token, unique_prefix: str
) -> None:
    ns = unique_prefix
    writer = f"{ns}-writer"
    opened, locked = f"{ns}.open", f"{ns}.locked"
    await admin.put_namespace(opened, {"read": ["*"], "write": [writer]})
    await admin.put(locked, "admins only")
    async with Client(base_url_of(client), token(writer)) as user:
        with pytest.raises(Forbidden) as caught:
            await user.txn().put(f"{opened}.a", 1).put(locked, "mine").commit()
        assert (caught.value.status, caught.value.in_, caught.value.index) == (403, "ops", 1)
        assert str(caught.value).startswith("403 Forbidden at ops[1]: ")

        with pytest.raises(Forbidden) as unreadable:  # a compare reads the key
            await user.txn().compare_exists(locked).put(f"{opened}.a", 1).commit()
        assert (unreadable.value.in_, unreadable.value.index) == ("compare", 0)

        with pytest.raises(NotFound):  # all or nothing: the allowed op was not made either
            await admin.get(f"{opened}.a")
        assert (await admin.get(locked)).value == "admins only"

        result = await user.txn().put(f"{opened}.a", 1).put(f"{opened}.b", 2).commit()
        assert result.results == [KeyVersion(f"{opened}.a", 1), KeyVersion(f"{opened}.b", 1)]


# --- events: the watch stream and polling --------------------------------------------------------


async def test_a_watcher_gets_a_transaction_as_one_txn_event_and_resumes_after_it(
    admin: Client, notifier_server: Any, token: Token, unique_prefix: str
) -> None:
    a, b, other = (f"{unique_prefix}.{name}" for name in ("a", "b", "other"))
    url, patterns = ws_url(notifier_server), [f"{unique_prefix}.*"]
    before = await admin.put(other, 0)
    assert before.revision is not None
    async with EventStream(url, token(), patterns, since_version=before.revision) as stream:
        result = await admin.txn().put(a, 1).put(b, {"two": 2}).delete(other).commit()
        after = await admin.put(other, "again")
        txn_event, single = await take(stream, 2)
        assert stream.revision == after.revision
    revision = result.revision
    assert (txn_event["event"], txn_event["revision"]) == ("txn", revision)
    assert changes_of(txn_event) == [
        ("delete", other, 2, None, revision),
        ("update", a, 1, 1, revision),
        ("update", b, 1, {"two": 2}, revision),
    ]
    assert (single["event"], single["key"], single["version"], single["revision"]) == (
        "update",
        other,
        3,
        after.revision,
    )

    typed = parse_event(txn_event)
    assert isinstance(typed, TxnEvent) and typed.revision == revision
    by_key = {change.key: change for change in typed.changes}
    assert (by_key[a].kind, by_key[a].value, by_key[other].kind, by_key[other].value) == (
        EventKind.UPDATE,
        1,
        EventKind.DELETE,
        None,
    )
    assert all(change.revision == revision and change.last_modified is not None for change in typed.changes)

    # Resuming from before it replays it once and whole; from its revision, only what came after.
    async with EventStream(url, token(), patterns, since_version=before.revision) as replay:
        replayed, later = await take(replay, 2)
    assert (replayed["event"], replayed["revision"], changes_of(replayed)) == ("txn", revision, changes_of(txn_event))
    assert later["revision"] == after.revision
    async with EventStream(url, token(), patterns, since_version=revision) as resumed:
        (only,) = await take(resumed, 1)
    assert (only["event"], only["revision"]) == ("update", after.revision)


async def test_a_poll_returns_a_transaction_as_one_event_even_on_a_page_of_one(
    admin: Client, unique_prefix: str
) -> None:
    a, b, other = (f"{unique_prefix}.{name}" for name in ("a", "b", "other"))
    before = await admin.put(other, 0)
    assert before.revision is not None
    result = await admin.txn().put(a, 1).put(b, 2).delete(other).commit()
    for limit in (100, 1):
        polled = await admin.poll(before.revision, namespace=unique_prefix, limit=limit)
        assert [e["event"] for e in polled.events] == ["txn"], polled
        assert polled.revision >= result.revision and not polled.reset
        (typed,) = polled.typed_events
        assert isinstance(typed, TxnEvent) and typed.revision == result.revision
        assert sorted((c.kind, c.key, c.version) for c in typed.changes) == [
            (EventKind.DELETE, other, 2),
            (EventKind.UPDATE, a, 1),
            (EventKind.UPDATE, b, 1),
        ]
    # Polling on from the transaction's revision: it is not given again.
    assert (await admin.poll(result.revision, namespace=unique_prefix)).events == []


async def test_a_snapshot_yields_every_key_a_transaction_wrote(
    admin: Client, notifier_server: Any, token: Token, unique_prefix: str
) -> None:
    """A snapshot sends one transaction's keys as update events sharing its revision: none of them is
    taken for a repeat of another."""
    keys = [f"{unique_prefix}.k{i}" for i in range(3)]
    result = await admin.txn().put(keys[0], 0).put(keys[1], 1).put(keys[2], 2).commit()
    async with EventStream(ws_url(notifier_server), token(), [f"{unique_prefix}.*"], snapshot=True, markers=True) as s:
        events = await take(s, 4)
    assert sorted((e["event"], e["key"], e["value"], e["revision"]) for e in events[:3]) == [
        ("update", key, i, result.revision) for i, key in enumerate(keys)
    ]
    assert events[3]["event"] == "synced" and events[3]["revision"] >= result.revision


@pytest.mark.parametrize("first", [True, False], ids=["first-revision", "after-another"])
async def test_a_connection_lost_between_a_transactions_snapshot_events_loses_and_repeats_none(
    admin: Client, notifier_server: Any, token: Token, unique_prefix: str, first: bool
) -> None:
    """The stream yields one key of a transaction from the snapshot, then its connection drops. After
    another revision it resumes from that one and gets the rest of the transaction as a ``txn`` event;
    with no revision before, it starts a fresh snapshot after a ``reset``."""
    keys = [f"{unique_prefix}.k{i}" for i in range(3)]
    before = None if first else await admin.put(f"{unique_prefix}.before", "x")
    result = await admin.txn().put(keys[0], 0).put(keys[1], 1).put(keys[2], 2).commit()
    patterns = [f"{unique_prefix}.k*"] if first else [f"{unique_prefix}.*"]
    url = ws_url(notifier_server)
    async with EventStream(url, token(), patterns, snapshot=True, markers=True, backoff_initial=0.05) as s:
        head = await take(s, 1 if first else 2)
        assert [e["revision"] for e in head] == ([] if before is None else [before.revision]) + [result.revision]
        assert s._ws is not None
        await s._ws.close()  # the connection drops: the rest of the snapshot is never read
        if first:
            rest = await take(s, 5)  # reset, the whole snapshot again, synced
            assert rest[0]["event"] == "reset"
            assert sorted((e["key"], e["revision"]) for e in rest[1:4]) == [(key, result.revision) for key in keys]
        else:
            rest = await take(s, 2)  # the transaction's other keys, synced
            txn_event = rest[0]
            assert (txn_event["event"], txn_event["revision"]) == ("txn", result.revision)
            got = [head[-1]["key"], *(change["key"] for change in txn_event["changes"])]
            assert sorted(got) == keys  # each key once
        assert rest[-1]["event"] == "synced" and s.connects == 2
        await admin.put(keys[0], "live")
        (live,) = await take(s, 1)
        assert (live["key"], live["version"], live["value"]) == (keys[0], 2, "live")


# --- LiveConfig: a transaction is applied whole ----------------------------------------------------


async def test_live_config_applies_each_transaction_whole_before_any_callback(
    admin: Client, notifier_server: Any, token: Token, unique_prefix: str
) -> None:
    x, y = f"{unique_prefix}.a.x", f"{unique_prefix}.a.y"
    await admin.txn().put(x, 0).put(y, 0).commit()
    calls: list[tuple[Any, ...]] = []
    torn: list[tuple[Any, Any]] = []
    rounds = 30
    async with LiveConfig(ws_url(notifier_server), token(), [f"{unique_prefix}.*"]) as live:
        await live.ready(timeout=TIMEOUT)
        assert live.snapshot() == {x: 0, y: 0}  # both keys of the first transaction's snapshot

        def on_change(change: Change) -> None:
            calls.append(("change", change.key, change.new, live.get(x), live.get(y), change.revision, live.revision))

        async def on_txn(txn: TxnChange) -> None:  # async callbacks are awaited too
            await asyncio.sleep(0)
            calls.append(("txn", txn, live.snapshot([x, y]), live.revision))

        live.on_change(on_change)
        live.on_txn(on_txn)
        done = asyncio.Event()

        async def reader() -> int:  # reads between every step of the loop that applies the stream
            reads = 0
            while not done.is_set():
                if live.get(x) != live.get(y):
                    torn.append((live.get(x), live.get(y)))
                reads += 1
                await asyncio.sleep(0)
            return reads

        reading = asyncio.create_task(reader())
        results = [await admin.txn().put(x, n).put(y, n).commit() for n in range(1, rounds + 1)]
        await live.wait_for_revision(results[-1].revision, timeout=TIMEOUT)
        done.set()
        assert await reading > rounds
    assert torn == []
    assert len(calls) == 3 * rounds
    for n, result in enumerate(results, start=1):
        first, second, whole = calls[3 * (n - 1) : 3 * n]
        # Each per-key callback sees the whole transaction applied, at its revision.
        assert sorted([first[1], second[1]]) == [x, y]
        for call in (first, second):
            assert call[0] == "change" and call[2:] == (n, n, n, result.revision, result.revision), call
        # Then on_txn, once, with both changes.
        assert whole[0] == "txn", whole
        txn = whole[1]
        assert isinstance(txn, TxnChange) and txn.revision == result.revision
        assert sorted((c.key, c.old, c.new, c.version, c.kind) for c in txn.changes) == [
            (x, n - 1, n, n + 1, EventKind.UPDATE),
            (y, n - 1, n, n + 1, EventKind.UPDATE),
        ]
        assert whole[2:] == ({x: n, y: n}, result.revision)


async def test_live_config_resumes_across_transactions_made_while_its_notifier_was_down(
    admin: Client, spawn: Callable[..., Any], token: Token, unique_prefix: str
) -> None:
    x, y, z = (f"{unique_prefix}.{name}" for name in "xyz")
    proc = spawn("notifier")
    url = f"ws://127.0.0.1:{proc.port}/watch"
    txns: list[TxnChange] = []
    async with LiveConfig(url, token(), [f"{unique_prefix}.*"], backoff_max=1.0) as live:
        await live.ready(timeout=TIMEOUT)
        live.on_txn(txns.append)
        first = await admin.txn().put(x, 1).put(y, 1).put(z, 1).commit()
        await live.wait_for_revision(first.revision, timeout=TIMEOUT)

        proc.popen.kill()
        await asyncio.to_thread(proc.popen.wait)
        second = await admin.txn().put(x, 2).put(y, 2).delete(z).commit()
        third = await admin.txn().compare_exists(z, False).put(x, 3).put(y, 3).commit()
        await asyncio.to_thread(spawn, "notifier", port=proc.port)
        await live.wait_for_revision(third.revision, timeout=30)
        assert live.snapshot() == {x: 3, y: 3} and live.revision == third.revision
    assert [t.revision for t in txns] == [first.revision, second.revision, third.revision]
    assert [sorted((c.key, c.new, c.kind) for c in t.changes) for t in txns] == [
        [(x, 1, "update"), (y, 1, "update"), (z, 1, "update")],
        [(x, 2, "update"), (y, 2, "update"), (z, None, "delete")],
        [(x, 3, "update"), (y, 3, "update")],
    ]


def test_sync_live_config_readers_on_other_threads_never_see_half_a_transaction(
    spawn: Callable[..., Any], token: Token, unique_prefix: str
) -> None:
    api, notifier = spawn("api_server"), spawn("notifier")
    x, y = f"{unique_prefix}.x", f"{unique_prefix}.y"
    admin = token(ADMIN)

    def txn(n: int) -> int:
        status, body = http(
            "POST", f"{api.url}/txn", admin, {"ops": [{"op": "put", "key": k, "value": n} for k in (x, y)]}
        )
        assert status == 200, body
        return int(body["revision"])

    txn(0)
    in_callbacks: list[tuple[Any, ...]] = []
    torn: list[dict[str, Any]] = []
    reads = 0
    done = threading.Event()
    with SyncLiveConfig(f"ws://127.0.0.1:{notifier.port}/watch", admin, [f"{unique_prefix}.*"]) as live:
        live.on_change(lambda c: in_callbacks.append((c.new, live.get(x), live.get(y))))

        def reader() -> None:
            nonlocal reads
            while not done.is_set():
                state = live.snapshot([x, y])
                if state.get(x) != state.get(y):
                    torn.append(state)
                reads += 1

        thread = threading.Thread(target=reader, name="test-reader")
        thread.start()
        try:
            last = [txn(n) for n in range(1, 41)][-1]
            live.wait_for_revision(last, TIMEOUT)
        finally:
            done.set()
            thread.join(TIMEOUT)
        assert live.snapshot() == {x: 40, y: 40}
    assert torn == [] and reads > 40
    assert len(in_callbacks) == 80 and all(new == vx == vy for new, vx, vy in in_callbacks), in_callbacks[:10]


# --- dynconfig txn ---------------------------------------------------------------------------------


def txn_from_stdin(text: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``dynconfig txn -`` with ``text`` on its standard input."""
    command = cli_command("txn", "-")
    return subprocess.run(command, input=text, env=env, cwd=REPO, capture_output=True, text=True, timeout=30)


def test_cli_txn_sends_a_file_or_standard_input_and_names_the_failing_part(
    spawn: Callable[..., Any], token: Token, unique_prefix: str, tmp_path: Path
) -> None:
    api = spawn("api_server")
    env = cli_env(api.url, token())
    a, b = f"{unique_prefix}.a", f"{unique_prefix}.b"
    path = tmp_path / "txn.json"
    path.write_text(
        json.dumps(
            {
                "compare": [{"key": a, "exists": False}],
                "ops": [
                    {"op": "put", "key": a, "value": {"n": 1}},
                    {"op": "put", "key": b, "value": "two", "ttl": 600},
                ],
            }
        )
    )
    result = run_cli("txn", str(path), env=env)
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    written = json.loads(result.stdout)
    assert written["results"] == [{"key": a, "version": 1}, {"key": b, "version": 1}]
    assert run_cli("get", a, env=env).stdout == '{"n": 1}\n'

    body = {
        "compare": [{"key": a, "version": 1}],
        "ops": [{"op": "delete", "key": a}, {"op": "patch", "key": b, "value": 3}],
    }
    piped = txn_from_stdin(json.dumps(body), env)
    assert (piped.returncode, piped.stderr) == (0, ""), piped.stderr
    second = json.loads(piped.stdout)
    assert second["results"] == [{"key": a, "version": 2}, {"key": b, "version": 2}]
    assert second["revision"] > written["revision"]

    # The same body again: `a` is no longer live at version 1 (version 2 deleted it).
    failed = txn_from_stdin(json.dumps(body), env)
    assert (failed.returncode, failed.stdout) == (1, "")
    assert (
        failed.stderr.startswith("dynconfig: 412 Precondition Failed at compare[0]: ")
        and failed.stderr.count("\n") == 1
    )

    user = cli_env(api.url, token(f"{unique_prefix}-user"))
    path.write_text(json.dumps({"ops": [{"op": "patch", "key": b, "value": 4}]}))
    denied = run_cli("txn", str(path), env=user)
    assert (denied.returncode, denied.stdout) == (1, "")
    assert denied.stderr.startswith("dynconfig: 403 Forbidden at ops[0]: "), denied.stderr
    assert "txn" in run_cli("--help", env=env).stdout


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (None, "cannot read {name}: No such file or directory"),
        ("{not json", "{name} is not JSON: "),
        ('[{"op": "put"}]', '{name} must hold a JSON object, {{"compare": [...], "ops": [...]}}'),
    ],
    ids=["missing", "not-json", "not-an-object"],
)
def test_cli_txn_with_a_bad_file_says_so_in_one_line_before_any_request(
    tmp_path: Path, content: str | None, says: str
) -> None:
    path = tmp_path / "txn.json"
    if content is not None:
        path.write_text(content)
    env = cli_env("http://127.0.0.1:9", "some-token")  # never reached
    result, modules = imported_by("txn", str(path), env=env)
    lines = [line for line in result.stderr.splitlines() if not line.startswith("import time:")]
    assert (result.returncode, result.stdout, len(lines)) == (2, "", 1), result.stderr[-2000:]
    assert lines[0].startswith(f"dynconfig: {says.format(name=path)}"), lines
    assert not {"aiohttp", "dynconfig_client.client", "http.client"} & modules
    if content is not None:
        piped = txn_from_stdin(content, env)
        assert (piped.returncode, piped.stdout, piped.stderr.count("\n")) == (2, "", 1), piped.stderr
        assert piped.stderr.startswith(f"dynconfig: {says.format(name='standard input')}"), piped.stderr
