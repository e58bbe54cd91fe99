"""Access control (SPEC §4 "who" column, §5): ACL entries, creation, metadata, inheritance, secrecy.

Most tests go through HTTP with tokens of several usernames; the last section unit-tests the pure
functions of ``shared/security/acl.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiopg
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient
from support import ADMIN, Api, assert_forbidden, assert_not_found, eventually

from shared.security.acl import (
    Acl,
    Principal,
    entries_match,
    entry_matches,
    governing_namespace,
    may_access,
    may_create,
)

Client = TestClient[Any, Any]
Token = Callable[..., str]


# --- helpers ------------------------------------------------------------------------------------


class AclApi(Api):
    """Key and namespace calls as a named user; the answer, unchecked: the tests check it."""

    async def put_key(self, key: str, body: Any, user: str = ADMIN) -> tuple[int, Any]:
        return await self.call("PUT", f"/keys/{key}", user, body)

    async def patch_key(self, key: str, body: Any, user: str = ADMIN) -> tuple[int, Any]:
        return await self.call("PATCH", f"/keys/{key}", user, body)

    async def get_key(self, key: str, user: str = ADMIN) -> tuple[int, Any]:
        return await self.call("GET", f"/keys/{key}", user)

    async def delete_key(self, key: str, user: str = ADMIN) -> tuple[int, Any]:
        return await self.call("DELETE", f"/keys/{key}", user)

    async def put_ns(self, ns: str, read: list[str], write: list[str], user: str = ADMIN) -> tuple[int, Any]:
        return await self.call("PUT", f"/namespaces/{ns}", user, {"acls": {"read": read, "write": write}})

    async def delete_ns(self, ns: str, user: str = ADMIN) -> tuple[int, Any]:
        return await self.call("DELETE", f"/namespaces/{ns}", user)

    async def create(self, key: str, value: Any = "v", **extra: Any) -> dict[str, Any]:
        """Create ``key`` as the admin, asserting 201."""
        status, body = await self.put_key(key, {"value": value, **extra})
        assert status == 201, body
        return body  # type: ignore[no-any-return]


@pytest.fixture
def api(client: Client, token: Token) -> AclApi:
    return AclApi(client, token)


@pytest.fixture
def alice(unique_prefix: str) -> str:
    return f"{unique_prefix}-alice"


@pytest.fixture
def bob(unique_prefix: str) -> str:
    return f"{unique_prefix}-bob"


async def audit_rows(pg: aiopg.Pool, key: str, actor: str, outcome: str, *, at_least: int = 1) -> list[tuple[Any, ...]]:
    """Poll ``audit_log`` (reads and denials are flushed asynchronously) for up to 2 s."""

    async def rows() -> list[tuple[Any, ...]] | None:
        async with pg.acquire() as conn, conn.cursor() as cur:
            await cur.execute(
                "SELECT action, key, actor, outcome, version FROM audit_log"
                " WHERE key = %s AND actor = %s AND outcome = %s ORDER BY id",
                (key, actor, outcome),
            )
            found = list(await cur.fetchall())
        return found if len(found) >= at_least else None

    return await eventually(rows, 2.0, f"{at_least} {outcome} audit row(s) of {key} by {actor}")


# --- ACL entries --------------------------------------------------------------------------------


async def test_exact_username_entry_grants_only_that_user(
    api: AclApi, unique_prefix: str, alice: str, bob: str
) -> None:
    key = f"{unique_prefix}.exact"
    await api.create(key, "x", acls={"read": [alice], "write": []})
    status, body = await api.get_key(key, alice)
    assert status == 200, body
    assert body["value"] == "x"
    assert_forbidden(*await api.get_key(key, bob))


async def test_star_entry_admits_any_authenticated_caller(
    api: AclApi, unique_prefix: str, alice: str, bob: str
) -> None:
    key = f"{unique_prefix}.star"
    await api.create(key, 1, acls={"read": ["*"], "write": ["*"]})
    for user in (alice, bob, "service:payment-api"):
        status, body = await api.get_key(key, user)
        assert status == 200, (user, body)
        assert body["value"] == 1
    status, body = await api.patch_key(key, {"value": 2}, bob)
    assert status == 200, body
    assert body["version"] == 2


async def test_prefix_entry_matches_usernames_starting_with_the_prefix(api: AclApi, unique_prefix: str) -> None:
    key = f"{unique_prefix}.prefix"
    await api.create(key, "p", acls={"read": ["service:*"], "write": []})
    for user in ("service:payment-api", "service:billing"):
        status, body = await api.get_key(key, user)
        assert status == 200, (user, body)
    for user in ("svc", "service", "my-service:payment-api"):
        assert_forbidden(*await api.get_key(key, user))


async def test_write_does_not_imply_read(api: AclApi, unique_prefix: str, alice: str) -> None:
    key = f"{unique_prefix}.writer-only"
    await api.create(key, "a", acls={"read": [], "write": [alice]})
    assert_forbidden(*await api.get_key(key, alice))
    status, body = await api.patch_key(key, {"value": "b"}, alice)
    assert status == 200, body
    assert body["key"] == key and body["version"] == 2
    status, body = await api.put_key(key, {"value": "c"}, alice)
    assert status == 200, body
    assert body["version"] == 3
    status, body = await api.get_key(key)
    assert (status, body["value"], body["version"]) == (200, "c", 3)


async def test_read_does_not_imply_write(api: AclApi, unique_prefix: str, alice: str) -> None:
    key = f"{unique_prefix}.reader-only"
    await api.create(key, "a", acls={"read": [alice], "write": []})
    assert (await api.get_key(key, alice))[0] == 200
    assert_forbidden(*await api.patch_key(key, {"value": "b"}, alice))
    assert_forbidden(*await api.put_key(key, {"value": "b"}, alice))
    assert_forbidden(*await api.delete_key(key, alice))
    status, body = await api.get_key(key)
    assert (status, body["value"], body["version"]) == (200, "a", 1)


# --- creating keys ------------------------------------------------------------------------------


async def test_non_admin_create_without_namespace_acl_is_forbidden(api: AclApi, unique_prefix: str, alice: str) -> None:
    key = f"{unique_prefix}.app.k"
    assert_forbidden(*await api.put_key(key, {"value": 1}, alice))
    assert_not_found(*await api.get_key(key))


async def test_non_admin_create_with_write_on_governing_namespace_is_created(
    api: AclApi, unique_prefix: str, alice: str, bob: str
) -> None:
    ns = f"{unique_prefix}.app"
    assert (await api.put_ns(ns, [alice], [alice]))[0] == 201
    status, body = await api.put_key(f"{ns}.k", {"value": 1}, alice)
    assert status == 201, body
    assert body["key"] == f"{ns}.k" and body["version"] == 1
    assert_forbidden(*await api.put_key(f"{ns}.other", {"value": 1}, bob))


async def test_namespace_read_alone_does_not_allow_create(api: AclApi, unique_prefix: str, alice: str) -> None:
    ns = f"{unique_prefix}.ro"
    await api.put_ns(ns, [alice], [])
    assert_forbidden(*await api.put_key(f"{ns}.k", {"value": 1}, alice))


async def test_nearest_namespace_acl_wins_over_a_farther_one(api: AclApi, unique_prefix: str, alice: str) -> None:
    p = f"{unique_prefix}.p"
    await api.put_ns(p, [], [alice])
    await api.put_ns(f"{p}.sub", [], ["someone-else"])
    assert_forbidden(*await api.put_key(f"{p}.sub.k", {"value": 1}, alice))
    status, body = await api.put_key(f"{p}.other", {"value": 1}, alice)
    assert status == 201, body


async def test_nearer_namespace_acl_can_allow_what_a_farther_one_denies(
    api: AclApi, unique_prefix: str, alice: str
) -> None:
    p = f"{unique_prefix}/p"
    await api.put_ns(p, [], [])
    await api.put_ns(f"{p}/sub", [], [alice])
    status, body = await api.put_key(f"{p}/sub/k", {"value": 1}, alice)
    assert status == 201, body
    assert_forbidden(*await api.put_key(f"{p}/k", {"value": 1}, alice))


async def test_non_admin_creator_may_set_ttl_and_acls_at_creation(
    api: AclApi, unique_prefix: str, alice: str, bob: str
) -> None:
    # SPEC §4 forbids non-admins to *change* ttl/acls on replace; the seed defines per-key ACLs
    # "at creation". A creator with namespace write therefore sets them when creating.
    ns = f"{unique_prefix}.team"
    await api.put_ns(ns, [], [alice])
    key = f"{ns}.secret"
    status, body = await api.put_key(key, {"value": "s", "ttl": 3600, "acls": {"read": [bob], "write": [alice]}}, alice)
    assert status == 201, body
    status, body = await api.get_key(key)
    assert status == 200 and body["ttl"] == 3600, body
    status, body = await api.get_key(key, bob)
    assert status == 200 and body["value"] == "s", body
    assert_forbidden(*await api.get_key(key, alice))


# --- replacing metadata -------------------------------------------------------------------------


@pytest.fixture
async def writable_key(api: AclApi, unique_prefix: str, alice: str) -> str:
    """A key alice may read and write, with a TTL, created by the admin."""
    key = f"{unique_prefix}.meta"
    await api.create(key, "v1", ttl=3600, acls={"read": [alice], "write": [alice]})
    return key


async def _unchanged(api: AclApi, key: str, alice: str) -> None:
    status, body = await api.get_key(key)
    assert status == 200, body
    assert (body["value"], body["version"], body["ttl"]) == ("v1", 1, 3600)
    assert (await api.get_key(key, alice))[0] == 200


async def test_non_admin_put_with_a_different_ttl_is_forbidden(api: AclApi, writable_key: str, alice: str) -> None:
    assert_forbidden(*await api.put_key(writable_key, {"value": "v2", "ttl": 60}, alice))
    await _unchanged(api, writable_key, alice)


async def test_non_admin_put_clearing_the_ttl_is_forbidden(api: AclApi, writable_key: str, alice: str) -> None:
    assert_forbidden(*await api.put_key(writable_key, {"value": "v2", "ttl": None}, alice))
    await _unchanged(api, writable_key, alice)


async def test_non_admin_put_with_different_acls_is_forbidden(api: AclApi, writable_key: str, alice: str) -> None:
    body = {"value": "v2", "acls": {"read": ["*"], "write": [alice]}}
    assert_forbidden(*await api.put_key(writable_key, body, alice))
    await _unchanged(api, writable_key, alice)


async def test_non_admin_patch_with_ttl_is_forbidden(api: AclApi, writable_key: str, alice: str) -> None:
    assert_forbidden(*await api.patch_key(writable_key, {"value": "v2", "ttl": 60}, alice))
    await _unchanged(api, writable_key, alice)


async def test_non_admin_patch_with_acls_is_forbidden(api: AclApi, writable_key: str, alice: str) -> None:
    body = {"acls": {"read": ["*"], "write": ["*"]}}
    assert_forbidden(*await api.patch_key(writable_key, body, alice))
    await _unchanged(api, writable_key, alice)


async def test_non_admin_put_with_only_a_value_keeps_the_metadata(
    api: AclApi, pg: aiopg.Pool, writable_key: str, alice: str, bob: str
) -> None:
    status, body = await api.put_key(writable_key, {"value": "v2"}, alice)
    assert status == 200, body
    assert body["key"] == writable_key and body["version"] == 2
    status, body = await api.get_key(writable_key, alice)
    assert status == 200, body
    assert (body["value"], body["version"], body["ttl"]) == ("v2", 2, 3600)
    assert_forbidden(*await api.get_key(writable_key, bob))
    async with pg.acquire() as conn, conn.cursor() as cur:
        await cur.execute("SELECT acl_read, acl_write, ttl FROM keys WHERE key = %s", (writable_key,))
        assert await cur.fetchone() == ([alice], [alice], 3600)


async def test_non_admin_put_restating_unchanged_metadata_is_allowed(
    api: AclApi, writable_key: str, alice: str
) -> None:
    # "A non-admin may not *change* ttl/acls": restating the stored ones is no change.
    body = {"value": "v2", "ttl": 3600, "acls": {"read": [alice], "write": [alice]}}
    status, resp = await api.put_key(writable_key, body, alice)
    assert status == 200, resp
    assert resp["version"] == 2


async def test_admin_may_change_ttl_and_acls_with_put(api: AclApi, writable_key: str, alice: str, bob: str) -> None:
    body = {"value": "v2", "ttl": 60, "acls": {"read": [bob], "write": []}}
    status, resp = await api.put_key(writable_key, body)
    assert status == 200, resp
    status, resp = await api.get_key(writable_key, bob)
    assert status == 200 and resp["ttl"] == 60, resp
    assert_forbidden(*await api.get_key(writable_key, alice))


async def test_admin_may_change_ttl_and_acls_with_patch(api: AclApi, writable_key: str, alice: str, bob: str) -> None:
    status, resp = await api.patch_key(writable_key, {"ttl": None, "acls": {"read": [bob], "write": [bob]}})
    assert status == 200, resp
    assert resp["version"] == 2
    status, resp = await api.get_key(writable_key, bob)
    assert status == 200, resp
    assert (resp["value"], resp["ttl"], resp["expiresAt"]) == ("v1", None, None)
    assert_forbidden(*await api.patch_key(writable_key, {"value": 3}, alice))


# --- inheritance --------------------------------------------------------------------------------


async def test_changing_the_namespace_acl_changes_who_reads_a_cached_key(
    api: AclApi, redis_client: aioredis.Redis, unique_prefix: str, alice: str
) -> None:
    ns = f"{unique_prefix}.inherit"
    key = f"{ns}.k"
    await api.put_ns(ns, [alice], [])
    await api.create(key, "shared")
    status, body = await api.get_key(key, alice)
    assert status == 200 and body["value"] == "shared", body
    # The read filled the Redis cache; the ACL still has to be evaluated at every check.
    assert await redis_client.keys(f"*{key}*"), "expected the key's state to be cached in Redis"
    assert (await api.put_ns(ns, [], []))[0] == 200
    assert_forbidden(*await api.get_key(key, alice))
    assert (await api.put_ns(ns, [alice], []))[0] == 200
    assert (await api.get_key(key, alice))[0] == 200


async def test_a_new_nearer_namespace_acl_takes_over_an_existing_key(
    api: AclApi, unique_prefix: str, alice: str
) -> None:
    key = f"{unique_prefix}.a.b.k"
    await api.put_ns(f"{unique_prefix}.a", ["*"], [])
    await api.create(key)
    assert (await api.get_key(key, alice))[0] == 200
    await api.put_ns(f"{unique_prefix}.a.b", [], [])
    assert_forbidden(*await api.get_key(key, alice))
    assert (await api.delete_ns(f"{unique_prefix}.a.b"))[0] == 204
    assert (await api.get_key(key, alice))[0] == 200


async def test_namespace_acl_governs_writes_of_inheriting_keys(api: AclApi, unique_prefix: str, alice: str) -> None:
    ns = f"{unique_prefix}.w"
    key = f"{ns}.k"
    await api.put_ns(ns, [], [])
    await api.create(key)
    assert_forbidden(*await api.patch_key(key, {"value": 2}, alice))
    await api.put_ns(ns, [], [alice])
    status, body = await api.patch_key(key, {"value": 2}, alice)
    assert status == 200, body


async def test_key_acl_overrides_the_namespace_acl(api: AclApi, unique_prefix: str, alice: str) -> None:
    ns = f"{unique_prefix}.own"
    await api.put_ns(ns, ["*"], ["*"])
    key = f"{ns}.k"
    await api.create(key, acls={"read": [], "write": []})
    assert_forbidden(*await api.get_key(key, alice))
    assert_forbidden(*await api.patch_key(key, {"value": 2}, alice))


async def test_no_acl_anywhere_means_only_the_creator_and_admins(api: AclApi, unique_prefix: str, alice: str) -> None:
    key = f"{unique_prefix}.lonely"
    await api.create(key, "mine")
    assert_forbidden(*await api.get_key(key, alice))
    assert_forbidden(*await api.patch_key(key, {"value": 2}, alice))
    status, body = await api.get_key(key)
    assert status == 200 and body["value"] == "mine", body


async def test_no_acl_anywhere_leaves_a_non_admin_creator_access(
    api: AclApi, unique_prefix: str, alice: str, bob: str
) -> None:
    ns = f"{unique_prefix}.tmp"
    key = f"{ns}.k"
    await api.put_ns(ns, [], [alice, bob])
    assert (await api.put_key(key, {"value": "a"}, alice))[0] == 201
    assert (await api.delete_ns(ns))[0] == 204
    status, body = await api.get_key(key, alice)
    assert status == 200 and body["value"] == "a", body
    assert (await api.patch_key(key, {"value": "b"}, alice))[0] == 200
    assert_forbidden(*await api.get_key(key, bob))
    assert_forbidden(*await api.patch_key(key, {"value": "c"}, bob))


# --- existence is not leaked --------------------------------------------------------------------


async def test_unreadable_existing_and_absent_keys_both_answer_403(
    api: AclApi, unique_prefix: str, alice: str, bob: str
) -> None:
    ns = f"{unique_prefix}.hidden"
    await api.put_ns(ns, [alice], [])
    existing, absent = f"{ns}.there", f"{ns}.nothere"
    await api.create(existing)
    status_e, body_e = await api.get_key(existing, bob)
    status_a, body_a = await api.get_key(absent, bob)
    assert_forbidden(status_e, body_e)
    assert_forbidden(status_a, body_a)
    assert body_e["message"].replace(existing, "K") == body_a["message"].replace(absent, "K")


async def test_absent_key_without_any_acl_answers_403_to_non_admins(api: AclApi, unique_prefix: str, bob: str) -> None:
    assert_forbidden(*await api.get_key(f"{unique_prefix}.nowhere.k", bob))
    assert_not_found(*await api.get_key(f"{unique_prefix}.nowhere.k"))


async def test_deleted_key_answers_403_to_a_caller_without_read(
    api: AclApi, unique_prefix: str, alice: str, bob: str
) -> None:
    ns = f"{unique_prefix}.gone"
    key = f"{ns}.k"
    await api.put_ns(ns, [alice], [])
    await api.create(key)
    assert (await api.delete_key(key))[0] == 204
    assert_forbidden(*await api.get_key(key, bob))
    assert_not_found(*await api.get_key(key, alice))


async def test_absent_key_answers_404_to_a_namespace_reader(api: AclApi, unique_prefix: str, alice: str) -> None:
    ns = f"{unique_prefix}.open"
    await api.put_ns(ns, [alice], [])
    assert_not_found(*await api.get_key(f"{ns}.missing", alice))


async def test_patch_and_delete_of_absent_key_answer_403_without_read(
    api: AclApi, unique_prefix: str, bob: str
) -> None:
    ns = f"{unique_prefix}.closed"
    await api.put_ns(ns, [], [])
    assert_forbidden(*await api.patch_key(f"{ns}.missing", {"value": 1}, bob))
    assert_forbidden(*await api.delete_key(f"{ns}.missing", bob))
    assert_not_found(*await api.patch_key(f"{ns}.missing", {"value": 1}))
    assert_not_found(*await api.delete_key(f"{ns}.missing"))


@pytest.mark.parametrize(("method", "body"), [("PUT", {"value": 1}), ("PATCH", {"value": 1}), ("DELETE", None)])
async def test_denied_writes_do_not_reveal_whether_the_key_exists(
    api: AclApi, unique_prefix: str, alice: str, bob: str, method: str, body: Any
) -> None:
    # Same status AND same message for an existing and an absent key (the GET test above checks reads).
    ns = f"{unique_prefix}.sealed"
    await api.put_ns(ns, [alice], [alice])
    existing, absent = f"{ns}.there", f"{ns}.nothere"
    await api.create(existing)
    status_e, body_e = await api.call(method, f"/keys/{existing}", bob, body)
    status_a, body_a = await api.call(method, f"/keys/{absent}", bob, body)
    assert_forbidden(status_e, body_e)
    assert_forbidden(status_a, body_a)
    assert body_e["message"].replace(existing, "K") == body_a["message"].replace(absent, "K")


async def test_a_refused_create_says_that_a_namespace_acl_grants_write(
    api: AclApi, unique_prefix: str, alice: str
) -> None:
    key = f"{unique_prefix}.team.app.flag"  # no namespace ACL above it: only admins create here
    status, body = await api.put_key(key, {"value": 1}, alice)
    assert_forbidden(status, body)
    assert body["message"].startswith(f"You may not write key '{key}': ")
    assert "no namespace above it has an ACL" in body["message"]
    assert f"PUT /namespaces/{unique_prefix}" in body["message"]  # how an admin grants it, e.g. at the top
    await api.put_ns(f"{unique_prefix}.team", [alice], [])  # one now governs it, but grants alice no write
    status, body = await api.put_key(key, {"value": 1}, alice)
    assert_forbidden(status, body)
    assert (
        f"here namespace '{unique_prefix}.team' (an admin grants it with PUT /namespaces/{unique_prefix}.team)"
        in body["message"]
    )


@pytest.mark.parametrize(("method", "body"), [("PUT", {"value": 1}), ("PATCH", {"value": 1}), ("DELETE", None)])
async def test_the_hint_of_a_refused_write_is_the_same_for_existing_and_missing_keys(
    api: AclApi, unique_prefix: str, alice: str, bob: str, method: str, body: Any
) -> None:
    # SPEC §5: the hint may tell how write is granted, never whether the key exists; so it is the same
    # for a key that exists (with or without its own ACL), one that was deleted, and one that never did.
    for ns, namespace_acl in ((f"{unique_prefix}.open", ([bob], [bob])), (f"{unique_prefix}.bare", None)):
        if namespace_acl is not None:
            await api.put_ns(ns, *namespace_acl)
        inherits, own, deleted, missing = (f"{ns}.{name}" for name in ("inherits", "own", "deleted", "missing"))
        await api.create(inherits)
        await api.create(own, acls={"read": [bob], "write": [bob]})
        await api.create(deleted)
        assert (await api.delete_key(deleted))[0] == 204
        messages = set()
        for key in (inherits, own, deleted, missing):
            status, answer = await api.call(method, f"/keys/{key}", alice, body)
            assert_forbidden(status, answer)
            messages.add(answer["message"].replace(key, "K"))
        assert len(messages) == 1, messages
        assert "namespace" in messages.pop()


async def test_history_of_absent_key_is_403_without_read_and_404_with_it(
    api: AclApi, unique_prefix: str, alice: str, bob: str
) -> None:
    ns = f"{unique_prefix}.hns"
    await api.put_ns(ns, [alice], [])
    assert_forbidden(*await api.call("GET", f"/keys/{ns}.missing/history", bob))
    assert_not_found(*await api.call("GET", f"/keys/{ns}.missing/history", alice))


# --- listing ------------------------------------------------------------------------------------


@pytest.fixture
async def mixed_keys(api: AclApi, unique_prefix: str, alice: str, bob: str) -> list[str]:
    """Four keys under ``{unique}.list``; alice may read ``a`` and ``d`` only."""
    ns = f"{unique_prefix}.list"
    await api.create(f"{ns}.a", acls={"read": ["*"], "write": []})
    await api.create(f"{ns}.b", acls={"read": [bob], "write": [alice]})
    await api.create(f"{ns}.c")
    await api.create(f"{ns}.d", acls={"read": [alice], "write": []})
    return [f"{ns}.{s}" for s in "abcd"]


async def test_listing_leaves_out_unreadable_keys_and_counts_only_readable(
    api: AclApi, unique_prefix: str, mixed_keys: list[str], alice: str
) -> None:
    status, body = await api.call("GET", f"/keys?namespace={unique_prefix}.list", alice)
    assert status == 200, body
    assert body == {"keys": [mixed_keys[0], mixed_keys[3]], "total": 2}
    status, body = await api.call("GET", f"/keys?namespace={unique_prefix}.list")
    assert body == {"keys": mixed_keys, "total": 4}


async def test_listing_pagination_covers_only_readable_keys(
    api: AclApi, unique_prefix: str, mixed_keys: list[str], alice: str
) -> None:
    status, page1 = await api.call("GET", f"/keys?namespace={unique_prefix}.list&limit=1", alice)
    assert status == 200, page1
    assert page1["keys"] == [mixed_keys[0]] and page1["total"] == 2
    assert isinstance(page1["next"], str)
    status, page2 = await api.call("GET", f"/keys?namespace={unique_prefix}.list&limit=1&cursor={page1['next']}", alice)
    assert status == 200, page2
    assert page2 == {"keys": [mixed_keys[3]], "total": 2}


async def test_listing_follows_namespace_acl_changes(api: AclApi, unique_prefix: str, alice: str) -> None:
    ns = f"{unique_prefix}.lns"
    await api.create(f"{ns}.k")
    status, body = await api.call("GET", f"/keys?namespace={ns}", alice)
    assert (status, body) == (200, {"keys": [], "total": 0})
    await api.put_ns(ns, [alice], [])
    status, body = await api.call("GET", f"/keys?namespace={ns}", alice)
    assert (status, body) == (200, {"keys": [f"{ns}.k"], "total": 1})


# --- history and delete -------------------------------------------------------------------------


async def test_history_requires_read(api: AclApi, unique_prefix: str, alice: str, bob: str) -> None:
    key = f"{unique_prefix}.hist"
    await api.create(key, 1, acls={"read": [alice], "write": [bob]})
    assert_forbidden(*await api.call("GET", f"/keys/{key}/history", bob))
    status, body = await api.call("GET", f"/keys/{key}/history", alice)
    assert status == 200, body
    assert body["key"] == key and [v["version"] for v in body["versions"]] == [1]


async def test_delete_requires_write(api: AclApi, unique_prefix: str, alice: str, bob: str) -> None:
    key = f"{unique_prefix}.del"
    await api.create(key, 1, acls={"read": [alice], "write": [bob]})
    assert_forbidden(*await api.delete_key(key, alice))
    assert (await api.get_key(key))[0] == 200
    status, body = await api.delete_key(key, bob)
    assert (status, body) == (204, None)
    assert_not_found(*await api.get_key(key))


# --- audit of denials ---------------------------------------------------------------------------


async def test_denied_get_is_audited_as_denied(api: AclApi, pg: aiopg.Pool, unique_prefix: str, bob: str) -> None:
    key = f"{unique_prefix}.audit-get"
    await api.create(key, acls={"read": [], "write": []})
    assert_forbidden(*await api.get_key(key, bob))
    rows = await audit_rows(pg, key, bob, "denied")
    assert len(rows) == 1, rows
    _action, row_key, actor, outcome, version = rows[0]
    assert (row_key, actor, outcome, version) == (key, bob, "denied", None)


async def test_denied_put_is_audited_as_denied(api: AclApi, pg: aiopg.Pool, unique_prefix: str, bob: str) -> None:
    key = f"{unique_prefix}.audit-put"
    await api.create(key, acls={"read": [], "write": []})
    assert_forbidden(*await api.put_key(key, {"value": "no"}, bob))
    absent = f"{unique_prefix}.audit-create"
    assert_forbidden(*await api.put_key(absent, {"value": "no"}, bob))
    for denied_key in (key, absent):
        rows = await audit_rows(pg, denied_key, bob, "denied")
        assert len(rows) == 1, rows
        assert rows[0][1:] == (denied_key, bob, "denied", None)


# --- shared/security/acl.py ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "username", "expected"),
    [
        ("alice", "alice", True),
        ("alice", "alice2", False),
        ("alice", "Alice", False),
        ("*", "anyone", True),
        ("*", "service:payment-api", True),
        ("service:*", "service:payment-api", True),
        ("service:*", "svc", False),
        ("service:*", "service", False),
        ("service:*", "xservice:payment-api", False),
        ("team-*", "team-a", True),
    ],
)
def test_entry_matches(entry: str, username: str, expected: bool) -> None:
    assert entry_matches(entry, username) is expected


def test_entries_match_any_entry() -> None:
    assert entries_match(["bob", "service:*"], "service:x") is True
    assert entries_match(["bob", "service:*"], "carol") is False
    assert entries_match([], "carol") is False


def test_acl_write_does_not_imply_read_and_read_does_not_imply_write() -> None:
    writer_only = Acl.from_lists([], ["alice"])
    assert writer_only.allows("alice", "write") is True
    assert writer_only.allows("alice", "read") is False
    reader_only = Acl.from_lists(["alice"], None)
    assert reader_only.allows("alice", "read") is True
    assert reader_only.allows("alice", "write") is False
    assert reader_only.as_json() == {"read": ["alice"], "write": []}


def test_governing_namespace_is_the_nearest_ancestor_with_an_acl() -> None:
    far, near = Acl.from_lists(["a"], []), Acl.from_lists(["b"], [])
    acls = {"p": far, "p.sub": near}
    assert governing_namespace("p.sub.k", acls) == ("p.sub", near)
    assert governing_namespace("p.other.k", acls) == ("p", far)
    assert governing_namespace("p/sub/k", {"p/sub": near, "p": far}) == ("p/sub", near)
    assert governing_namespace("q.k", acls) is None
    # A namespace is a proper prefix ending before '.' or '/': "p" does not govern "pp.k" nor "p" itself.
    assert governing_namespace("pp.k", acls) is None
    assert governing_namespace("p", acls) is None


ALICE = Principal("alice", is_admin=False)
ROOT = Principal(ADMIN, is_admin=True)


def test_may_access_prefers_the_key_acl_over_the_namespace() -> None:
    ns = {"app": Acl.from_lists(["*"], ["*"])}
    key_acl = Acl.from_lists([], [])
    assert may_access(ALICE, "read", key="app.k", key_acl=key_acl, creator="alice", namespace_acls=ns) is False
    assert may_access(ALICE, "read", key="app.k", key_acl=None, creator="bob", namespace_acls=ns) is True


def test_may_access_without_any_acl_admits_only_creator_and_admins() -> None:
    assert may_access(ALICE, "read", key="x.k", key_acl=None, creator="alice", namespace_acls={}) is True
    assert may_access(ALICE, "write", key="x.k", key_acl=None, creator="alice", namespace_acls={}) is True
    assert may_access(ALICE, "read", key="x.k", key_acl=None, creator="bob", namespace_acls={}) is False
    assert may_access(ROOT, "write", key="x.k", key_acl=Acl(), creator="bob", namespace_acls={}) is True


def test_may_access_with_a_namespace_acl_ignores_the_creator() -> None:
    ns = {"x": Acl.from_lists([], [])}
    assert may_access(ALICE, "read", key="x.k", key_acl=None, creator="alice", namespace_acls=ns) is False


def test_may_create_needs_admin_or_write_on_the_governing_namespace() -> None:
    assert may_create(ROOT, key="x.k", namespace_acls={}) is True
    assert may_create(ALICE, key="x.k", namespace_acls={}) is False
    assert may_create(ALICE, key="x.k", namespace_acls={"x": Acl.from_lists([], ["alice"])}) is True
    assert may_create(ALICE, key="x.k", namespace_acls={"x": Acl.from_lists(["alice"], [])}) is False
    nested = {"x": Acl.from_lists([], ["alice"]), "x.y": Acl.from_lists([], ["bob"])}
    assert may_create(ALICE, key="x.y.k", namespace_acls=nested) is False
