"""``dynconfig_client.SyncLiveConfig`` from plain (non-async) test functions, against a real api_server
process and a real notifier process, with writes over stdlib HTTP."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from support import ADMIN, eventually_sync

from dynconfig_client.live import Change
from dynconfig_client.sync import SyncLiveConfig

TIMEOUT = 15.0
THREAD = "dynconfig-live"


def http(method: str, url: str, token: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Authorization", f"Bearer {token}")
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def live_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == THREAD]


def test_sync_facade_follows_changes_and_runs_callbacks_on_its_background_thread(
    spawn: Callable[..., Any], token: Callable[..., str], unique_prefix: str
) -> None:
    api, notifier = spawn("api_server"), spawn("notifier")
    key, other = f"{unique_prefix}.flag", f"{unique_prefix}.limit"
    admin = token(ADMIN)
    assert http("PUT", f"{api.url}/keys/{key}", admin, {"value": "true"})[0] == 201
    calls: list[tuple[Any, Any, str]] = []

    def record(change: Change) -> None:
        calls.append((change.old, change.new, threading.current_thread().name))

    with SyncLiveConfig(f"ws://127.0.0.1:{notifier.port}/watch", lambda: token(ADMIN), [f"{unique_prefix}.*"]) as live:
        assert live.is_ready and live.source == "server"
        eventually_sync(lambda: live.get(key) == "true", TIMEOUT, "the first value")
        assert live.get_bool(key) is True and live.connected and isinstance(live.revision, int)
        assert (thread := live_threads()) and thread[0] is not threading.current_thread()
        live.on_key(key, record)
        assert http("PATCH", f"{api.url}/keys/{key}", admin, {"value": "false"})[0] == 200
        assert http("PUT", f"{api.url}/keys/{other}", admin, {"value": "12"})[0] == 201
        eventually_sync(lambda: live.get_int(other) == 12, TIMEOUT, "the second write")
        assert calls == [("true", "false", THREAD)]
        assert live.get_bool(key) is False and live.snapshot() == {key: "false", other: "12"}
        assert live.seconds_since_last_event is not None and live.seconds_since_last_event < TIMEOUT
    assert not thread[0].is_alive() and not live_threads()


def test_sync_start_times_out_without_a_server_and_joins_its_thread() -> None:
    from devtools.services import free_port

    live = SyncLiveConfig(f"ws://127.0.0.1:{free_port()}/watch", "token", ["a.*"])
    assert live.get("a.x", "default") == "default" and not live.is_ready
    with pytest.raises(TimeoutError):
        live.start(timeout=0.5)
    assert not live_threads() and not live.connected
    live.close()  # harmless twice


def test_sync_start_prefers_the_server_over_a_stale_cache_and_falls_back_to_it(
    spawn: Callable[..., Any], token: Callable[..., str], unique_prefix: str, tmp_path: Any
) -> None:
    import os

    from devtools.services import free_port

    api, notifier = spawn("api_server"), spawn("notifier")
    key, admin = f"{unique_prefix}.flag", token(ADMIN)
    url = f"ws://127.0.0.1:{notifier.port}/watch"
    options: dict[str, Any] = {"cache_path": tmp_path / "config.cache", "cache_key": os.urandom(32)}
    assert http("PUT", f"{api.url}/keys/{key}", admin, {"value": "cached"})[0] == 201
    with SyncLiveConfig(url, admin, [key], **options) as first:
        eventually_sync(lambda: first.get(key) == "cached", TIMEOUT, "the first value")
    assert http("PATCH", f"{api.url}/keys/{key}", admin, {"value": "fresh"})[0] == 200

    with SyncLiveConfig(url, admin, [key], **options) as live:  # start() waits until ready
        assert (live.get(key), live.source) == ("fresh", "server")
    down = f"ws://127.0.0.1:{free_port()}/watch"
    with SyncLiveConfig(down, admin, [key], prefer_server_for=0.3, **options) as stale:
        assert (stale.get(key), stale.source, stale.connected) == ("fresh", "cache", False)
