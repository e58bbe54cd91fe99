"""ACLs across a key's lifecycle (SPEC §5): a deleted or expired key keeps its own ACL and creator, and
a past version is served only to a caller who may read it under both the ACL that governed that version
and today's.

The hole these tests pin down: re-creating a deleted or expired key used to drop its ACL, so a user with
write on the namespace could take the key over and read its previous owner's versions through history,
polling and watch replay. Each test collects what every channel served to each user into one dict and
compares it with the expected dict, so a failure shows every leak at once. Writes go through the real
API; polls and watches need a running notifier (it assigns revisions); each watch is a real WebSocket.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient, TestServer
from support import ADMIN, Api, assert_error, eventually

TIMEOUT = 10.0
Client = TestClient[Any, Any]
Token = Callable[..., str]
OPEN = {"read": ["*"], "write": []}  # the ACL of marker keys: anyone may read them


class LifecycleApi(Api):
    """Namespace ACLs, history and polls as a named user."""

    async def put_ns(self, ns: str, read: list[str], write: list[str]) -> None:
        await self.ok("PUT", f"/namespaces/{ns}", ADMIN, {"acls": {"read": read, "write": write}})

    async def history(self, key: str, user: str) -> tuple[int, list[tuple[int, str, Any]] | None]:
        """(status, [(version, event, value), ...] newest first, or None when not 200)."""
        status, body = await self.call("GET", f"/keys/{key}/history", user)
        if status != 200:
            assert_error(status, body)
            return status, None
        return status, [(v["version"], v["event"], v["value"]) for v in body["versions"]]

    async def poll(self, user: str, namespace: str, marker: str) -> list[dict[str, Any]]:
        """``GET /keys?since_version=0&namespace=…`` as ``user`` until the marker's event is in it."""
        body: Any = None

        async def with_marker() -> list[dict[str, Any]] | None:
            nonlocal body
            status, body = await self.call("GET", "/keys", user, params={"since_version": "0", "namespace": namespace})
            assert status == 200, body
            assert "reset" not in body and body["more"] is False, body
            events: list[dict[str, Any]] = body["events"]
            return events if any(e["key"] == marker for e in events) else None

        return await eventually(with_marker, TIMEOUT, lambda: f"marker {marker} in {user}'s poll: {body}")


def outcome(status: int, body: Any) -> tuple[int, str | None]:
    """(status, error phrase or None) of an answer; a 403 must carry the full error shape."""
    if status >= 400:
        assert_error(status, body)
        return status, body["error"]
    return status, None


def of_key(events: list[dict[str, Any]], key: str) -> list[tuple[str, int, Any]]:
    """(event, version, value) of the events of ``key``."""
    return [(e["event"], e["version"], e.get("value")) for e in events if e["key"] == key]


async def watch(
    server: TestServer, token: Token, user: str, pattern: str, marker: str, **subscribe: Any
) -> list[dict[str, Any]]:
    """Subscribe to ``pattern`` as ``user`` (with ``since_version``/``snapshot`` from ``subscribe``) and return
    the change events received up to and including the marker's. Events come in revision order, so
    anything the watcher was going to get from before the marker has arrived by then."""
    headers = {"Authorization": f"Bearer {token(user)}"}
    events: list[dict[str, Any]] = []
    deadline = time.monotonic() + TIMEOUT
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(server.make_url("/watch"), headers=headers, heartbeat=None) as ws:
            await ws.send_str(json.dumps({"subscribe": [pattern], **subscribe}))
            while True:
                msg = await asyncio.wait_for(ws.receive(), max(0.01, deadline - time.monotonic()))
                assert msg.type == WSMsgType.TEXT, (msg.type, msg.data, msg.extra)
                data = json.loads(msg.data)
                if data.get("event") == "subscribed":
                    continue
                assert data.get("event") in ("update", "delete", "expired"), data  # no reset, no error
                events.append(data)
                if data["key"] == marker:
                    return events


@pytest.fixture
def api(client: Client, token: Token) -> LifecycleApi:
    return LifecycleApi(client, token)


@pytest.fixture
def users(unique_prefix: str) -> tuple[str, str, str]:
    """alice, bob and carol, named apart from every other test's users."""
    return f"{unique_prefix}-alice", f"{unique_prefix}-bob", f"{unique_prefix}-carol"


