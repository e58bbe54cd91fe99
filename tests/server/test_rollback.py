"""``POST /keys/{key}/rollback`` (SPEC §4): the value of version N written again as a new version, as a
PUT of that value by the caller — audited as ``rollback``, propagated like any write, ``If-Match``
honoured, and never a way to show an old value to someone who could not read it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiohttp
import aiopg
from aiohttp.test_utils import TestClient
from support import Api, WatchRecorder

from shared.security.crypto import Keyring
from shared.settings import Settings

Client = TestClient[Any, Any]
Token = Callable[..., str]


class RollbackApi(Api):
    async def rollback(self, key: str, version: Any, user: str = "admin-user", **headers: str) -> Any:
        return await self.call("POST", f"/keys/{key}/rollback", user, {"version": version}, **headers)


async def three_versions(api: RollbackApi, key: str, **put: Any) -> None:
    """v1 = "first", v2 = "second", v3 = a delete, v4 = "fourth"."""
    assert (await api.call("PUT", f"/keys/{key}", body={"value": "first", **put}))[0] == 201
    assert (await api.call("PATCH", f"/keys/{key}", body={"value": "second"}))[0] == 200
    assert (await api.call("DELETE", f"/keys/{key}"))[0] == 204
    assert (await api.call("PUT", f"/keys/{key}", body={"value": "fourth"}))[0] == 201


async def test_rollback_writes_the_old_value_as_a_new_version_audited_and_propagated(
    client: Client, token: Token, notifier_server: Any, pg: aiopg.Pool, unique_prefix: str
) -> None:
    api = RollbackApi(client, token)
    key = f"{unique_prefix}.flag"
    await three_versions(api, key)
    async with aiohttp.ClientSession() as session:
        watcher = await WatchRecorder.open(session, notifier_server.make_url("/watch"), token(), [key])
        status, body = await api.call("POST", f"/keys/{key}/rollback", body={"version": 1}, **{"X-Request-Id": "rb-1"})
        assert status == 200, body
        assert body["key"] == key and body["version"] == 5 and isinstance(body["revision"], int), body
        assert await watcher.holds(lambda: any(e["version"] == 5 for e in watcher.events), 5.0)
        event = next(e for e in watcher.events if e["version"] == 5)
        assert (event["event"], event["value"], event["revision"]) == ("update", "first", body["revision"])
        await watcher.ws.close()

    status, current = await api.call("GET", f"/keys/{key}")
    assert (status, current["value"], current["version"]) == (200, "first", 5)
    _, history = await api.call("GET", f"/keys/{key}/history")
    assert [(v["version"], v["event"], v["value"]) for v in history["versions"][:2]] == [
        (5, "update", "first"),
        (4, "update", "fourth"),
    ]
    async with pg.acquire() as conn, conn.cursor() as cur:
        await cur.execute("SELECT action, version, outcome, actor FROM audit_log WHERE request_id = 'rb-1'")
        assert await cur.fetchall() == [("rollback", 5, "ok", "admin-user")]


async def test_rollback_keeps_the_ttl_and_acls_as_a_put_of_the_value_would(
    client: Client, token: Token, unique_prefix: str
) -> None:
    api = RollbackApi(client, token)
    key = f"{unique_prefix}.ttl"
    acls = {"read": ["*"], "write": ["admin-user"]}
    assert (await api.call("PUT", f"/keys/{key}", body={"value": 1, "ttl": 3600, "acls": acls}))[0] == 201
    assert (await api.call("PATCH", f"/keys/{key}", body={"value": 2, "ttl": 7200}))[0] == 200
    assert (await api.rollback(key, 1))[0] == 200
    status, body = await api.call("GET", f"/keys/{key}")
    assert (status, body["value"], body["ttl"]) == (200, 1, 7200), body


async def test_rollback_of_a_deleted_key_brings_it_back(client: Client, token: Token, unique_prefix: str) -> None:
    api = RollbackApi(client, token)
    key = f"{unique_prefix}.gone"
    assert (await api.call("PUT", f"/keys/{key}", body={"value": {"a": [1, 2.5, None]}}))[0] == 201
    assert (await api.call("DELETE", f"/keys/{key}"))[0] == 204
    assert (await api.rollback(key, 1))[0] == 200
    status, body = await api.call("GET", f"/keys/{key}")
    assert (status, body["value"], body["version"]) == (200, {"a": [1, 2.5, None]}, 3)


async def test_rollback_refusals(client: Client, token: Token, unique_prefix: str) -> None:
    api = RollbackApi(client, token)
    key = f"{unique_prefix}.r"
    await three_versions(api, key)

    status, body = await api.rollback(key, 3)
    assert status == 400 and body["error"] == "Bad Request" and "version" in body["fields"], body
    assert "delete" in body["message"]
    status, body = await api.rollback(key, 99)
    assert (status, body["error"]) == (404, "Not Found"), body
    status, body = await api.rollback(f"{unique_prefix}.never", 1)
    assert (status, body["error"]) == (404, "Not Found"), body
    for bad in ("1", 0, -1, 1.5, None, True):
        status, body = await api.rollback(key, bad)
        assert status == 400 and "version" in body["fields"], (bad, body)
    status, body = await api.call("POST", f"/keys/{key}/rollback", body={"version": 1, "value": "x"})
    assert status == 400 and "value" in body["fields"], body
    status, body = await api.call("POST", f"/keys/{key}/rollback", body=None)
    assert status == 400, body

    status, body = await api.rollback(key, 1, **{"If-Match": '"3"'})
    assert (status, body["error"]) == (412, "Precondition Failed"), body
    status, body = await api.rollback(key, 1, **{"If-Match": '"4"'})
    assert (status, body["version"]) == (200, 5), body

    _, current = await api.call("GET", f"/keys/{key}")
    assert (current["version"], current["value"]) == (5, "first"), "nothing refused was written"


async def test_rollback_needs_write_now_and_read_of_that_version(
    client: Client, token: Token, unique_prefix: str
) -> None:
    """A writer who could not read version 1 when it was written may not roll back to it (that would
    publish a value they were never allowed to see); one who could, may; one without write may not;
    one who may not read the key learns nothing about its versions."""
    api = RollbackApi(client, token)
    key = f"{unique_prefix}.secret"
    writer, outsider = f"{unique_prefix}-writer", f"{unique_prefix}-outsider"
    acls_v1 = {"read": ["admin-user"], "write": [writer]}
    assert (await api.call("PUT", f"/keys/{key}", body={"value": "hidden", "acls": acls_v1}))[0] == 201
    acls_v2 = {"read": [writer], "write": [writer]}
    assert (await api.call("PUT", f"/keys/{key}", body={"value": "public", "acls": acls_v2}))[0] == 200

    status, body = await api.rollback(key, 1, writer)
    assert (status, body["error"]) == (403, "Forbidden"), body
    assert "version 1" in body["message"]
    status, body = await api.rollback(key, 2, writer)
    assert (status, body["version"]) == (200, 3), body

    messages = set()
    for version in (1, 2, 99):  # neither read nor write: the same 403 whatever the version
        status, body = await api.rollback(key, version, outsider)
        assert status == 403 and body["message"].startswith(f"You may not write key '{key}': "), body
        messages.add(body["message"])
    assert len(messages) == 1, messages
    status, body = await api.rollback(f"{unique_prefix}.missing", 1, outsider)
    assert status in (403, 404), body

    _, current = await api.call("GET", f"/keys/{key}")
    assert (current["version"], current["value"]) == (3, "public")


async def test_rollback_reseals_the_value_with_the_active_key(
    make_client: Any, settings: Settings, token: Token, pg: aiopg.Pool, unique_prefix: str
) -> None:
    """A version sealed by an old key comes back sealed by the active one. (The key is deleted at the
    end: a current value sealed by ``rb2`` would make every later process's keyring check fail.)"""
    key = f"{unique_prefix}.rotated"
    old = await make_client(settings)
    api = RollbackApi(old, token)
    assert (await api.call("PUT", f"/keys/{key}", body={"value": 41}))[0] == 201
    assert (await api.call("PUT", f"/keys/{key}", body={"value": 42}))[0] == 200
    await old.close()
    new_key = ("rb2", bytes(range(32)))
    rotated = settings.replace(encryption_keys=(new_key, *settings.encryption_keys))
    api = RollbackApi(await make_client(rotated), token)
    try:
        status, body = await api.rollback(key, 1)
        assert status == 200, body
        async with pg.acquire() as conn, conn.cursor() as cur:
            await cur.execute("SELECT value_enc FROM keys WHERE key = %s", (key,))
            (blob,) = await cur.fetchone()
        assert Keyring.key_id_of(bytes(blob)) == "rb2"
        assert (await api.call("GET", f"/keys/{key}"))[1]["value"] == 41
    finally:
        await api.call("DELETE", f"/keys/{key}")


async def test_other_methods_on_rollback_are_405_with_allow(client: Client, token: Token, unique_prefix: str) -> None:
    for method in ("GET", "PUT", "PATCH", "DELETE"):
        async with client.request(
            method,
            f"/keys/{unique_prefix}.k/rollback",
            json={"value": 1},
            headers={"Authorization": f"Bearer {token()}"},
        ) as resp:
            assert (resp.status, resp.headers.get("Allow")) == (405, "POST"), method
            assert (await resp.json())["error"] == "Method Not Allowed"


async def test_openapi_documents_every_route(client: Client) -> None:
    """Every route the API serves is in /openapi.json, with the same methods."""
    async with client.get("/openapi.json") as resp:
        spec = await resp.json()
    served: dict[str, set[str]] = {}
    for route in client.app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter", "")
        if route.method not in ("HEAD", "*"):  # "*": 405 for the methods a sub-resource has not
            served.setdefault(path, set()).add(route.method.lower())
    documented = {path: {m for m in ops if m != "parameters"} for path, ops in spec["paths"].items()}
    assert served == documented
