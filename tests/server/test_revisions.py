"""Revisions in answers (SPEC §4, step 6): every 2xx write answer and every GET carries the global
revision of that state, and a subscribe, snapshot or poll that starts after the answer includes it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from support import ADMIN, WatchRecorder

Client = TestClient[Any, Any]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_write_answers_and_gets_carry_the_revision_of_that_state(
    client: Client, token: Callable[..., str], unique_prefix: str
) -> None:
    auth = bearer(token(ADMIN))
    key = f"{unique_prefix}.rev"
    revisions = []
    for method, body, status in (
        ("PUT", {"value": 1}, 201),
        ("PUT", {"value": 2}, 200),
        ("PATCH", {"value": 3}, 200),
    ):
        async with client.request(method, f"/keys/{key}", json=body, headers=auth) as resp:
            answer = await resp.json()
            assert resp.status == status, answer
        assert isinstance(answer.get("revision"), int) and answer["revision"] >= 1, answer
        async with client.get(f"/keys/{key}", headers=auth) as resp:
            got = await resp.json()
        assert (got["version"], got["revision"]) == (answer["version"], answer["revision"]), (answer, got)
        revisions.append(answer["revision"])
    assert revisions == sorted(set(revisions)), revisions  # strictly increasing
    async with client.delete(f"/keys/{key}", headers=auth) as resp:
        assert resp.status == 204


async def test_a_snapshot_or_poll_started_after_the_answer_includes_the_write(
    client: Client, notifier_server: TestServer, token: Callable[..., str], unique_prefix: str
) -> None:
    """The reproduction of step 6: get the 201, subscribe with a snapshot at once — the snapshot must
    hold the write (not deliver it later as a change)."""
    auth = bearer(token(ADMIN))
    async with aiohttp.ClientSession() as session:
        for i in range(20):
            key = f"{unique_prefix}.k{i}"
            async with client.put(f"/keys/{key}", json={"value": i}, headers=auth) as resp:
                answer = await resp.json()
                assert resp.status == 201, answer
            revision = answer["revision"]
            watcher = await WatchRecorder.open(
                session, notifier_server.make_url("/watch"), token(ADMIN), [key], snapshot=True
            )
            try:
                assert watcher.subscribed["revision"] >= revision, (watcher.subscribed, answer)
                assert await watcher.holds(lambda w=watcher: len(w.events) >= 1, 5.0), "no snapshot event"
                first = watcher.events[0]
                assert (first["key"], first["version"], first["revision"]) == (key, 1, revision), first
                await asyncio.sleep(0.05)
                assert len(watcher.events) == 1, f"the write came again as a change: {watcher.events}"
            finally:
                await watcher.close()
            async with client.get(
                "/keys", params={"since_version": str(revision - 1), "namespace": unique_prefix}, headers=auth
            ) as resp:
                polled = await resp.json()
            assert any(e["revision"] == revision and e["key"] == key for e in polled["events"]), polled


async def test_the_client_reads_its_own_write_through_a_live_view(
    client: Client, notifier_server: TestServer, token: Callable[..., str], unique_prefix: str
) -> None:
    """``WriteResult.revision`` and ``LiveConfig.wait_for_revision``: after a write, the live view can be
    made to hold it before the caller reads."""
    from dynconfig_client import Client as ApiClient
    from dynconfig_client import LiveConfig

    base = str(client.server.make_url("")).rstrip("/")
    watch = str(notifier_server.make_url("/watch").with_scheme("ws"))
    key = f"{unique_prefix}.live"
    async with ApiClient(base, token(ADMIN)) as api, LiveConfig(watch, token(ADMIN), [f"{unique_prefix}.*"]) as live:
        await live.ready(timeout=10)
        for value in range(5):
            written = await api.put(key, value)
            assert isinstance(written.revision, int), written
            await live.wait_for_revision(written.revision, timeout=5)
            assert live.get(key) == value
            assert (live.revision or 0) >= written.revision
            got = await api.get(key)
            assert got.revision == written.revision
        with pytest.raises(TimeoutError):
            await live.wait_for_revision(written.revision + 10_000, timeout=0.2)