async def test_deleted_key_keeps_its_acl_so_a_namespace_writer_cannot_take_it_over(
    api: LifecycleApi, notifier_server: TestServer, token: Token, unique_prefix: str, users: tuple[str, str, str]
) -> None:
    alice, bob, _ = users
    ns = unique_prefix
    key, marker = f"{ns}.k", f"{ns}.zz-marker"
    await api.put_ns(ns, [bob], [bob])
    await api.ok("PUT", f"/keys/{key}", ADMIN, {"value": "alice-secret-1", "acls": {"read": [alice], "write": [alice]}})
    await api.ok("PUT", f"/keys/{key}", alice, {"value": "alice-secret-2"})
    await api.ok("DELETE", f"/keys/{key}", alice)

    bob_put = outcome(*await api.call("PUT", f"/keys/{key}", bob, {"value": "bob-was-here"}))
    await api.ok("PUT", f"/keys/{marker}", ADMIN, {"value": "marker", "acls": OPEN})
    bob_history = await api.history(key, bob)
    bob_poll = of_key(await api.poll(bob, ns, marker), key)
    bob_replay = of_key(await watch(notifier_server, token, bob, f"{ns}.*", marker, since_version=0), key)

    alice_put, _ = await api.call("PUT", f"/keys/{key}", alice, {"value": "alice-again"})
    alice_get_status, alice_get = await api.call("GET", f"/keys/{key}", alice)
    observed = {
        "bob PUT of the deleted key": bob_put,
        "bob history": bob_history,
        "bob poll events of the key": bob_poll,
        "bob since_version watch events of the key": bob_replay,
        "alice PUT again is 2xx": 200 <= alice_put < 300,
        "alice GET": (alice_get_status, alice_get.get("value")),
        "alice history": await api.history(key, alice),
    }
    assert observed == {
        "bob PUT of the deleted key": (403, "Forbidden"),
        "bob history": (403, None),
        "bob poll events of the key": [],
        "bob since_version watch events of the key": [],
        "alice PUT again is 2xx": True,
        "alice GET": (200, "alice-again"),
        "alice history": (
            200,
            [
                (4, "update", "alice-again"),
                (3, "delete", None),
                (2, "update", "alice-secret-2"),
                (1, "update", "alice-secret-1"),
            ],
        ),
    }


async def test_expired_key_keeps_its_acl_so_a_write_only_namespace_user_cannot_take_it_over(
    api: LifecycleApi, unique_prefix: str, users: tuple[str, str, str]
) -> None:
    alice, _, carol = users
    ns = unique_prefix
    with_acls, without_acls = f"{ns}.with-acls", f"{ns}.without-acls"
    await api.put_ns(ns, [], [carol])
    own = {"read": [alice], "write": [alice]}
    for key in (with_acls, without_acls):
        await api.ok("PUT", f"/keys/{key}", ADMIN, {"value": "alice-ttl-secret", "ttl": 1, "acls": own})
    for key in (with_acls, without_acls):

        async def expired(key: str = key) -> bool:
            status = (await api.call("GET", f"/keys/{key}"))[0]
            assert status in (200, 404), f"{key} did not expire: {status}"
            return status == 404

        await eventually(expired, TIMEOUT, f"{key} expiring")

    takeover = {"value": "carol-was-here", "acls": {"read": [carol], "write": [carol]}}
    observed = {
        "carol PUT with her own acls": outcome(*await api.call("PUT", f"/keys/{with_acls}", carol, takeover)),
        "carol PUT without acls": outcome(*await api.call("PUT", f"/keys/{without_acls}", carol, {"value": "c"})),
        "carol history (with acls)": await api.history(with_acls, carol),
        "carol history (without acls)": await api.history(without_acls, carol),
        "admin GET (with acls)": (await api.call("GET", f"/keys/{with_acls}"))[0],
        "admin GET (without acls)": (await api.call("GET", f"/keys/{without_acls}"))[0],
    }
    assert observed == {
        "carol PUT with her own acls": (403, "Forbidden"),
        "carol PUT without acls": (403, "Forbidden"),
        "carol history (with acls)": (403, None),
        "carol history (without acls)": (403, None),
        "admin GET (with acls)": 404,
        "admin GET (without acls)": 404,
    }


