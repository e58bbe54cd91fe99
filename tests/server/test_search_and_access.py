"""What the console asks the server for (step 13): searching keys (``GET /keys?q=&prefix=``, with
``detail=true``), what the caller may do with a key and which ACL decides it
(``GET /keys/{key}?include=access``), the audit log by action and outcome, and every namespace ACL
(``GET /namespaces``)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from support import ADMIN, Api, assert_error, eventually

Client = TestClient[Any, Any]


@pytest.fixture
def api(client: Client, token: Callable[..., str]) -> Api:
    return Api(client, token)


async def all_pages(api: Api, user: str, params: str) -> list[Any]:
    keys: list[Any] = []
    cursor = ""
    while True:
        page = await api.ok("GET", f"/keys?{params}&limit=2{cursor}", user)
        keys.extend(page["keys"])
        if "next" not in page:
            return keys
        cursor = f"&cursor={page['next']}"


async def test_search_finds_keys_by_text_and_prefix_readable_ones_only_and_pages(api: Api, unique_prefix: str) -> None:
    ns = unique_prefix
    reader = f"{ns}-reader"
    await api.ok("PUT", f"/namespaces/{ns}.open", body={"acls": {"read": [reader], "write": []}})
    names = [f"{ns}.open.ReadOnly.a", f"{ns}.open.readonly-b", f"{ns}.open.other", f"{ns}.closed.readonly"]
    for name in names:
        await api.put(name, 1)
    await api.put(f"{ns}.open.readonly.ttl", 1, ttl=600)
    everything = await all_pages(api, ADMIN, f"q=READONLY&namespace={ns}")
    assert everything == sorted([names[0], names[1], names[3], f"{ns}.open.readonly.ttl"])
    page = await api.ok("GET", f"/keys?q=readonly&namespace={ns}&limit=2")
    assert page["total"] == 4 and len(page["keys"]) == 2 and "next" in page, page
    # ACL-filtered, counted and paged for a reader as for an admin.
    mine = await all_pages(api, reader, f"q=readonly&namespace={ns}")
    assert mine == sorted([names[0], names[1], f"{ns}.open.readonly.ttl"])
    assert (await api.ok("GET", f"/keys?q=readonly&namespace={ns}", reader))["total"] == 3
    # A raw prefix (not a namespace: it may end mid-segment), alone or with text.
    assert await all_pages(api, ADMIN, f"prefix={ns}.open.read") == sorted([names[1], f"{ns}.open.readonly.ttl"])
    assert await all_pages(api, ADMIN, f"prefix={ns}.open&q=other") == [names[2]]
    # detail=true: what the console's list shows beside each name.
    detailed = await api.ok("GET", f"/keys?prefix={ns}.open.readonly&detail=true")
    assert [k["key"] for k in detailed["keys"]] == [f"{ns}.open.readonly-b", f"{ns}.open.readonly.ttl"]
    ttl_key = detailed["keys"][1]
    assert (ttl_key["version"], ttl_key["ttl"]) == (1, 600) and ttl_key["expiresAt"].endswith("Z"), ttl_key
    assert set(ttl_key) == {"key", "version", "lastModified", "ttl", "expiresAt"}
    for bad in ("q=%00x", "detail=yes", f"prefix={'x' * 300}"):
        status, body = await api.call("GET", f"/keys?{bad}")
        assert_error(status, body, 400)


async def test_include_access_says_what_the_caller_may_do_and_which_acl_decides(api: Api, unique_prefix: str) -> None:
    ns = unique_prefix
    reader, writer = f"{ns}-reader", f"{ns}-writer"
    acls = {"read": [reader, writer], "write": [writer]}
    await api.ok("PUT", f"/namespaces/{ns}", body={"acls": acls})
    inherited, own = f"{ns}.inherited", f"{ns}.own"
    await api.put(inherited, 1)
    await api.put(own, 1, acls={"read": [reader], "write": []})

    async def access(key: str, user: str) -> dict[str, Any]:
        body = await api.ok("GET", f"/keys/{key}?include=access", user)
        return {"access": body["access"], "governedBy": body["governedBy"]}

    namespace_acl = {"source": "namespace", "namespace": ns, "acls": acls}
    assert await access(inherited, reader) == {
        "access": {"read": True, "write": False, "admin": False},
        "governedBy": namespace_acl,
    }
    assert (await access(inherited, writer))["access"] == {"read": True, "write": True, "admin": False}
    # A key's own ACL: its entries for admins only (as ?include=acls), its source for everyone.
    assert await access(own, reader) == {
        "access": {"read": True, "write": False, "admin": False},
        "governedBy": {"source": "key", "namespace": None, "acls": None},
    }
    assert (await access(own, ADMIN))["governedBy"]["acls"] == {"read": [reader], "write": []}
    both = await api.ok("GET", f"/keys/{own}?include=acls,access")
    assert both["acls"] == {"read": [reader], "write": []} and both["access"]["admin"] is True
    # No ACL anywhere: its creator and admins.
    lonely = f"{uuid.uuid4().hex}.lonely"
    await api.put(lonely, 1)
    assert (await access(lonely, ADMIN))["governedBy"] == {"source": "none", "namespace": None, "acls": None}
    # Still a read: no access at all is the 403 a GET gives.
    status, body = await api.call("GET", f"/keys/{own}?include=access", writer)
    assert_error(status, body, 403)
    status, body = await api.call("GET", f"/keys/{own}?include=everything")
    assert_error(status, body, 400)


async def test_the_audit_log_filters_by_action_and_outcome(api: Api, unique_prefix: str) -> None:
    key = f"{unique_prefix}.audited"
    await api.put(key, 1)
    bob = f"{unique_prefix}-bob"
    assert (await api.call("PUT", f"/keys/{key}", bob, {"value": 2}))[0] == 403

    async def records(query: str) -> list[tuple[str, str]]:
        body = await api.ok("GET", f"/audit?key={key}&{query}")
        return [(r["action"], r["outcome"]) for r in body["records"]]

    await eventually(lambda: records("outcome=denied"), 5, "the denial audited")
    assert await records("outcome=denied") == [("replace", "denied")]
    assert await records("action=create") == [("create", "ok")]
    assert await records("action=replace&outcome=ok") == []


async def test_every_namespace_acl_is_listed_for_anyone(api: Api, unique_prefix: str) -> None:
    for name in (f"{unique_prefix}.b", f"{unique_prefix}.a"):
        await api.ok("PUT", f"/namespaces/{name}", body={"acls": {"read": ["*"], "write": [ADMIN]}})
    listed = await api.ok("GET", "/namespaces", f"{unique_prefix}-anyone")
    mine = [ns for ns in listed["namespaces"] if ns["namespace"].startswith(unique_prefix)]
    assert [ns["namespace"] for ns in mine] == [f"{unique_prefix}.a", f"{unique_prefix}.b"]
    assert mine[0]["acls"] == {"read": ["*"], "write": [ADMIN]} and mine[0]["updatedBy"] == ADMIN
    assert set(mine[0]) == {"namespace", "acls", "updatedBy", "updatedAt"}


@pytest.mark.parametrize("user", [ADMIN, "sort-reader"])
async def test_keys_list_in_other_orders_page_by_page(api: Api, unique_prefix: str, user: str) -> None:
    ns = unique_prefix
    await api.ok("PUT", f"/namespaces/{ns}", body={"acls": {"read": ["sort-reader"], "write": []}})
    # Written in this order; versions 3, 1, 2, 1; ttls 600, none, 60, none.
    names = [f"{ns}.{n}" for n in ("b", "d", "a", "c")]
    for name, extra in zip(names, ({"ttl": 600}, {}, {"ttl": 60}, {}), strict=True):
        await api.put(name, 0, **extra)
    await api.put(names[0], 1, ttl=600)
    await api.put(names[0], 2, ttl=600)
    await api.put(names[2], 1, ttl=60)
    own = f"{ns}.z.private"  # not readable by the reader: left out, and never breaks the paging
    await api.put(own, 0, acls={"read": [], "write": []})
    readable = [n for n in [*names, own] if user == ADMIN or n != own]

    async def listed(sort: str) -> list[str]:
        return [
            k if isinstance(k, str) else k["key"] for k in await all_pages(api, user, f"namespace={ns}&sort={sort}")
        ]

    modified = [names[1], names[3], names[0], names[2], own]  # by last change: d, c, b (3rd write), a, own
    assert await listed("lastModified") == [n for n in modified if n in readable]
    assert await listed("-lastModified") == [n for n in reversed(modified) if n in readable]
    by_version = sorted(readable, key=lambda n: ({names[0]: 3, names[2]: 2}.get(n, 1), n))
    assert await listed("version") == by_version
    assert await listed("-version") == list(reversed(by_version))
    expiring = [names[2], names[0], *sorted(n for n in readable if n not in (names[0], names[2]))]
    assert await listed("expiresAt") == expiring
    assert await listed("name") == sorted(readable)
    # A cursor keeps the order of its first page, whatever sort says with it; an unknown sort is a 400.
    page = await api.ok("GET", f"/keys?namespace={ns}&sort=version&limit=2", user)
    rest = await api.ok("GET", f"/keys?namespace={ns}&sort=-version&cursor={page['next']}", user)
    assert page["keys"] + rest["keys"] == by_version[: len(page["keys"]) + len(rest["keys"])]
    status, body = await api.call("GET", f"/keys?namespace={ns}&sort=size", user)
    assert_error(status, body, 400)
