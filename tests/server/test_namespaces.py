"""``/namespaces/{ns}`` (SPEC §4, §5): namespace ACLs that keys without their own ACL inherit."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiopg
import pytest
from aiohttp.test_utils import TestClient
from support import ADMIN, assert_error

Client = TestClient[Any, Any]
Token = Callable[..., str]


@pytest.fixture
def auth(token: Token) -> Callable[..., dict[str, str]]:
    def make(user: str = ADMIN) -> dict[str, str]:
        return {"Authorization": f"Bearer {token(user)}"}

    return make


async def call(client: Client, method: str, path: str, headers: dict[str, str], **kwargs: Any) -> tuple[int, Any]:
    async with client.request(method, path, headers=headers, **kwargs) as resp:
        if resp.status == 204:
            assert await resp.read() == b""
            return 204, None
        assert resp.content_type == "application/json"
        return resp.status, await resp.json()


ACLS = {"read": ["*"], "write": ["service:*", "deployer"]}


async def test_admin_put_creates_then_replaces(client: Client, auth: Any, unique_prefix: str, pg: aiopg.Pool) -> None:
    ns = f"{unique_prefix}.app"
    status, body = await call(client, "PUT", f"/namespaces/{ns}", auth(), json={"acls": ACLS})
    assert status == 201, body
    assert body["namespace"] == ns and body["acls"] == ACLS
    replacement = {"read": ["reader"], "write": []}
    status, body = await call(client, "PUT", f"/namespaces/{ns}", auth(), json={"acls": replacement})
    assert status == 200, body
    assert body["namespace"] == ns and body["acls"] == replacement
    async with pg.acquire() as conn, conn.cursor() as cur:
        await cur.execute("SELECT acl_read, acl_write FROM namespaces WHERE namespace = %s", (ns,))
        assert await cur.fetchall() == [(["reader"], [])]


async def test_any_authenticated_user_may_get_a_namespace_acl(client: Client, auth: Any, unique_prefix: str) -> None:
    ns = f"{unique_prefix}.shown"
    await call(client, "PUT", f"/namespaces/{ns}", auth(), json={"acls": ACLS})
    for user in (ADMIN, f"{unique_prefix}-alice", "service:payment-api"):
        status, body = await call(client, "GET", f"/namespaces/{ns}", auth(user))
        assert status == 200, (user, body)
        assert body["namespace"] == ns and body["acls"] == ACLS


async def test_get_of_a_namespace_without_acl_is_404(client: Client, auth: Any, unique_prefix: str) -> None:
    status, body = await call(client, "GET", f"/namespaces/{unique_prefix}.none", auth())
    assert_error(status, body, 404, "Not Found")


async def test_delete_removes_the_acl(client: Client, auth: Any, unique_prefix: str) -> None:
    ns = f"{unique_prefix}.temp"
    await call(client, "PUT", f"/namespaces/{ns}", auth(), json={"acls": ACLS})
    assert await call(client, "DELETE", f"/namespaces/{ns}", auth()) == (204, None)
    assert_error(*await call(client, "GET", f"/namespaces/{ns}", auth()), 404, "Not Found")
    assert_error(*await call(client, "DELETE", f"/namespaces/{ns}", auth()), 404, "Not Found")


async def test_non_admin_may_not_put_a_namespace_acl(client: Client, auth: Any, unique_prefix: str) -> None:
    ns = f"{unique_prefix}.guarded"
    status, body = await call(client, "PUT", f"/namespaces/{ns}", auth("service:*"), json={"acls": ACLS})
    assert_error(status, body, 403, "Forbidden")
    assert_error(*await call(client, "GET", f"/namespaces/{ns}", auth()), 404, "Not Found")


async def test_non_admin_may_not_change_an_existing_namespace_acl(
    client: Client, auth: Any, unique_prefix: str
) -> None:
    ns = f"{unique_prefix}.guarded2"
    user = f"{unique_prefix}-alice"
    await call(client, "PUT", f"/namespaces/{ns}", auth(), json={"acls": {"read": [], "write": [user]}})
    status, body = await call(client, "PUT", f"/namespaces/{ns}", auth(user), json={"acls": ACLS})
    assert_error(status, body, 403, "Forbidden")
    assert_error(*await call(client, "DELETE", f"/namespaces/{ns}", auth(user)), 403, "Forbidden")
    status, body = await call(client, "GET", f"/namespaces/{ns}", auth())
    assert status == 200 and body["acls"] == {"read": [], "write": [user]}, body


@pytest.mark.parametrize("name", ["{u}.", "{u}..x", "{u}//x", "-{u}", "{u} x", "{u}$x", "{u}/", "x" * 257])
async def test_invalid_namespace_name_is_400(client: Client, auth: Any, unique_prefix: str, name: str) -> None:
    ns = name.format(u=unique_prefix)
    for method in ("PUT", "GET", "DELETE"):
        status, body = await call(client, method, f"/namespaces/{ns}", auth(), json={"acls": ACLS})
        assert_error(status, body, 400, "Bad Request")


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"acl": ACLS},
        {"acls": ACLS, "extra": 1},
        {"acls": None},
        {"acls": ["*"]},
        {"acls": {"read": ["*"], "write": [], "admin": ["x"]}},
        {"acls": {"read": "*", "write": []}},
        {"acls": {"read": [1], "write": []}},
        {"acls": {"read": [""], "write": []}},
        {"acls": {"read": ["has space"], "write": []}},
        {"acls": {"read": ["a*b"], "write": []}},
        ["acls"],
        "acls",
    ],
)
async def test_invalid_body_is_400(client: Client, auth: Any, unique_prefix: str, payload: Any) -> None:
    ns = f"{unique_prefix}.body"
    status, body = await call(client, "PUT", f"/namespaces/{ns}", auth(), json=payload)
    assert_error(status, body, 400, "Bad Request")
    assert_error(*await call(client, "GET", f"/namespaces/{ns}", auth()), 404, "Not Found")


@pytest.mark.parametrize("raw", [b"{", b'{"acls": ', b"not json", b""])
async def test_malformed_json_is_400(client: Client, auth: Any, unique_prefix: str, raw: bytes) -> None:
    headers = {**auth(), "Content-Type": "application/json"}
    status, body = await call(client, "PUT", f"/namespaces/{unique_prefix}.raw", headers, data=raw)
    assert_error(status, body, 400, "Bad Request")


@pytest.mark.parametrize("method", ["PUT", "GET", "DELETE"])
async def test_no_token_is_401(client: Client, unique_prefix: str, method: str) -> None:
    status, body = await call(client, method, f"/namespaces/{unique_prefix}.anon", {}, json={"acls": ACLS})
    assert_error(status, body, 401, "Unauthorized")


async def test_slash_namespace_governs_keys_below_it(client: Client, auth: Any, unique_prefix: str) -> None:
    ns = f"{unique_prefix}/team/app"
    key = f"{ns}/key"
    alice, bob = f"{unique_prefix}-alice", f"{unique_prefix}-bob"
    status, body = await call(
        client, "PUT", f"/namespaces/{ns}", auth(), json={"acls": {"read": [bob], "write": [alice]}}
    )
    assert status == 201 and body["namespace"] == ns, body
    status, body = await call(client, "GET", f"/namespaces/{ns}", auth(bob))
    assert status == 200 and body["namespace"] == ns, body
    status, body = await call(client, "PUT", f"/keys/{key}", auth(alice), json={"value": "on"})
    assert status == 201, body
    status, body = await call(client, "GET", f"/keys/{key}", auth(bob))
    assert status == 200 and body["value"] == "on", body
    assert_error(*await call(client, "GET", f"/keys/{key}", auth(alice)), 403, "Forbidden")
    # A sibling outside the namespace is not governed by it.
    assert_error(
        *await call(client, "PUT", f"/keys/{unique_prefix}/team/other/key", auth(alice), json={"value": 1}),
        403,
        "Forbidden",
    )


async def test_dot_and_slash_namespaces_are_distinct(client: Client, auth: Any, unique_prefix: str) -> None:
    alice = f"{unique_prefix}-alice"
    await call(
        client, "PUT", f"/namespaces/{unique_prefix}/team", auth(), json={"acls": {"read": [], "write": [alice]}}
    )
    status, body = await call(client, "PUT", f"/keys/{unique_prefix}/team/k", auth(alice), json={"value": 1})
    assert status == 201, body
    status, body = await call(client, "PUT", f"/keys/{unique_prefix}.team.k", auth(alice), json={"value": 1})
    assert_error(status, body, 403, "Forbidden")
