"""``GET /audit`` and the audit trail itself (SPEC §4, §8).

Changes are audited in their own transaction; reads and denials are flushed asynchronously, so tests
that look for those poll for up to 2 s.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode
from uuid import uuid4

import aiopg
import pytest
from aiohttp.test_utils import TestClient
from support import ADMIN, Api, assert_error, eventually

Client = TestClient[Any, Any]
Token = Callable[..., str]
RFC3339_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
WRITE_FIELDS = {"id", "at", "actor", "action", "key", "version", "outcome", "requestId", "seal"}
READ_FIELDS = WRITE_FIELDS - {"version"}


class AuditApi(Api):
    """Calls that carry a request id, and ``GET /audit``."""

    async def traced(
        self, method: str, path: str, user: str = ADMIN, body: Any = None, rid: str | None = None, **headers: str
    ) -> tuple[int, Any, str]:
        """(status, JSON body or None, X-Request-Id of the response)."""
        if rid is not None:
            headers["X-Request-Id"] = rid
        answer = await self.request(method, path, user, body, **headers)
        return answer.status, answer.body, answer.headers.get("X-Request-Id", "")

    async def audit(self, user: str = ADMIN, **query: Any) -> tuple[int, Any]:
        status, body, _ = await self.traced("GET", "/audit?" + urlencode(query), user)
        return status, body

    async def records(self, **query: Any) -> list[dict[str, Any]]:
        status, body = await self.audit(**query)
        assert status == 200, body
        return body["records"]  # type: ignore[no-any-return]

    async def wait_records(
        self, predicate: Callable[[list[dict[str, Any]]], bool], **query: Any
    ) -> list[dict[str, Any]]:
        """Poll ``/audit`` (reads and denials land asynchronously) until ``predicate`` holds, up to 2 s."""
        records: list[dict[str, Any]] = []

        async def matching() -> bool:
            nonlocal records
            records = await self.records(**query)
            return predicate(records)

        await eventually(matching, 2.0, lambda: f"audit records {query} matching; last {records}")
        return records

    async def record_of(self, key: str, rid: str) -> dict[str, Any]:
        """The one audit record of ``key`` carrying request id ``rid``."""
        records = await self.wait_records(lambda rs: any(r["requestId"] == rid for r in rs), key=key)
        mine = [r for r in records if r["requestId"] == rid]
        assert len(mine) == 1, records
        return mine[0]


@pytest.fixture
def api(client: Client, token: Token) -> AuditApi:
    return AuditApi(client, token)


def rid() -> str:
    return f"test-{uuid4().hex}"


def assert_record(
    record: dict[str, Any], *, actor: str, action: str, key: str | None, outcome: str, version: int | None = None
) -> None:
    if version is None:
        assert set(record) == READ_FIELDS, record
    else:
        assert set(record) == WRITE_FIELDS, record
        assert record["version"] == version
    assert record["seal"] == "chain", record  # sealed into the audit chain when written
    assert isinstance(record["id"], int)
    assert RFC3339_Z.match(record["at"]), record["at"]
    assert (record["actor"], record["action"], record["key"], record["outcome"]) == (actor, action, key, outcome)


# --- access and shape ---------------------------------------------------------------------------


async def test_non_admin_gets_403(api: AuditApi, unique_prefix: str, pg: aiopg.Pool) -> None:
    user = f"{unique_prefix}-alice"
    status, body = await api.audit(user)
    assert_error(status, body, 403, "Forbidden")

    async def rows_of_user() -> list[Any]:
        async with pg.acquire() as conn, conn.cursor() as cur:
            await cur.execute("SELECT outcome, version FROM audit_log WHERE actor = %s", (user,))
            return list(await cur.fetchall())

    rows = await eventually(rows_of_user, 2.0, f"the audit row of {user}'s denial")
    assert rows == [("denied", None)]


async def test_records_are_newest_first_with_version_only_on_writes(api: AuditApi, unique_prefix: str) -> None:
    key = f"{unique_prefix}.shape"
    assert (await api.traced("PUT", f"/keys/{key}", body={"value": 1}))[0] == 201
    assert (await api.traced("PATCH", f"/keys/{key}", body={"value": 2}))[0] == 200
    assert (await api.traced("GET", f"/keys/{key}"))[0] == 200
    records = await api.wait_records(lambda rs: len(rs) >= 3, key=key)
    assert len(records) == 3, records
    assert_record(records[0], actor=ADMIN, action="read", key=key, outcome="ok")
    assert_record(records[1], actor=ADMIN, action="patch", key=key, outcome="ok", version=2)
    assert_record(records[2], actor=ADMIN, action="create", key=key, outcome="ok", version=1)
    ids = [r["id"] for r in records]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == 3
    ats = [datetime.fromisoformat(r["at"].replace("Z", "+00:00")) for r in records]
    assert ats == sorted(ats, reverse=True)
    assert abs(datetime.now(UTC) - ats[0]) < timedelta(minutes=1)


async def test_version_is_the_keys_version_after_the_change(api: AuditApi, unique_prefix: str) -> None:
    key = f"{unique_prefix}.versions"
    await api.traced("PUT", f"/keys/{key}", body={"value": 1})
    await api.traced("PUT", f"/keys/{key}", body={"value": 2})
    await api.traced("PATCH", f"/keys/{key}", body={"value": 3})
    await api.traced("DELETE", f"/keys/{key}")
    await api.traced("PUT", f"/keys/{key}", body={"value": 5})
    records = await api.records(key=key)
    assert [(r["action"], r.get("version")) for r in records] == [
        ("create", 5),
        ("delete", 4),
        ("patch", 3),
        ("replace", 2),
        ("create", 1),
    ]


# --- filters and pagination ---------------------------------------------------------------------


async def test_key_filter_returns_only_that_key(api: AuditApi, unique_prefix: str) -> None:
    for suffix in ("a", "b", "a.c"):
        await api.traced("PUT", f"/keys/{unique_prefix}.{suffix}", body={"value": suffix})
    records = await api.records(key=f"{unique_prefix}.a")
    assert [(r["key"], r["action"]) for r in records] == [(f"{unique_prefix}.a", "create")]


async def test_actor_filter_returns_only_that_actor(api: AuditApi, unique_prefix: str) -> None:
    alice = f"{unique_prefix}-alice"
    ns = f"{unique_prefix}.actor"
    await api.traced("PUT", f"/namespaces/{ns}", body={"acls": {"read": [alice], "write": [alice]}})
    await api.traced("PUT", f"/keys/{ns}.k", alice, {"value": 1})
    await api.traced("PUT", f"/keys/{ns}.k", body={"value": 2})
    await api.traced("GET", f"/keys/{ns}.k", alice)
    records = await api.wait_records(lambda rs: len(rs) >= 2, actor=alice)
    assert [(r["actor"], r["action"], r["key"], r["outcome"]) for r in records] == [
        (alice, "read", f"{ns}.k", "ok"),
        (alice, "create", f"{ns}.k", "ok"),
    ]


async def test_key_and_actor_filters_combine(api: AuditApi, unique_prefix: str) -> None:
    alice = f"{unique_prefix}-alice"
    key = f"{unique_prefix}.both"
    await api.traced("PUT", f"/keys/{key}", body={"value": 1, "acls": {"read": [alice], "write": [alice]}})
    await api.traced("PATCH", f"/keys/{key}", alice, {"value": 2})
    records = await api.records(key=key, actor=alice)
    assert [(r["actor"], r["action"], r.get("version")) for r in records] == [(alice, "patch", 2)]


async def test_since_filter_leaves_out_older_records(api: AuditApi, unique_prefix: str) -> None:
    key = f"{unique_prefix}.since"
    await api.traced("PUT", f"/keys/{key}", body={"value": 1})
    await asyncio.sleep(0.05)
    await api.traced("PUT", f"/keys/{key}", body={"value": 2})
    newest = (await api.records(key=key))[0]
    assert newest["version"] == 2
    records = await api.records(key=key, since=newest["at"])
    assert [r["version"] for r in records] == [2]
    future = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert await api.records(key=key, since=future) == []
    past = (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S+00:00")
    assert [r["version"] for r in await api.records(key=key, since=past)] == [2, 1]


@pytest.mark.parametrize("since", ["yesterday", "2025-01-01", "2025-13-01T00:00:00Z", "2025-01-01T00:00:00", ""])
async def test_bad_since_is_400(api: AuditApi, since: str) -> None:
    assert_error(*await api.audit(since=since), 400, "Bad Request")


@pytest.mark.parametrize("limit", ["0", "1001", "-1", "ten", ""])
async def test_limit_out_of_range_is_400(api: AuditApi, limit: str) -> None:
    assert_error(*await api.audit(limit=limit), 400, "Bad Request")


async def test_bad_cursor_is_400(api: AuditApi) -> None:
    assert_error(*await api.audit(cursor="not-a-cursor!"), 400, "Bad Request")


async def test_limit_and_cursor_cover_every_record_exactly_once(api: AuditApi, unique_prefix: str) -> None:
    key = f"{unique_prefix}.pages"
    await api.traced("PUT", f"/keys/{key}", body={"value": 0})
    for n in range(1, 7):
        await api.traced("PATCH", f"/keys/{key}", body={"value": n})
    everything = await api.records(key=key, limit=1000)
    assert [r["version"] for r in everything] == [7, 6, 5, 4, 3, 2, 1]
    seen: list[dict[str, Any]] = []
    query: dict[str, Any] = {"key": key, "limit": 2}
    pages = 0
    while True:
        status, body = await api.audit(**query)
        assert status == 200, body
        pages += 1
        assert len(body["records"]) <= 2
        seen.extend(body["records"])
        if "next" not in body:
            break
        query["cursor"] = body["next"]
        assert pages < 10
    assert pages == 4
    assert seen == everything


async def test_default_limit_is_100(api: AuditApi, unique_prefix: str) -> None:
    key = f"{unique_prefix}.many"
    await api.traced("PUT", f"/keys/{key}", body={"value": 0})
    for n in range(100):
        assert (await api.traced("PATCH", f"/keys/{key}", body={"value": n}))[0] == 200
    status, body = await api.audit(key=key)
    assert status == 200, body
    assert [r["version"] for r in body["records"]] == list(range(101, 1, -1))
    assert isinstance(body["next"], str)
    status, rest = await api.audit(key=key, cursor=body["next"])
    assert [r["version"] for r in rest["records"]] == [1] and "next" not in rest


async def test_exactly_full_last_page_has_no_next(api: AuditApi, unique_prefix: str) -> None:
    key = f"{unique_prefix}.even"
    await api.traced("PUT", f"/keys/{key}", body={"value": 0})
    await api.traced("PATCH", f"/keys/{key}", body={"value": 1})
    status, body = await api.audit(key=key, limit=2)
    assert status == 200 and len(body["records"]) == 2, body
    assert "next" not in body


# --- every operation is audited -----------------------------------------------------------------


async def test_create_replace_patch_delete_are_audited_with_request_ids(api: AuditApi, unique_prefix: str) -> None:
    key = f"{unique_prefix}.ops"
    steps = [
        ("PUT", {"value": 1}, 201, "create", 1),
        ("PUT", {"value": 2}, 200, "replace", 2),
        ("PATCH", {"value": 3}, 200, "patch", 3),
        ("DELETE", None, 204, "delete", 4),
    ]
    for method, body, expected, action, version in steps:
        request_id = rid()
        status, resp, echoed = await api.traced(method, f"/keys/{key}", body=body, rid=request_id)
        assert status == expected, resp
        assert echoed == request_id
        record = await api.record_of(key, request_id)
        assert_record(record, actor=ADMIN, action=action, key=key, outcome="ok", version=version)


async def test_read_is_audited_ok_without_version(api: AuditApi, unique_prefix: str) -> None:
    key = f"{unique_prefix}.read"
    await api.traced("PUT", f"/keys/{key}", body={"value": 1})
    request_id = rid()
    status, _, echoed = await api.traced("GET", f"/keys/{key}", rid=request_id)
    assert (status, echoed) == (200, request_id)
    assert_record(await api.record_of(key, request_id), actor=ADMIN, action="read", key=key, outcome="ok")


async def test_denied_read_and_write_are_audited_as_denied(api: AuditApi, unique_prefix: str) -> None:
    key = f"{unique_prefix}.deny"
    bob = f"{unique_prefix}-bob"
    await api.traced("PUT", f"/keys/{key}", body={"value": 1, "acls": {"read": [], "write": []}})
    read_id, write_id = rid(), rid()
    assert (await api.traced("GET", f"/keys/{key}", bob, rid=read_id))[0] == 403
    assert (await api.traced("PATCH", f"/keys/{key}", bob, {"value": 2}, rid=write_id))[0] == 403
    assert_record(await api.record_of(key, read_id), actor=bob, action="read", key=key, outcome="denied")
    assert_record(await api.record_of(key, write_id), actor=bob, action="patch", key=key, outcome="denied")


async def test_not_found_read_is_audited_as_not_found(api: AuditApi, unique_prefix: str) -> None:
    key = f"{unique_prefix}.missing"
    request_id = rid()
    assert (await api.traced("GET", f"/keys/{key}", rid=request_id))[0] == 404
    assert_record(await api.record_of(key, request_id), actor=ADMIN, action="read", key=key, outcome="not_found")


async def test_if_match_failure_is_audited_as_precondition_failed(api: AuditApi, unique_prefix: str) -> None:
    key = f"{unique_prefix}.ifmatch"
    await api.traced("PUT", f"/keys/{key}", body={"value": 1})
    request_id = rid()
    status, body, _ = await api.traced("PUT", f"/keys/{key}", body={"value": 2}, rid=request_id, **{"If-Match": '"7"'})
    assert_error(status, body, 412, "Precondition Failed")
    record = await api.record_of(key, request_id)
    assert_record(record, actor=ADMIN, action="replace", key=key, outcome="precondition_failed")


async def test_a_refused_put_is_recorded_as_the_create_or_replace_it_would_have_been(
    api: AuditApi, unique_prefix: str
) -> None:
    """One name for a PUT whether it is written or refused (before 0.2.0 a refused one said ``put``)."""
    existing, missing = f"{unique_prefix}.there", f"{unique_prefix}.never"
    bob = f"{unique_prefix}-bob"
    await api.traced("PUT", f"/keys/{existing}", body={"value": 1, "acls": {"read": [], "write": []}})
    replace_id, create_id = rid(), rid()
    assert (await api.traced("PUT", f"/keys/{existing}", bob, {"value": 2}, rid=replace_id))[0] == 403
    assert (await api.traced("PUT", f"/keys/{missing}", bob, {"value": 2}, rid=create_id))[0] == 403
    assert_record(
        await api.record_of(existing, replace_id), actor=bob, action="replace", key=existing, outcome="denied"
    )
    assert_record(await api.record_of(missing, create_id), actor=bob, action="create", key=missing, outcome="denied")


async def test_list_is_audited(api: AuditApi, unique_prefix: str) -> None:
    ns = f"{unique_prefix}.listed"
    request_id = rid()
    assert (await api.traced("GET", f"/keys?namespace={ns}", rid=request_id))[0] == 200
    assert_record(await api.record_of(ns, request_id), actor=ADMIN, action="list", key=ns, outcome="ok")


async def test_history_is_audited(api: AuditApi, unique_prefix: str) -> None:
    key = f"{unique_prefix}.hist"
    await api.traced("PUT", f"/keys/{key}", body={"value": 1})
    request_id = rid()
    assert (await api.traced("GET", f"/keys/{key}/history", rid=request_id))[0] == 200
    assert_record(await api.record_of(key, request_id), actor=ADMIN, action="history", key=key, outcome="ok")


async def test_namespace_put_and_delete_are_audited(api: AuditApi, unique_prefix: str) -> None:
    ns = f"{unique_prefix}.nsaudit"
    put_id, delete_id = rid(), rid()
    body = {"acls": {"read": ["*"], "write": []}}
    assert (await api.traced("PUT", f"/namespaces/{ns}", body=body, rid=put_id))[0] == 201
    assert (await api.traced("DELETE", f"/namespaces/{ns}", rid=delete_id))[0] == 204
    assert_record(await api.record_of(ns, put_id), actor=ADMIN, action="namespace.put", key=ns, outcome="ok")
    assert_record(await api.record_of(ns, delete_id), actor=ADMIN, action="namespace.delete", key=ns, outcome="ok")


async def test_denied_namespace_put_is_audited(api: AuditApi, unique_prefix: str) -> None:
    ns = f"{unique_prefix}.nsdeny"
    alice = f"{unique_prefix}-alice"
    request_id = rid()
    status, _, _ = await api.traced(
        "PUT", f"/namespaces/{ns}", alice, {"acls": {"read": [], "write": []}}, rid=request_id
    )
    assert status == 403
    record = await api.record_of(ns, request_id)
    assert_record(record, actor=alice, action="namespace.put", key=ns, outcome="denied")


async def test_generated_request_id_is_the_one_audited(api: AuditApi, unique_prefix: str) -> None:
    key = f"{unique_prefix}.genid"
    status, _, echoed = await api.traced("PUT", f"/keys/{key}", body={"value": 1})
    assert status == 201 and echoed
    assert (await api.record_of(key, echoed))["action"] == "create"


async def test_unusable_request_id_is_replaced_and_the_replacement_audited(api: AuditApi, unique_prefix: str) -> None:
    key = f"{unique_prefix}.badid"
    status, _, echoed = await api.traced("PUT", f"/keys/{key}", body={"value": 1}, rid="x" * 500)
    assert status == 201 and echoed and echoed != "x" * 500
    assert (await api.record_of(key, echoed))["action"] == "create"


async def test_write_audit_row_is_committed_with_the_change(api: AuditApi, pg: aiopg.Pool, unique_prefix: str) -> None:
    key = f"{unique_prefix}.tx"
    request_id = rid()
    assert (await api.traced("PUT", f"/keys/{key}", body={"value": 1}, rid=request_id))[0] == 201
    # No polling: a change and its audit row commit together.
    async with pg.acquire() as conn, conn.cursor() as cur:
        await cur.execute(
            "SELECT actor, action, key, version, outcome FROM audit_log WHERE request_id = %s", (request_id,)
        )
        assert await cur.fetchall() == [(ADMIN, "create", key, 1, "ok")]


# --- values stay out of the audit log -----------------------------------------------------------


async def test_values_never_appear_in_the_audit_log(api: AuditApi, pg: aiopg.Pool, unique_prefix: str) -> None:
    key = f"{unique_prefix}.secret"
    secret = f"s3cr3t-{uuid4().hex}"
    bob = f"{unique_prefix}-bob"
    await api.traced("PUT", f"/keys/{key}", body={"value": secret, "acls": {"read": [], "write": []}})
    await api.traced("PUT", f"/keys/{key}", body={"value": {"nested": secret}})
    await api.traced("PATCH", f"/keys/{key}", body={"value": [secret]})
    await api.traced("PATCH", f"/keys/{key}", bob, {"value": secret})
    await api.traced("GET", f"/keys/{key}")
    await api.traced("GET", f"/keys/{key}/history")
    last_id = rid()
    await api.traced("GET", f"/keys/{key}", rid=last_id)
    await api.record_of(key, last_id)  # everything buffered before it has been flushed too
    async with pg.acquire() as conn, conn.cursor() as cur:
        await cur.execute("SELECT count(*) FROM audit_log WHERE key = %s", (key,))
        (count,) = await cur.fetchone()
        assert count >= 7
        await cur.execute("SELECT a.* FROM audit_log a WHERE a::text LIKE %s", (f"%{secret}%",))
        assert await cur.fetchall() == []