async def test_each_version_is_served_under_the_key_acl_it_was_written_with(
    api: LifecycleApi, notifier_server: TestServer, token: Token, unique_prefix: str, users: tuple[str, str, str]
) -> None:
    alice, bob, _ = users
    ns = unique_prefix
    key, marker = f"{ns}.k", f"{ns}.zz-marker"
    await api.ok("PUT", f"/keys/{key}", ADMIN, {"value": "v1-secret", "acls": {"read": [alice], "write": [alice]}})
    await api.ok("PUT", f"/keys/{key}", ADMIN, {"value": "v2", "acls": {"read": [alice, bob], "write": [alice]}})
    await api.ok("PUT", f"/keys/{marker}", ADMIN, {"value": "marker", "acls": OPEN})

    async def bob_watch(**subscribe: Any) -> list[tuple[str, int, Any]]:
        return of_key(await watch(notifier_server, token, bob, f"{ns}.*", marker, **subscribe), key)

    bob_get_status, bob_get = await api.call("GET", f"/keys/{key}", bob)
    observed = {
        "bob GET": (bob_get_status, bob_get.get("value")),
        "bob history": await api.history(key, bob),
        "bob poll": of_key(await api.poll(bob, ns, marker), key),
        "bob since_version watch": await bob_watch(since_version=0),
        "bob snapshot watch": await bob_watch(snapshot=True),
        "alice history": await api.history(key, alice),
        "admin history": await api.history(key, ADMIN),
        "admin poll": of_key(await api.poll(ADMIN, ns, marker), key),
    }
    both = (200, [(2, "update", "v2"), (1, "update", "v1-secret")])
    assert observed == {
        "bob GET": (200, "v2"),
        "bob history": (200, [(2, "update", "v2")]),
        "bob poll": [("update", 2, "v2")],
        "bob since_version watch": [("update", 2, "v2")],
        "bob snapshot watch": [("update", 2, "v2")],
        "alice history": both,
        "admin history": both,
        "admin poll": [("update", 1, "v1-secret"), ("update", 2, "v2")],
    }


async def test_each_version_is_served_under_the_namespace_acl_that_governed_it(
    api: LifecycleApi, notifier_server: TestServer, unique_prefix: str, users: tuple[str, str, str]
) -> None:
    alice, bob, _ = users
    ns = unique_prefix
    key, marker = f"{ns}.k", f"{ns}.zz-marker"
    await api.put_ns(ns, [alice], [])
    await api.ok("PUT", f"/keys/{key}", ADMIN, {"value": "v1-ns-secret"})
    await api.put_ns(ns, [alice, bob], [])
    await api.ok("PUT", f"/keys/{key}", ADMIN, {"value": "v2"})
    await api.ok("PUT", f"/keys/{marker}", ADMIN, {"value": "marker", "acls": OPEN})

    observed = {
        "bob history": await api.history(key, bob),
        "bob poll": of_key(await api.poll(bob, ns, marker), key),
        "alice history": await api.history(key, alice),
    }
    assert observed == {
        "bob history": (200, [(2, "update", "v2")]),
        "bob poll": [("update", 2, "v2")],
        "alice history": (200, [(2, "update", "v2"), (1, "update", "v1-ns-secret")]),
    }


async def test_history_paging_skips_hidden_versions_and_ends(
    api: LifecycleApi, unique_prefix: str, users: tuple[str, str, str]
) -> None:
    alice, bob, _ = users
    key = f"{unique_prefix}.k"
    shared, private = {"read": [alice, bob], "write": [alice]}, {"read": [alice], "write": [alice]}
    await api.ok("PUT", f"/keys/{key}", ADMIN, {"value": "s1", "acls": shared})
    await api.ok("PUT", f"/keys/{key}", ADMIN, {"value": "s2-secret", "acls": private})
    await api.ok("PATCH", f"/keys/{key}", ADMIN, {"value": "s3-secret"})
    await api.ok("PUT", f"/keys/{key}", ADMIN, {"value": "s4", "acls": shared})
    await api.ok("PATCH", f"/keys/{key}", ADMIN, {"value": "s5"})

    async def pages(user: str, limit: int) -> list[tuple[int, Any]]:
        seen: list[tuple[int, Any]] = []
        cursor: str | None = None
        for _ in range(10):
            params = {"limit": str(limit)} | ({"cursor": cursor} if cursor is not None else {})
            status, body = await api.call("GET", f"/keys/{key}/history", user, params=params)
            assert status == 200, body
            assert len(body["versions"]) <= limit, body
            seen += [(v["version"], v["value"]) for v in body["versions"]]
            cursor = body.get("next")
            if cursor is None:
                return seen
        raise AssertionError(f"history paging as {user} did not end: {seen}")

    assert await pages(ADMIN, 2) == [(5, "s5"), (4, "s4"), (3, "s3-secret"), (2, "s2-secret"), (1, "s1")]
    assert await pages(bob, 1) == [(5, "s5"), (4, "s4"), (1, "s1")]
