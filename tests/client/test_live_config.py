"""``dynconfig_client.LiveConfig`` against the real system: the API app in-process, the notifier in-process
or as a real process (killed with SIGKILL and restarted), the expiry worker running, real Postgres and
Redis (stopped and started). Every view watches this test's ``unique_prefix`` only.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiopg
import pytest
from aiohttp.test_utils import TestClient
from support import Api, eventually

from dynconfig_client.disk_cache import CacheState, DiskCache, Entry
from dynconfig_client.errors import BadRequest
from dynconfig_client.live import Change, LiveConfig

TIMEOUT = 15.0
Token = Callable[..., str]


async def get_state(api: Api, keys: list[str]) -> dict[str, tuple[Any, int | None]]:
    """{key: (value, version)} of the keys that exist, as GET answers."""
    found = {}
    for key in keys:
        status, body = await api.call("GET", f"/keys/{key}")
        assert status in (200, 404), body
        if status == 200:
            found[key] = (body["value"], body["version"])
    return found


def view_state(live: LiveConfig, keys: list[str]) -> dict[str, tuple[Any, int | None]]:
    return {key: (live[key], live.version(key)) for key in keys if key in live}


async def converged(api: Api, live: LiveConfig, keys: list[str], timeout: float = TIMEOUT) -> dict[str, Any]:
    """Wait until the view equals GET for every key (and nothing else under the prefix); GET's state."""
    expected: dict[str, Any] = {}

    async def same() -> bool:
        nonlocal expected
        expected = await get_state(api, keys)
        return view_state(live, keys) == expected and len(live) == len(expected)

    await eventually(same, timeout, lambda: f"view {view_state(live, keys)} == GET {expected}")
    return expected


def ws_url(server: Any) -> str:
    return str(server.make_url("/watch").with_scheme("ws"))


def recorder() -> tuple[list[Change], Callable[[Change], None]]:
    seen: list[Change] = []
    return seen, seen.append


# --- callbacks ------------------------------------------------------------------------------------


async def test_callbacks_get_old_and_new_values_for_put_patch_and_delete(
    client: TestClient[Any, Any], notifier_server: Any, token: Token, unique_prefix: str
) -> None:
    api = Api(client, token)
    a, sub = f"{unique_prefix}.a", f"{unique_prefix}.sub.x"
    await api.write("PUT", a, "one")
    async with LiveConfig(ws_url(notifier_server), token(), [f"{unique_prefix}.*"]) as live:
        assert await live.ready(timeout=TIMEOUT)
        assert live.source == "server" and live.connected
        await eventually(lambda: live.get(a) == "one", TIMEOUT, "the first value")
        everything, on_all = recorder()
        for_a, on_a = recorder()
        for_sub, on_sub = recorder()
        live.on_change(on_all)
        live.on_key(a, on_a)
        live.on_pattern(f"{unique_prefix}.sub.*", on_sub)
        await api.write("PATCH", a, "two")
        await api.write("PUT", sub, {"n": 1})
        await api.write("DELETE", a)
        await eventually(lambda: len(everything) == 3, TIMEOUT, "three changes")
        kinds = [(c.key, c.old, c.new, c.version, c.kind) for c in everything]
        assert kinds == [
            (a, "one", "two", 2, "update"),
            (sub, None, {"n": 1}, 1, "update"),
            (a, "two", None, 3, "delete"),
        ]
        assert [c.revision for c in everything] == sorted({c.revision for c in everything})
        assert live.revision == everything[-1].revision
        assert for_a == [everything[0], everything[2]] and for_sub == [everything[1]]
        assert a not in live and live.get(a, "gone") == "gone" and live.snapshot() == {sub: {"n": 1}}
        with pytest.raises(KeyError):
            live[a]


