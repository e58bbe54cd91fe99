"""dynconfig_client.Client against the real api_server app (in process), Postgres, Redis and JWKS."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from support import eventually

from devtools.services import free_port
from dynconfig_client.client import UNSET, Client, watch_url
from dynconfig_client.errors import (
    BadRequest,
    ConnectionFailed,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    PreconditionFailed,
    RateLimited,
    Unauthorized,
)
from dynconfig_client.models import AuditRecord, KeyValue, PollResult, Version, WriteResult

Token = Callable[..., str]


def base_url_of(test_client: Any) -> str:
    return str(test_client.server.make_url("")).rstrip("/")


@pytest.fixture
def base_url(client: Any) -> str:
    return base_url_of(client)


@pytest.fixture
async def api(base_url: str, token: Token) -> AsyncIterator[Client]:
    """A Client for the admin."""
    async with Client(base_url, token()) as c:
        yield c


# --- keys ------------------------------------------------------------------------------------------


async def test_put_creates_then_replaces_and_get_returns_typed_record(api: Client, unique_prefix: str) -> None:
    key = f"{unique_prefix}.app/feature:enabled"
    created = await api.put(key, {"on": True, "ratio": 0.5, "tags": ["a", None]})
    assert (created.key, created.version, created.created, created.expires_at) == (key, 1, True, None)
    assert created.last_modified.tzinfo is not None
    replaced = await api.put(key, "text")
    assert (replaced.version, replaced.created) == (2, False)

    item = await api.get(key)
    assert isinstance(item, KeyValue)
    assert (item.key, item.value, item.version, item.etag) == (key, "text", 2, '"2"')
    assert (item.ttl, item.expires_at) == (None, None)
    assert item.last_modified == replaced.last_modified
    assert abs((datetime.now(UTC) - item.last_modified).total_seconds()) < 60


async def test_null_value_round_trips(api: Client, unique_prefix: str) -> None:
    await api.put(f"{unique_prefix}.nothing", None)
    assert (await api.get(f"{unique_prefix}.nothing")).value is None


async def test_ttl_unset_keeps_none_clears_and_patch_sets_metadata_only(api: Client, unique_prefix: str) -> None:
    key = f"{unique_prefix}.ttl"
    first = await api.put(key, 1, ttl=100)
    assert first.expires_at is not None
    await api.put(key, 2)
    item = await api.get(key)
    assert (item.value, item.ttl) == (2, 100)
    assert item.expires_at is not None and item.expires_at > datetime.now(UTC)

    await api.put(key, 3, ttl=None)
    item = await api.get(key)
    assert (item.value, item.ttl, item.expires_at) == (3, None, None)

    patched = await api.patch(key, ttl=50)
    assert patched.version == 4
    item = await api.get(key)
    assert (item.value, item.ttl) == (3, 50)


async def test_patch_changes_value(api: Client, unique_prefix: str) -> None:
    key = f"{unique_prefix}.p"
    await api.put(key, 1)
    result = await api.patch(key, [1, 2])
    assert (result.key, result.version, result.created) == (key, 2, False)
    assert (await api.get(key)).value == [1, 2]


async def test_patch_of_missing_key_is_not_found(api: Client, unique_prefix: str) -> None:
    with pytest.raises(NotFound):
        await api.patch(f"{unique_prefix}.absent", 1)


async def test_delete_then_get_raises_not_found_with_server_message(api: Client, unique_prefix: str) -> None:
    key = f"{unique_prefix}.gone"
    await api.put(key, 1)
    await api.delete(key)
    with pytest.raises(NotFound) as caught:
        await api.get(key)
    assert (caught.value.status, caught.value.error, caught.value.message) == (404, "Not Found", "Key does not exist")
    assert str(caught.value) == "404 Not Found: Key does not exist"


async def test_list_iterates_every_page_in_order(api: Client, unique_prefix: str) -> None:
    keys = sorted([f"{unique_prefix}.k{i}" for i in range(5)] + [f"{unique_prefix}/sub/x"])
    for key in reversed(keys):
        await api.put(key, 0)
    await api.put(f"{unique_prefix}", 0)  # the namespace itself is not in it
    assert [k async for k in api.list(unique_prefix, page_size=2)] == keys


async def test_list_page_returns_total_and_cursor(api: Client, unique_prefix: str) -> None:
    keys = [f"{unique_prefix}.k{i}" for i in range(5)]
    for key in keys:
        await api.put(key, 0)
    first = await api.list_page(unique_prefix, limit=2)
    assert (first.keys, first.total) == (keys[:2], 5)
    assert first.next is not None
    second = await api.list_page(unique_prefix, limit=2, cursor=first.next)
    assert second.keys == keys[2:4]
    third = await api.list_page(unique_prefix, limit=2, cursor=second.next)
    assert (third.keys, third.next) == (keys[4:], None)


async def test_history_iterates_pages_newest_first(api: Client, unique_prefix: str) -> None:
    key = f"{unique_prefix}.h"
    for value in ("a", "b", "c"):
        await api.put(key, value)
    await api.delete(key)
    await api.put(key, "d")
    versions = [v async for v in api.history(key, page_size=2)]
    assert all(isinstance(v, Version) for v in versions)
    assert [(v.version, v.event, v.value) for v in versions] == [
        (5, "update", "d"),
        (4, "delete", None),
        (3, "update", "c"),
        (2, "update", "b"),
        (1, "update", "a"),
    ]
    assert {v.actor for v in versions} == {"admin-user"}
    assert versions[0].at >= versions[-1].at


async def test_rollback_writes_an_earlier_value_again(api: Client, unique_prefix: str) -> None:
    key = f"{unique_prefix}.rb"
    await api.put(key, {"limit": 10}, ttl=600)
    await api.put(key, {"limit": 20})
    result = await api.rollback(key, 1, if_match=2)
    assert isinstance(result, WriteResult)
    assert (result.key, result.version, result.revision > 0) == (key, 3, True)
    item = await api.get(key)
    assert (item.value, item.version, item.ttl) == ({"limit": 10}, 3, 600)  # the ttl is kept
    with pytest.raises(PreconditionFailed):
        await api.rollback(key, 2, if_match=1)
    await api.delete(key)
    with pytest.raises(BadRequest) as caught:  # version 4 is the delete: no value to restore
        await api.rollback(key, 4)
    assert caught.value.fields is not None and "version" in caught.value.fields
    with pytest.raises(NotFound):
        await api.rollback(key, 99)
    assert (await api.rollback(key, 2)).version == 5  # a deleted key comes back with that value
    assert (await api.get(key)).value == {"limit": 20}


# --- If-Match --------------------------------------------------------------------------------------


async def test_if_match_with_etag_or_version_succeeds_when_current(api: Client, unique_prefix: str) -> None:
    key = f"{unique_prefix}.cas"
    await api.put(key, 1)
    item = await api.get(key)
    assert (await api.put(key, 2, if_match=item.etag)).version == 2
    assert (await api.patch(key, 3, if_match=2)).version == 3
    await api.delete(key, if_match='"3"')
    with pytest.raises(NotFound):
        await api.get(key)


async def test_if_match_stale_raises_precondition_failed(api: Client, unique_prefix: str) -> None:
    key = f"{unique_prefix}.cas"
    await api.put(key, 1)
    await api.put(key, 2)
    for call in (api.put(key, 9, if_match=1), api.patch(key, 9, if_match='"1"'), api.delete(key, if_match=1)):
        with pytest.raises(PreconditionFailed) as caught:
            await call
        assert (caught.value.status, caught.value.error) == (412, "Precondition Failed")
        assert "2" in caught.value.message
    assert (await api.get(key)).value == 2


# --- typed errors ----------------------------------------------------------------------------------


async def test_bad_request_carries_fields(api: Client, unique_prefix: str) -> None:
    with pytest.raises(BadRequest) as caught:
        await api.put(f"{unique_prefix}.k", 1, ttl=0)
    assert (caught.value.status, caught.value.error) == (400, "Bad Request")
    assert caught.value.fields is not None and "ttl" in caught.value.fields
    assert caught.value.body["message"] == caught.value.message

    with pytest.raises(BadRequest) as caught:
        await api.get(f"{unique_prefix}..bad")
    assert caught.value.fields is not None and set(caught.value.fields) == {"key"}


async def test_bad_token_raises_unauthorized(base_url: str, token: Token) -> None:
    for bad in ("not-a-jwt", token(exp_in=-120)):
        async with Client(base_url, bad) as c:
            with pytest.raises(Unauthorized) as caught:
                await c.list_page()
        assert (caught.value.status, caught.value.error) == (401, "Unauthorized")
        assert caught.value.message


async def test_acls_are_sent_and_forbidden_is_typed(
    api: Client, base_url: str, token: Token, unique_prefix: str
) -> None:
    key = f"{unique_prefix}.guarded"
    await api.put(key, "v", acls={"read": ["*"], "write": ["writer"]})
    async with Client(base_url, token(f"{unique_prefix}-reader")) as reader:
        assert (await reader.get(key)).value == "v"
        with pytest.raises(Forbidden) as caught:
            await reader.put(key, "w")
    assert (caught.value.status, caught.value.error) == (403, "Forbidden")
    assert caught.value.message.startswith(f"You may not write key '{key}': writing takes 'write' in the key's own ACL")


async def test_value_over_one_mib_raises_payload_too_large(api: Client, unique_prefix: str) -> None:
    with pytest.raises(PayloadTooLarge) as caught:
        await api.put(f"{unique_prefix}.big", "x" * 1_048_576)
    assert (caught.value.status, caught.value.error) == (413, "Payload Too Large")


async def test_rate_limited_carries_retry_after(
    make_client: Any, settings: Any, token: Token, unique_prefix: str
) -> None:
    limited = await make_client(settings.replace(rate_limit=2))
    async with Client(base_url_of(limited), token(f"{unique_prefix}-busy")) as c:
        await c.list_page(unique_prefix)
        await c.list_page(unique_prefix)
        with pytest.raises(RateLimited) as caught:
            await c.list_page(unique_prefix)
    assert (caught.value.status, caught.value.error) == (429, "Rate Limited")
    assert caught.value.retry_after is not None and 0 < caught.value.retry_after <= 60


async def test_closed_port_raises_connection_failed(token: Token) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    async with Client(url, token(), timeout=5) as c:
        with pytest.raises(ConnectionFailed) as caught:
            await c.get("app.x")
    assert str(caught.value).startswith(f"cannot reach {url}: ")


# --- tokens ----------------------------------------------------------------------------------------


async def test_sync_token_callable_is_asked_for_every_request(base_url: str, token: Token, unique_prefix: str) -> None:
    calls: list[str] = []

    def source() -> str:
        calls.append("called")
        return token()

    async with Client(base_url, source) as c:
        await c.put(f"{unique_prefix}.k", 1)
        assert (await c.get(f"{unique_prefix}.k")).value == 1
    assert len(calls) == 2


async def test_async_token_callable_is_awaited(base_url: str, token: Token, unique_prefix: str) -> None:
    calls: list[str] = []

    async def source() -> str:
        await asyncio.sleep(0)
        calls.append("called")
        return token()

    async with Client(base_url, source) as c:
        await c.put(f"{unique_prefix}.k", "async")
        assert (await c.get(f"{unique_prefix}.k")).value == "async"
    assert len(calls) == 2


async def test_expired_token_from_callable_is_refreshed_once_and_request_succeeds(
    base_url: str, token: Token, unique_prefix: str
) -> None:
    tokens = iter([token(exp_in=-120), token()])
    calls: list[str] = []

    def source() -> str:
        calls.append("called")
        return next(tokens)

    async with Client(base_url, source) as c:
        result = await c.put(f"{unique_prefix}.k", 1)
    assert (result.version, result.created) == (1, True)
    assert len(calls) == 2


async def test_callable_that_keeps_failing_is_retried_only_once(base_url: str, token: Token) -> None:
    calls: list[str] = []

    def source() -> str:
        calls.append("called")
        return token(exp_in=-120)

    async with Client(base_url, source) as c:
        with pytest.raises(Unauthorized):
            await c.list_page()
    assert len(calls) == 2


# --- poll, namespaces, audit, health, session ------------------------------------------------------


async def test_poll_returns_events_after_a_revision(api: Client, notifier_server: Any, unique_prefix: str) -> None:
    key = f"{unique_prefix}.polled"
    await api.put(key, {"n": 1})

    async def first_event() -> PollResult | None:
        result = await api.poll(0, namespace=unique_prefix)
        return result if result.events else None

    result = await eventually(first_event, 10, "the update in a poll")
    [event] = result.events
    revision = event["revision"]
    assert event == {
        "event": "update",
        "key": key,
        "version": 1,
        "revision": revision,
        "value": {"n": 1},
        "lastModified": event["lastModified"],
    }
    assert (result.more, result.reset) == (False, False)
    assert result.revision >= revision

    await api.delete(key)

    async def second_event() -> PollResult | None:
        result = await api.poll(revision, namespace=unique_prefix)
        return result if result.events else None

    [deleted] = (await eventually(second_event, 10, "the delete in a poll")).events
    assert (deleted["event"], deleted["key"], deleted["version"], "value" in deleted) == ("delete", key, 2, False)
    assert deleted["revision"] > revision

    page = await api.poll(0, namespace=unique_prefix, limit=1)
    assert ([e["revision"] for e in page.events], page.more) == ([revision], True)


async def test_namespace_acl_put_get_delete(api: Client, unique_prefix: str) -> None:
    created = await api.put_namespace(unique_prefix, {"read": ["*"], "write": ["svc:*"]})
    assert (created.namespace, created.acls, created.updated_by) == (
        unique_prefix,
        {"read": ["*"], "write": ["svc:*"]},
        "admin-user",
    )
    fetched = await api.get_namespace(unique_prefix)
    assert (fetched.acls, fetched.updated_at) == (created.acls, created.updated_at)
    await api.delete_namespace(unique_prefix)
    with pytest.raises(NotFound):
        await api.get_namespace(unique_prefix)
    with pytest.raises(NotFound):
        await api.delete_namespace(unique_prefix)


async def test_audit_iterates_pages_of_records(api: Client, unique_prefix: str) -> None:
    key = f"{unique_prefix}.audited"
    await api.put(key, 1)
    await api.get(key)

    async def records() -> list[AuditRecord] | None:
        found = [r async for r in api.audit(key=key, limit=1)]
        return found if {r.action for r in found} >= {"create", "read"} else None

    found = await eventually(records, 5, "the create and the read in the audit")
    assert all(isinstance(r, AuditRecord) and r.key == key and r.actor == "admin-user" for r in found)
    [create] = [r for r in found if r.action == "create"]
    assert (create.version, create.outcome) == (1, "ok")
    assert create.request_id
    assert [r.id for r in found] == sorted((r.id for r in found), reverse=True)


async def test_audit_is_forbidden_for_non_admins(base_url: str, token: Token, unique_prefix: str) -> None:
    async with Client(base_url, token(f"{unique_prefix}-user")) as c:
        with pytest.raises(Forbidden):
            _ = [r async for r in c.audit()]


async def test_health_needs_no_token(base_url: str) -> None:
    async with Client(base_url, "unused") as c:
        body = await c.health()
    assert body["status"] == "healthy"


async def test_passed_session_is_used_and_left_open(base_url: str, token: Token, unique_prefix: str) -> None:
    async with aiohttp.ClientSession() as session:
        async with Client(base_url, token(), session=session) as c:
            await c.put(f"{unique_prefix}.k", 1)
        assert not session.closed
        async with Client(base_url, token(), session=session) as c:
            assert (await c.get(f"{unique_prefix}.k")).value == 1


def test_unset_is_a_singleton_distinct_from_none() -> None:
    assert UNSET is not None and not isinstance(UNSET, type(None))


@pytest.mark.parametrize(
    ("base", "expected"),
    [
        ("http://localhost:8080", "ws://localhost:8080/watch"),
        ("http://localhost:8080/", "ws://localhost:8080/watch"),
        ("https://config.example.com/api", "wss://config.example.com/api/watch"),
    ],
)
def test_watch_url_maps_http_to_ws(base: str, expected: str) -> None:
    assert watch_url(base) == expected


def test_watch_url_rejects_other_schemes() -> None:
    with pytest.raises(ValueError):
        watch_url("ftp://example.com")
