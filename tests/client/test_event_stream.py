"""``dynconfig_client.EventStream`` against a real notifier (in-process, or a real process it kills with
SIGKILL and restarts), with writes through the real API app, on real Postgres and Redis.

Every stream subscribes to this test's ``unique_prefix`` only, so other tests' writes never show up.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from support import ADMIN, Api

import notifier.watch
from dynconfig_client.errors import BadRequest, Unauthorized
from dynconfig_client.stream import EventStream, refresh_delay, token_expiry

TIMEOUT = 15.0
Token = Callable[..., str]


def ws_url(server: Any) -> str:
    return str(server.make_url("/watch").with_scheme("ws"))


async def take(stream: EventStream, count: int, timeout: float = TIMEOUT) -> list[dict[str, Any]]:
    """The next ``count`` events of ``stream``."""
    events: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        async for event in stream:
            events.append(event)
            if len(events) == count:
                break
    return events


def summary(events: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(e["event"], e["key"], e["version"], e.get("value")) for e in events]


def assert_increasing(events: list[dict[str, Any]]) -> None:
    revisions = [e["revision"] for e in events]
    assert revisions == sorted(set(revisions)), revisions


def test_token_expiry_is_read_from_the_jwt_and_refresh_is_planned_before_it(token: Token) -> None:
    exp = token_expiry(token(ADMIN, exp_in=600))
    assert exp is not None and abs(exp - (time.time() + 600)) < 2
    assert token_expiry("not-a-jwt") is None
    assert refresh_delay(1000.0, 0.0) == 940.0  # long-lived: 60 s before exp
    assert refresh_delay(10.0, 0.0) == 5.0  # short-lived: at half-life
    assert refresh_delay(0.0, 5.0) == 1.0  # already expired: soon, but never a busy loop


async def test_snapshot_first_then_live_events_in_revision_order(
    client: TestClient[Any, Any], notifier_server: Any, token: Token, unique_prefix: str
) -> None:
    api = Api(client, token)
    a, b = f"{unique_prefix}.a", f"{unique_prefix}.b"
    await api.write("PUT", a, 1)
    await api.write("PUT", b, {"x": [1]})
    async with EventStream(ws_url(notifier_server), token(), [f"{unique_prefix}.*"], snapshot=True, markers=True) as s:
        first = await take(s, 3)  # the synced marker comes after the snapshot (or before not-yet-relayed writes)
        snap = [e for e in first if e["event"] != "synced"]
        assert summary(snap) == [("update", a, 1, 1), ("update", b, 1, {"x": [1]})]
        assert [e["event"] for e in first].count("synced") == 1
        assert s.connected and s.last_message_at is not None
        await api.write("PATCH", a, 2)
        await api.write("DELETE", b)
        live = await take(s, 2)
        assert summary(live) == [("update", a, 2, 2), ("delete", b, 2, None)]
        assert_increasing(snap[:2] + live)
        assert s.revision == live[-1]["revision"]
    assert not s.connected


async def test_since_version_replays_exactly_the_later_changes(
    client: TestClient[Any, Any], notifier_server: Any, token: Token, unique_prefix: str
) -> None:
    api = Api(client, token)
    key = f"{unique_prefix}.k"
    for value in range(3):
        await api.write("PUT", key, value)
    async with EventStream(ws_url(notifier_server), token(), [key], since_version=0) as first:
        replayed = await take(first, 3)
    assert [e["version"] for e in replayed] == [1, 2, 3]
    async with EventStream(ws_url(notifier_server), token(), [key], since_version=replayed[1]["revision"]) as second:
        await api.write("PATCH", key, "after")
        events = await take(second, 2)
    assert summary(events) == [("update", key, 3, 2), ("update", key, 4, "after")]


async def test_invalid_pattern_ends_the_stream_with_bad_request(notifier_server: Any, token: Token) -> None:
    stream = EventStream(ws_url(notifier_server), token(), ["not a key!"])
    with pytest.raises(BadRequest) as caught:
        await take(stream, 1)
    assert caught.value.error == "Bad Request" and "pattern" in caught.value.message
    await stream.close()


async def test_a_fixed_token_the_server_refuses_ends_the_stream_with_unauthorized(
    notifier_server: Any, token: Token
) -> None:
    # A string token cannot be refreshed, so retrying after 4401 would loop for ever.
    stream = EventStream(ws_url(notifier_server), token(exp_in=-120), ["x.*"])
    with pytest.raises(Unauthorized) as caught:
        await asyncio.wait_for(take(stream, 1), timeout=10)
    assert caught.value.status == 401 and "expired" in caught.value.message
    assert stream.connects == 1
    await stream.close()


async def test_resume_after_notifier_sigkill_and_restart_has_no_duplicates_and_no_gaps(
    client: TestClient[Any, Any], spawn: Callable[..., Any], token: Token, unique_prefix: str
) -> None:
    api = Api(client, token)
    keys = [f"{unique_prefix}.a", f"{unique_prefix}.b"]
    proc = spawn("notifier")
    expected: list[tuple[Any, ...]] = []

    async def write(n: int) -> None:
        key = keys[n % 2]
        await api.write("PUT", key, n)
        expected.append(("update", key, n // 2 + 1, n))

    url = f"ws://127.0.0.1:{proc.port}/watch"
    async with EventStream(url, token(), [f"{unique_prefix}.*"], snapshot=True, markers=True, backoff_max=1.0) as s:
        assert (await take(s, 1, timeout=20))[0]["event"] == "synced"
        for n in range(6):
            await write(n)
        got = await take(s, 6)
        proc.popen.kill()
        await asyncio.to_thread(proc.popen.wait)
        for n in range(6, 12):  # committed while no notifier runs
            await write(n)
        restarted = await asyncio.to_thread(spawn, "notifier", port=proc.port)
        for n in range(12, 18):
            await write(n)
        rest = [e for e in await take(s, 13, timeout=30) if e["event"] != "synced"]
        got += rest[:12]
        assert summary(got) == expected
        assert_increasing(got)
        assert s.connects == 2
        restarted.popen.kill()


async def test_token_is_refreshed_in_band_so_the_connection_outlives_it(
    client: TestClient[Any, Any],
    notifier_server: Any,
    token: Token,
    unique_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(notifier.watch, "LEEWAY_SECONDS", 0)  # the server closes right at exp
    issued: list[str] = []

    def source() -> str:
        issued.append(token(ADMIN, exp_in=3))
        return issued[-1]

    key = f"{unique_prefix}.k"
    async with EventStream(ws_url(notifier_server), source, [key], snapshot=True, markers=True) as s:
        await take(s, 1)
        first_exp = token_expiry(issued[0])
        assert first_exp is not None
        await asyncio.sleep(first_exp - time.time() + 1.5)  # well past the first token's exp
        await Api(client, token).write("PUT", key, "still here")
        (event,) = await take(s, 1)
        assert event["value"] == "still here"
        assert s.connects == 1 and s.last_close_code is None
        assert len(issued) >= 3  # one to connect, then fresh ones sent in-band


async def test_reconnects_with_a_fresh_token_after_4401(
    client: TestClient[Any, Any],
    notifier_server: Any,
    token: Token,
    unique_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="dynconfig_client.stream")
    monkeypatch.setattr(notifier.watch, "LEEWAY_SECONDS", 0)
    issued: list[str] = []

    def source() -> str:
        # The first token expired 2 s ago: still accepted by the verifier's leeway, but the server
        # closes the socket at once with 4401. Later calls return good tokens.
        issued.append(token(ADMIN, exp_in=-2 if not issued else 3600))
        return issued[-1]

    key = f"{unique_prefix}.k"
    async with EventStream(ws_url(notifier_server), source, [key], snapshot=True, markers=True) as s:
        assert (await take(s, 1))[0]["event"] == "synced"
        await Api(client, token).write("PUT", key, 1)
        (event,) = await take(s, 1)
        assert (event["key"], event["value"]) == (key, 1)
        assert s.connects == 2 and s.last_close_code == 4401
        assert len(issued) == 2
    # The server's reason is kept and logged beside the code.
    assert s.last_close_reason == "unauthorized: token expired"
    assert "closed the watch (4401: unauthorized: token expired)" in caplog.text, caplog.text
