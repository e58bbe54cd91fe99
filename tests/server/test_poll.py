"""The poll fallback ``GET /keys?since_version=R[&namespace=][&limit=]`` (SPEC §4, §6).

A running notifier (``notifier_server``) assigns revisions. The database is shared, so every poll is
narrowed to this test's namespace or filtered to its keys.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import aiohttp
import aiopg
import pytest
from aiohttp.test_utils import TestClient
from support import ADMIN, eventually, expect_error

from shared.timeutil import parse_rfc3339

Client = TestClient[Any, Any]
EVENT_FIELDS = {
    "update": {"event", "key", "version", "revision", "value", "lastModified"},
    "delete": {"event", "key", "version", "revision", "lastModified"},
    "expired": {"event", "key", "version", "revision", "lastModified"},
}


@pytest.fixture
def admin(token: Callable[..., str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {token()}"}


async def poll(
    client: Client, headers: dict[str, str], since: int | str, namespace: str | None = None, limit: int | None = None
) -> dict[str, Any]:
    params: dict[str, str] = {"since_version": str(since)}
    if namespace is not None:
        params["namespace"] = namespace
    if limit is not None:
        params["limit"] = str(limit)
    resp = await client.get("/keys", params=params, headers=headers)
    text = await resp.text()
    assert resp.status == 200, text
    assert resp.content_type == "application/json"
    body: dict[str, Any] = json.loads(text)
    return body


def assert_poll_shape(body: dict[str, Any]) -> None:
    assert set(body) == {"events", "revision", "more"}, body
    assert isinstance(body["events"], list) and isinstance(body["more"], bool), body
    assert isinstance(body["revision"], int) and not isinstance(body["revision"], bool), body
    revisions = [e["revision"] for e in body["events"]]
    assert all(a < b for a, b in zip(revisions, revisions[1:])), revisions
    for event in body["events"]:
        assert set(event) == EVENT_FIELDS[event["event"]], event
        parse_rfc3339(event["lastModified"])
    if revisions:
        assert body["revision"] >= revisions[-1], body


async def head_of(client: Client, headers: dict[str, str], namespace: str) -> int:
    """The current revision as the poll reports it (nothing of ``namespace`` exists yet)."""
    body = await poll(client, headers, 0, namespace=namespace)
    assert_poll_shape(body)
    assert body["events"] == [] and body["more"] is False, body
    revision: int = body["revision"]
    return revision


async def poll_until(
    client: Client, headers: dict[str, str], since: int, namespace: str, count: int, timeout: float = 10.0
) -> dict[str, Any]:
    """Poll (one page) until ``count`` events are there, i.e. the relay has caught up."""
    body: dict[str, Any] = {}

    async def enough() -> bool:
        nonlocal body
        body = await poll(client, headers, since, namespace=namespace)
        return len(body["events"]) >= count

    await eventually(enough, timeout, lambda: f"{count} events in the poll: {body}", interval=0.1)
    assert len(body["events"]) == count, body
    return body


async def poll_all_pages(
    client: Client, headers: dict[str, str], since: int, namespace: str, limit: int
) -> list[dict[str, Any]]:
    """Follow ``revision`` while ``more``; every page checked."""
    events: list[dict[str, Any]] = []
    for _ in range(100):
        body = await poll(client, headers, since, namespace=namespace, limit=limit)
        assert_poll_shape(body)
        assert len(body["events"]) <= limit, body
        assert body["revision"] >= since
        events.extend(body["events"])
        since = body["revision"]
        if not body["more"]:
            return events
    raise AssertionError("paging did not end")


async def write(client: Client, method: str, key: str, headers: dict[str, str], **body: Any) -> None:
    resp = await client.request(method, f"/keys/{key}", json=body if method != "DELETE" else None, headers=headers)
    assert resp.status in {200, 201, 204}, (method, key, await resp.text())


# --- shape and order ------------------------------------------------------------------------------


async def test_poll_returns_events_after_the_revision_in_order_shaped_like_watch_events(
    client: Client, notifier_server: Any, token: Callable[..., str], admin: dict[str, str], unique_prefix: str
) -> None:
    p = unique_prefix
    start = await head_of(client, admin, p)
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(notifier_server.make_url("/watch"), headers=admin, heartbeat=None)
        await ws.send_json({"subscribe": [f"{p}.*", f"{p}/*"]})
        assert (await asyncio.wait_for(ws.receive_json(), 10))["event"] == "subscribed"
        await write(client, "PUT", f"{p}.a", admin, value={"x": 1}, ttl=3600)
        await write(client, "PATCH", f"{p}.a", admin, value=[1, "two"])
        await write(client, "PUT", f"{p}.b", admin, value=None)
        await write(client, "DELETE", f"{p}.a", admin)
        await write(client, "PUT", f"{p}/c/d", admin, value="s")
        watched = [await asyncio.wait_for(ws.receive_json(), 10) for _ in range(5)]
        await ws.close()

    body = await poll_until(client, admin, start, p, 5)
    assert_poll_shape(body)
    assert body["more"] is False
    assert body["events"] == watched  # one encoder: identical to what a watcher gets
    assert [(e["event"], e["key"], e["version"], e.get("value")) for e in body["events"]] == [
        ("update", f"{p}.a", 1, {"x": 1}),
        ("update", f"{p}.a", 2, [1, "two"]),
        ("update", f"{p}.b", 1, None),
        ("delete", f"{p}.a", 3, None),
        ("update", f"{p}/c/d", 1, "s"),
    ]
    assert all(e["revision"] > start for e in body["events"])

    later = await poll(client, admin, body["events"][1]["revision"], namespace=p)
    assert later["events"] == body["events"][2:]
    caught_up = await poll(client, admin, body["revision"], namespace=p)
    assert_poll_shape(caught_up)
    assert (caught_up["events"], caught_up["more"]) == ([], False)
    assert caught_up["revision"] >= body["revision"]


async def test_poll_namespace_filter_matches_dot_and_slash_children_only(
    client: Client, notifier_server: Any, admin: dict[str, str], unique_prefix: str
) -> None:
    p = unique_prefix
    start = await head_of(client, admin, p)
    for key in (f"{p}.a.x", f"{p}.b.y", f"{p}/c/z", f"{p}a.q", f"{p}.a"):
        await write(client, "PUT", key, admin, value=key)
    whole = await poll_until(client, admin, start, p, 4)
    assert [e["key"] for e in whole["events"]] == [f"{p}.a.x", f"{p}.b.y", f"{p}/c/z", f"{p}.a"]
    only_a = await poll(client, admin, start, namespace=f"{p}.a")
    assert_poll_shape(only_a)
    assert [e["key"] for e in only_a["events"]] == [f"{p}.a.x"]
    everything = await poll(client, admin, start)
    assert_poll_shape(everything)
    mine = [e["key"] for e in everything["events"] if e["key"].startswith(p)]
    assert mine == [f"{p}.a.x", f"{p}.b.y", f"{p}/c/z", f"{p}a.q", f"{p}.a"]


async def test_poll_limit_pages_with_more_until_every_event_was_seen_once(
    client: Client, notifier_server: Any, admin: dict[str, str], unique_prefix: str
) -> None:
    p = unique_prefix
    start = await head_of(client, admin, p)
    for i in range(7):
        await write(client, "PUT", f"{p}.k{i % 3}", admin, value=i)
    full = (await poll_until(client, admin, start, p, 7))["events"]

    first = await poll(client, admin, start, namespace=p, limit=3)
    assert_poll_shape(first)
    assert first["events"] == full[:3] and first["more"] is True, first
    assert first["revision"] == full[2]["revision"]

    for limit in (1, 2, 3, 7):
        assert await poll_all_pages(client, admin, start, p, limit) == full
    revisions = [e["revision"] for e in full]
    assert len(set(revisions)) == 7


@pytest.mark.parametrize("limit", ["0", "1001", "-1", "x"])
async def test_poll_limit_out_of_range_is_400(client: Client, admin: dict[str, str], limit: str) -> None:
    resp = await client.get("/keys", params={"since_version": "0", "limit": limit}, headers=admin)
    await expect_error(resp, 400, "Bad Request")


# --- access control -------------------------------------------------------------------------------


async def test_poll_leaves_out_events_of_keys_the_reader_may_not_read(
    client: Client, notifier_server: Any, token: Callable[..., str], admin: dict[str, str], unique_prefix: str
) -> None:
    p = unique_prefix
    reader_name = f"reader-{p}"
    reader = {"Authorization": f"Bearer {token(reader_name)}"}
    start = await head_of(client, admin, p)
    resp = await client.put(
        f"/namespaces/{p}.shared", json={"acls": {"read": [reader_name], "write": []}}, headers=admin
    )
    assert resp.status in {200, 201}, await resp.text()
    open_acl = {"read": ["*"], "write": [ADMIN]}
    secret_acl = {"read": [ADMIN], "write": [ADMIN]}
    await write(client, "PUT", f"{p}.open", admin, value=1, acls=open_acl)
    await write(client, "PUT", f"{p}.secret", admin, value="s1", acls=secret_acl)
    await write(client, "PUT", f"{p}.mine", admin, value="m1")  # no ACL anywhere: creator and admins only
    await write(client, "PUT", f"{p}.shared.k", admin, value="n1")  # governed by the namespace ACL
    await write(client, "PATCH", f"{p}.secret", admin, value="s2")
    await write(client, "PATCH", f"{p}.open", admin, value=2)
    await write(client, "DELETE", f"{p}.secret", admin)
    await write(client, "PATCH", f"{p}.shared.k", admin, value="n2")

    everything = (await poll_until(client, admin, start, p, 8))["events"]
    visible = [e for e in everything if e["key"] in {f"{p}.open", f"{p}.shared.k"}]
    body = await poll(client, reader, start, namespace=p)
    assert_poll_shape(body)
    assert body["events"] == visible
    assert [(e["key"], e["version"]) for e in visible] == [
        (f"{p}.open", 1),
        (f"{p}.shared.k", 1),
        (f"{p}.open", 2),
        (f"{p}.shared.k", 2),
    ]
    assert body["more"] is False
    for limit in (1, 2):
        assert await poll_all_pages(client, reader, start, p, limit) == visible
    unfiltered = await poll(client, reader, start)
    assert not [e for e in unfiltered["events"] if e["key"] in {f"{p}.secret", f"{p}.mine"}]


async def test_poll_needs_a_token(client: Client) -> None:
    resp = await client.get("/keys", params={"since_version": "0"})
    await expect_error(resp, 401, "Unauthorized")


# --- bad input and reset --------------------------------------------------------------------------


@pytest.mark.parametrize("since", ["-1", "abc", "1.5", "", "1e3", "+1", " 1", "0x10", "\u00b2"])
async def test_poll_since_version_not_a_whole_number_is_400(client: Client, admin: dict[str, str], since: str) -> None:
    resp = await client.get("/keys", params={"since_version": since}, headers=admin)
    await expect_error(resp, 400, "Bad Request")


async def test_poll_from_before_the_retained_log_answers_reset_with_the_head(
    client: Client, notifier_server: Any, pg: aiopg.Pool, admin: dict[str, str], unique_prefix: str
) -> None:
    p = unique_prefix
    start = await head_of(client, admin, p)
    await write(client, "PUT", f"{p}.k", admin, value=1)
    await write(client, "PATCH", f"{p}.k", admin, value=2)
    relayed = (await poll_until(client, admin, start, p, 2))["events"]
    async with pg.acquire() as conn, conn.cursor() as cur:
        await cur.execute("SELECT head, pruned_through FROM relay_state")
        head, old_pruned = await cur.fetchone()
        assert head >= relayed[-1]["revision"]
        await cur.execute("UPDATE relay_state SET pruned_through = %s", (head,))
        try:
            resp = await client.get("/keys", params={"since_version": str(head - 1), "namespace": p}, headers=admin)
            assert resp.status == 200, await resp.text()
            body = await resp.json()
            await cur.execute("SELECT head FROM relay_state")
            (head_after,) = await cur.fetchone()
            assert set(body) - {"more"} == {"events", "revision", "reset"}, body
            assert body["events"] == [] and body["reset"] is True, body
            assert head <= body["revision"] <= head_after, (head, body)
            assert body.get("more", False) is False

            at_pruned = await poll(client, admin, head, namespace=p)  # not older than the log: no reset
            assert "reset" not in at_pruned and at_pruned["events"] == [], at_pruned
        finally:
            await cur.execute(
                "UPDATE relay_state SET pruned_through = %s WHERE pruned_through = %s", (old_pruned, head)
            )
    again = await poll(client, admin, start, namespace=p)
    assert "reset" not in again and again["events"] == relayed
