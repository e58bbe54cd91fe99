"""Group commit (step 6): concurrent writes share a transaction, yet each keeps its own outcome — a 412
or a 403 for one never fails its neighbours — and writes to one key stay in order, with revisions
that follow commit order."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp.test_utils import TestClient, TestServer
from support import WatchRecorder

ADMIN = "admin-user"
Client = TestClient[Any, Any]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_concurrent_writes_keep_their_own_outcomes_and_their_order(
    client: Client, notifier_server: TestServer, token: Callable[..., str], unique_prefix: str
) -> None:
    admin = bearer(token(ADMIN))
    stranger = bearer(token(f"{unique_prefix}-stranger"))
    hot = f"{unique_prefix}.hot"
    locked = f"{unique_prefix}.locked"
    assert (await client.put(f"/keys/{hot}", json={"value": 0}, headers=admin)).status == 201
    body = {"value": 0, "acls": {"read": [], "write": []}}
    assert (await client.put(f"/keys/{locked}", json=body, headers=admin)).status == 201

    async def call(method: str, key: str, headers: dict[str, str], **extra: Any) -> tuple[str, int, Any]:
        async with client.request(method, f"/keys/{key}", headers=headers, **extra) as resp:
            return key, resp.status, await resp.json() if resp.status != 204 else None

    async with aiohttp.ClientSession() as session:
        watcher = await WatchRecorder.open(
            session, notifier_server.make_url("/watch"), token(ADMIN), [f"{unique_prefix}.*"]
        )
        calls = []
        for i in range(20):
            calls.append(call("PUT", f"{unique_prefix}.new{i}", admin, json={"value": i}))
            calls.append(call("PATCH", hot, admin, json={"value": i + 1}))
            calls.append(call("PUT", f"{unique_prefix}.cond{i}", {**admin, "If-Match": '"7"'}, json={"value": i}))
            calls.append(call("PATCH", locked, stranger, json={"value": i}))
        results = await asyncio.gather(*calls)
        by_kind: dict[str, list[tuple[str, int, Any]]] = {"new": [], "hot": [], "cond": [], "locked": []}
        for key, status, answer in results:
            kind = key.rsplit(".", 1)[1].rstrip("0123456789")
            by_kind[kind].append((key, status, answer))
        assert {status for _, status, _ in by_kind["new"]} == {201}, by_kind["new"]
        assert {status for _, status, _ in by_kind["hot"]} == {200}, by_kind["hot"]
        assert {status for _, status, _ in by_kind["cond"]} == {412}, by_kind["cond"]
        assert {status for _, status, _ in by_kind["locked"]} == {403}, by_kind["locked"]
        # the hot key: 20 patches, versions 2..21, each its own; revisions follow versions
        hot_answers = sorted((a["version"], a["revision"]) for _, _, a in by_kind["hot"])
        assert [v for v, _ in hot_answers] == list(range(2, 22)), hot_answers
        assert [r for _, r in hot_answers] == sorted(r for _, r in hot_answers)
        final = await (await client.get(f"/keys/{hot}", headers=admin)).json()
        assert final["version"] == 21
        # nothing of the refused writes exists
        for i in range(20):
            assert (await client.get(f"/keys/{unique_prefix}.cond{i}", headers=admin)).status == 404
        assert (await (await client.get(f"/keys/{locked}", headers=admin)).json())["version"] == 1
        # the stream: every accepted change once, in revision order, the hot key's versions in order
        assert await watcher.holds(lambda: len(watcher.events) >= 40, 10), len(watcher.events)
        await asyncio.sleep(0.2)
        await watcher.close()
    revisions = [e["revision"] for e in watcher.events]
    assert revisions == sorted(set(revisions)) and len(revisions) == 40, revisions
    assert [e["version"] for e in watcher.events if e["key"] == hot] == list(range(2, 22))