async def test_expired_key_fires_an_expired_change(
    client: TestClient[Any, Any],
    notifier_server: Any,
    aiohttp_server: Any,
    settings: Any,
    token: Token,
    unique_prefix: str,
) -> None:
    from expiry_worker.main import create_app

    await aiohttp_server(create_app(settings))  # a running expiry worker
    api = Api(client, token)
    key = f"{unique_prefix}.short"
    async with LiveConfig(ws_url(notifier_server), token(), [key]) as live:
        await live.ready(timeout=TIMEOUT)
        seen, record = recorder()
        live.on_key(key, record)
        await api.write("PUT", key, "soon gone", ttl=1)
        await eventually(lambda: len(seen) == 2, TIMEOUT, "update then expired")
    assert [(c.old, c.new, c.version, c.kind) for c in seen] == [
        (None, "soon gone", 1, "update"),
        ("soon gone", None, 2, "expired"),
    ]
    assert key not in live


async def test_async_callbacks_are_awaited_and_a_raising_callback_does_not_break_the_stream(
    client: TestClient[Any, Any],
    notifier_server: Any,
    token: Token,
    unique_prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    api = Api(client, token)
    key = f"{unique_prefix}.k"
    awaited: list[tuple[Any, Any]] = []

    async def slow(change: Change) -> None:
        await asyncio.sleep(0.01)
        awaited.append((change.old, change.new))

    def broken(change: Change) -> None:
        raise RuntimeError("callback bug")

    async with LiveConfig(ws_url(notifier_server), token(), [key]) as live:
        await live.ready(timeout=TIMEOUT)
        live.on_change(broken)
        live.on_key(key, slow)
        for value in range(3):
            await api.write("PUT", key, value)
        await eventually(lambda: len(awaited) == 3, TIMEOUT, "three awaited callbacks")
        assert awaited == [(None, 0), (0, 1), (1, 2)]
        assert live.get(key) == 2 and live.connected
    failures = [r for r in caplog.records if r.levelno == logging.ERROR and "callback" in r.getMessage()]
    assert len(failures) == 3 and all(r.exc_info for r in failures)


# --- failures: the notifier killed, Redis stopped --------------------------------------------------


async def test_state_equals_get_after_notifier_sigkill_and_redis_restart_while_writes_continue(
    client: TestClient[Any, Any], spawn: Callable[..., Any], redis_server: Any, token: Token, unique_prefix: str
) -> None:
    api = Api(client, token)
    keys = [f"{unique_prefix}.k{i}" for i in range(4)]
    proc = spawn("notifier")
    url = f"ws://127.0.0.1:{proc.port}/watch"
    writes = 0
    stop = asyncio.Event()

    async def writer() -> None:  # PUT, PUT, PUT, DELETE, PUT, … per key, round robin
        nonlocal writes
        while not stop.is_set():
            key = keys[writes % len(keys)]
            turn = writes // len(keys)
            await api.write("DELETE" if turn % 4 == 3 else "PUT", key, writes)
            writes += 1
            await asyncio.sleep(0.01)

    async def writes_pass(count: int) -> None:
        target = writes + count
        await eventually(lambda: writes >= target, TIMEOUT, f"{count} more writes")

    async with LiveConfig(url, token(), [f"{unique_prefix}.*"], backoff_max=1.0) as live:
        await live.ready(timeout=TIMEOUT)
        seen, record = recorder()
        live.on_change(record)
        task = asyncio.create_task(writer())
        try:
            await writes_pass(10)
            proc.popen.kill()
            await asyncio.to_thread(proc.popen.wait)
            await eventually(lambda: not live.connected, TIMEOUT, "the view to notice the dead notifier")
            await writes_pass(10)
            await asyncio.to_thread(redis_server.stop)
            await writes_pass(10)
            await asyncio.to_thread(spawn, "notifier", port=proc.port)
            await writes_pass(10)
            await asyncio.to_thread(redis_server.start)
            await writes_pass(10)
        finally:
            stop.set()
            await task
        await converged(api, live, keys)
        assert live.connected
    revisions = [c.revision for c in seen]
    assert revisions == sorted(set(revisions)), "a revision was reported twice or out of order"
    versions: dict[str, list[int]] = defaultdict(list)
    for change in seen:
        versions[change.key].append(change.version or 0)
    assert {key: got for key, got in versions.items()} == {
        key: list(range(1, len(got) + 1)) for key, got in versions.items()
    }, "a change was missed or repeated"
    assert sum(len(v) for v in versions.values()) == writes


# --- last-known-good -------------------------------------------------------------------------------


async def test_cold_start_from_the_disk_cache_while_the_server_is_down_then_catch_up(
    client: TestClient[Any, Any], spawn: Callable[..., Any], token: Token, unique_prefix: str, tmp_path: Path
) -> None:
    api = Api(client, token)
    a, b, c = (f"{unique_prefix}.{name}" for name in "abc")
    cache_path, cache_key = tmp_path / "config.cache", os.urandom(32)
    options: dict[str, Any] = {"cache_path": cache_path, "cache_key": cache_key, "backoff_max": 1.0}
    proc = spawn("notifier")
    url = f"ws://127.0.0.1:{proc.port}/watch"
    await api.write("PUT", a, "secret-value-1")
    await api.write("PUT", b, 2)
    async with LiveConfig(url, token(), [f"{unique_prefix}.*"], **options) as first:
        await first.ready(timeout=TIMEOUT)
        await eventually(lambda: first.get(a) == "secret-value-1" and first.get(b) == 2, TIMEOUT, "both values")
        saved_revision = first.revision
    assert stat.S_IMODE(cache_path.stat().st_mode) == 0o600
    assert b"secret-value-1" not in cache_path.read_bytes()

    proc.popen.kill()
    await asyncio.to_thread(proc.popen.wait)
    await api.write("PATCH", a, "secret-value-10")
    await api.write("DELETE", b)
    await api.write("PUT", c, [3])

    live = LiveConfig(url, token(), [f"{unique_prefix}.*"], **options)
    await live.start()
    try:
        assert await live.ready(timeout=0)  # at once, from the cache
        assert (live.source, live.connected, live.revision) == ("cache", False, saved_revision)
        assert live.snapshot() == {a: "secret-value-1", b: 2}
        seen, record = recorder()
        live.on_change(record)
        await asyncio.sleep(0.3)  # retrying against the closed port meanwhile
        assert live.source == "cache" and live.get_int(b) == 2

        await asyncio.to_thread(spawn, "notifier", port=proc.port)
        await converged(api, live, [a, b, c])
        assert live.source == "server" and live.connected
        assert [(ch.key, ch.old, ch.new, ch.kind) for ch in seen] == [
            (a, "secret-value-1", "secret-value-10", "update"),
            (b, 2, None, "delete"),
            (c, None, [3], "update"),
        ]
    finally:
        await live.close()
    reloaded = DiskCache(cache_path, cache_key).load()
    assert reloaded is not None and reloaded.revision == live.revision
    assert {k: e.value for k, e in reloaded.entries.items()} == {a: "secret-value-10", c: [3]}


async def stale_cache(api: Api, url: str, token: Token, key: str, tmp_path: Path) -> dict[str, Any]:
    """A cache file that holds ``key`` = "cached" while the server has moved on to "fresh"; the options
    that read it."""
    options: dict[str, Any] = {"cache_path": tmp_path / "config.cache", "cache_key": os.urandom(32)}
    await api.write("PUT", key, "cached")
    async with LiveConfig(url, token(), [key], **options) as first:
        await first.ready(timeout=TIMEOUT)
        await eventually(lambda: first.get(key) == "cached", TIMEOUT, "the first value")
    await api.write("PATCH", key, "fresh")
    return options


async def test_ready_gives_the_servers_values_over_a_stale_cache_when_the_server_answers(
    client: TestClient[Any, Any], notifier_server: Any, token: Token, unique_prefix: str, tmp_path: Path
) -> None:
    key = f"{unique_prefix}.flag"
    options = await stale_cache(Api(client, token), ws_url(notifier_server), token, key, tmp_path)
    async with LiveConfig(ws_url(notifier_server), token(), [key], **options) as live:
        assert await live.ready(timeout=TIMEOUT)
        assert (live.get(key), live.source) == ("fresh", "server")  # read right after ready(): never stale


async def test_ready_falls_back_to_the_cache_when_the_server_does_not_answer_in_time(
    client: TestClient[Any, Any], notifier_server: Any, token: Token, unique_prefix: str, tmp_path: Path
) -> None:
    import socket

    key = f"{unique_prefix}.flag"
    options = await stale_cache(Api(client, token), ws_url(notifier_server), token, key, tmp_path)
    with socket.create_server(("127.0.0.1", 0)) as silent:  # takes connections, never answers a handshake
        url = f"ws://127.0.0.1:{silent.getsockname()[1]}/watch"
        async with LiveConfig(url, token(), [key], prefer_server_for=0.5, **options) as live:
            started = time.monotonic()
            assert await live.ready(timeout=TIMEOUT)
            assert time.monotonic() - started >= 0.5  # it gave the server its time first
            assert (live.get(key), live.source, live.connected) == ("cached", "cache", False)
        async with LiveConfig(url, token(), [key], **options) as impatient:  # the default: 2 s for the server
            assert await impatient.ready(timeout=0.1)  # a shorter timeout serves the cache, never raises
            assert (impatient.get(key), impatient.source) == ("cached", "cache")


@pytest.mark.parametrize("damage", ["wrong key", "corrupt file"])
async def test_an_unreadable_cache_is_logged_and_ignored(
    client: TestClient[Any, Any],
    notifier_server: Any,
    token: Token,
    unique_prefix: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    damage: str,
) -> None:
    key = f"{unique_prefix}.k"
    patterns = [f"{unique_prefix}.*"]
    cache_path, cache_key = tmp_path / "config.cache", os.urandom(32)
    DiskCache(cache_path, cache_key).save(CacheState(10**9, patterns, {key: Entry("stale", 1, 1)}))
    if damage == "wrong key":
        cache_key = os.urandom(32)
    else:
        blob = bytearray(cache_path.read_bytes())
        blob[-5] ^= 0xFF
        cache_path.write_bytes(bytes(blob))
    await Api(client, token).write("PUT", key, "fresh")
    async with LiveConfig(
        ws_url(notifier_server), token(), patterns, cache_path=cache_path, cache_key=cache_key
    ) as live:
        await live.ready(timeout=TIMEOUT)
        assert live.source == "server"
        await eventually(lambda: live.get(key) == "fresh", TIMEOUT, "the fresh value")
    assert any("wrong cache key or corrupt file" in r.getMessage() for r in caplog.records)


def test_the_cache_key_must_be_32_bytes_and_is_required_with_a_path(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        LiveConfig("http://127.0.0.1:1", "t", ["a"], cache_path=tmp_path / "c", cache_key=b"short")
    with pytest.raises(ValueError, match="cache_key"):
        LiveConfig("http://127.0.0.1:1", "t", ["a"], cache_path=tmp_path / "c")


# --- reset ------------------------------------------------------------------------------------------


async def test_reset_swaps_in_the_snapshot_and_reports_vanished_keys_as_deletions(
    client: TestClient[Any, Any],
    notifier_server: Any,
    spawn: Callable[..., Any],
    pg: aiopg.Pool,
    token: Token,
    unique_prefix: str,
) -> None:
    """The view's notifier dies; while it is down the change log is pruned past the view's revision
    (``notifier_server`` keeps relaying), so the resume gets ``reset`` and a snapshot."""
    api = Api(client, token)
    a, b, c, d = (f"{unique_prefix}.{name}" for name in "abcd")
    proc = spawn("notifier")
    for key in (a, b, c):
        await api.write("PUT", key, key[-1])

    async def pg_one(sql: str, *args: Any) -> Any:
        async with pg.acquire() as conn, conn.cursor() as cur:
            await cur.execute(sql, args)
            return await cur.fetchone() if cur.description else None

    async with LiveConfig(f"ws://127.0.0.1:{proc.port}/watch", token(), [f"{unique_prefix}.*"]) as live:
        await live.ready(timeout=TIMEOUT)
        await converged(api, live, [a, b, c])
        seen, record = recorder()
        live.on_change(record)
        proc.popen.kill()
        await asyncio.to_thread(proc.popen.wait)
        await api.write("PATCH", a, "a2")
        await api.write("DELETE", b)
        await api.write("PUT", d, "d")
        sql = "SELECT (SELECT count(*) FROM outbox WHERE revision IS NULL), head, pruned_through FROM relay_state"

        async def relayed() -> Any:
            row = await pg_one(sql)
            return None if row[0] else row

        _, head, old_pruned = await eventually(relayed, TIMEOUT, "the relay relaying the writes", interval=0.02)
        assert (live.revision or 0) < head
        await pg_one("UPDATE relay_state SET pruned_through = %s", head)
        try:
            await asyncio.to_thread(spawn, "notifier", port=proc.port)
            await converged(api, live, [a, b, c, d])
        finally:
            await pg_one("UPDATE relay_state SET pruned_through = %s WHERE pruned_through = %s", old_pruned, head)
    summary = [(ch.key, ch.old, ch.new, ch.kind) for ch in seen]
    assert sorted(summary) == [(a, "a", "a2", "update"), (b, "b", None, "delete"), (d, None, "d", "update")]
    (deleted,) = [ch for ch in seen if ch.key == b]
    assert deleted.version is None and deleted.revision >= head
    assert live.revision is not None and live.revision >= head


# --- reads ----------------------------------------------------------------------------------------


async def test_typed_getters_convert_or_fall_back_to_the_default(
    client: TestClient[Any, Any],
    notifier_server: Any,
    token: Token,
    unique_prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    p = unique_prefix
    values: dict[str, Any] = {"t": "true", "f": "0", "yes": True, "i": "42", "n": 7, "x": "3.5"}
    values.update({"bad": "nope", "obj": {"a": 1}, "js": '{"b": 2}'})
    api = Api(client, token)
    for name, value in values.items():
        await api.write("PUT", f"{p}.{name}", value)
    async with LiveConfig(ws_url(notifier_server), token(), [f"{p}.*"]) as live:
        await live.ready(timeout=TIMEOUT)
        await eventually(lambda: len(live) == len(values), TIMEOUT, "every value")
        assert (live.get_bool(f"{p}.t"), live.get_bool(f"{p}.f"), live.get_bool(f"{p}.yes")) == (True, False, True)
        assert (live.get_int(f"{p}.i"), live.get_int(f"{p}.n")) == (42, 7)
        assert (live.get_float(f"{p}.x"), live.get_float(f"{p}.n")) == (3.5, 7.0)
        assert (live.get_str(f"{p}.n"), live.get_str(f"{p}.t"), live.get_str(f"{p}.obj", "d")) == ("7", "true", "d")
        assert (live.get_json(f"{p}.obj"), live.get_json(f"{p}.js"), live.get_json(f"{p}.n")) == ({"a": 1}, {"b": 2}, 7)
        assert live.get_int(f"{p}.missing", 5) == 5 and live.get_bool(f"{p}.missing") is None
        caplog.clear()
        assert [live.get_int(f"{p}.bad", -1) for _ in range(3)] == [-1, -1, -1]
        assert live.get_bool(f"{p}.bad", False) is False and live.get_json(f"{p}.bad", "d") == "d"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3 and all(f"{p}.bad" in w and "nope" not in w for w in warnings)


async def test_ready_times_out_without_server_or_cache_and_refused_patterns_raise(
    notifier_server: Any, token: Token
) -> None:
    from devtools.services import free_port

    async with LiveConfig(f"ws://127.0.0.1:{free_port()}/watch", token(), ["a.*"]) as down:
        with pytest.raises(TimeoutError):
            await down.ready(timeout=0.5)
        assert (down.source, down.connected, down.revision, down.get("a.x", 1)) == (None, False, None, 1)
    async with LiveConfig(ws_url(notifier_server), token(), ["not a key!"]) as refused:
        with pytest.raises(BadRequest):
            await refused.ready(timeout=TIMEOUT)


async def test_ready_raises_at_once_when_the_url_has_no_watch(client: TestClient[Any, Any], token: Token) -> None:
    from dynconfig_client.errors import NotFound

    api_url = str(client.make_url("/"))  # the API's own port: /watch lives behind the front door
    async with LiveConfig(api_url, token(), ["a.*"]) as live:
        with pytest.raises(NotFound, match="answered 404 to the WebSocket handshake: point the watch URL at"):
            await live.ready(timeout=TIMEOUT)
        assert (live.source, live.connected) == (None, False)
