"""Keys through HTTP (SPEC §3–4): the seed's examples, validation, versions, TTL, listing, history."""

from __future__ import annotations

import asyncio
import io
import json
import re
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient
from support import expect_error
from yarl import URL

from shared.timeutil import parse_rfc3339

RFC3339_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")
MIB = 1_048_576

Client = TestClient[Any, Any]


@pytest.fixture
def admin(token: Callable[..., str]) -> dict[str, str]:
    """Authorization headers of the admin user."""
    return {"Authorization": f"Bearer {token()}"}


def bearer(token: Callable[..., str], username: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(username)}"}


async def put(client: Client, key: str, headers: dict[str, str], **body: Any) -> ClientResponse:
    return await client.put(f"/keys/{key}", json=body, headers=headers)


async def create(client: Client, key: str, headers: dict[str, str], **body: Any) -> dict[str, Any]:
    resp = await put(client, key, headers, **body)
    assert resp.status == 201, await resp.text()
    result: dict[str, Any] = await resp.json()
    return result


async def get_json(client: Client, path: str, headers: dict[str, str], status: int = 200) -> Any:
    resp = await client.get(path, headers=headers)
    assert resp.status == status, await resp.text()
    return await resp.json()


async def put_large(client: Client, method: str, key: str, headers: dict[str, str], body: str) -> ClientResponse:
    """Send a big JSON body as a stream (aiohttp warns about big raw-bytes bodies)."""
    data = io.BytesIO(body.encode())
    return await client.request(
        method, f"/keys/{key}", data=data, headers={**headers, "Content-Type": "application/json"}
    )


def at(text: str) -> datetime:
    assert RFC3339_Z.match(text), text
    return parse_rfc3339(text)


# --- the seed's Example Usage ---------------------------------------------------------------------


async def test_seed_example_create_fetch_patch_delete_recreate(
    client: Client, admin: dict[str, str], unique_prefix: str
) -> None:
    key = f"{unique_prefix}.feature-toggle.enabled"
    body = json.dumps({"value": "true", "ttl": 3600, "acls": {"read": ["*"], "write": ["admin-user"]}})
    resp = await client.put(f"/keys/{key}", data=body, headers={**admin, "Content-Type": "application/json"})
    assert resp.status == 201
    created = await resp.json()
    assert created["key"] == key
    assert created["version"] == 1
    assert RFC3339_Z.match(created["lastModified"])

    fetched = await get_json(client, f"/keys/{key}", admin)
    assert fetched["key"] == key
    assert fetched["value"] == "true"
    assert fetched["version"] == 1
    assert fetched["lastModified"] == created["lastModified"]
    assert fetched["ttl"] == 3600
    assert at(fetched["expiresAt"]) - at(fetched["lastModified"]) == timedelta(seconds=3600)

    resp = await client.patch(f"/keys/{key}", json={"value": "false"}, headers=admin)
    assert resp.status == 200
    patched = await resp.json()
    assert patched["key"] == key and patched["version"] == 2
    assert at(patched["lastModified"]) >= at(created["lastModified"])
    fetched = await get_json(client, f"/keys/{key}", admin)
    assert (fetched["value"], fetched["version"]) == ("false", 2)

    resp = await client.delete(f"/keys/{key}", headers=admin)
    assert resp.status == 204
    assert await resp.read() == b""

    resp = await client.get(f"/keys/{key}", headers=admin)
    assert resp.status == 404
    assert await resp.json() == {"error": "Not Found", "message": "Key does not exist"}
    await expect_error(await client.patch(f"/keys/{key}", json={"value": "x"}, headers=admin), 404, "Not Found")
    await expect_error(await client.delete(f"/keys/{key}", headers=admin), 404, "Not Found")

    again = await create(client, key, admin, value="true")
    assert again["version"] == 4
    assert (await get_json(client, f"/keys/{key}", admin))["version"] == 4


# --- replace semantics ----------------------------------------------------------------------------


async def test_put_on_existing_key_replaces_with_200(client: Client, admin: dict[str, str], unique_prefix: str) -> None:
    key = f"{unique_prefix}.replace"
    await create(client, key, admin, value=1)
    resp = await put(client, key, admin, value=2)
    assert resp.status == 200
    body = await resp.json()
    assert body["key"] == key and body["version"] == 2 and RFC3339_Z.match(body["lastModified"])
    assert (await get_json(client, f"/keys/{key}", admin))["value"] == 2


async def test_put_without_ttl_and_acls_keeps_stored_ones(
    client: Client, admin: dict[str, str], token: Callable[..., str], unique_prefix: str
) -> None:
    key = f"{unique_prefix}.keepmeta"
    reader, writer = f"{unique_prefix}-reader", f"{unique_prefix}-writer"
    await create(client, key, admin, value="a", ttl=3600, acls={"read": [reader, writer], "write": [writer]})
    # an admin replacing only the value
    assert (await put(client, key, admin, value="b")).status == 200
    # a (non-admin) writer replacing only the value: allowed, metadata untouched
    resp = await put(client, key, bearer(token, writer), value="c")
    assert resp.status == 200, await resp.text()
    fetched = await get_json(client, f"/keys/{key}", admin)
    assert (fetched["value"], fetched["version"], fetched["ttl"]) == ("c", 3, 3600)
    assert fetched["expiresAt"] is not None
    assert (await get_json(client, f"/keys/{key}", bearer(token, reader)))["value"] == "c"
    await expect_error(
        await client.get(f"/keys/{key}", headers=bearer(token, f"{unique_prefix}-other")), 403, "Forbidden"
    )


async def test_admin_put_with_null_ttl_clears_expiry(client: Client, admin: dict[str, str], unique_prefix: str) -> None:
    key = f"{unique_prefix}.clearttl"
    await create(client, key, admin, value=1, ttl=3600)
    assert (await put(client, key, admin, value=2, ttl=None)).status == 200
    fetched = await get_json(client, f"/keys/{key}", admin)
    assert fetched["ttl"] is None
    assert fetched["expiresAt"] is None


async def test_key_without_ttl_reports_null_ttl_and_expires_at(
    client: Client, admin: dict[str, str], unique_prefix: str
) -> None:
    key = f"{unique_prefix}.nottl"
    await create(client, key, admin, value=1)
    fetched = await get_json(client, f"/keys/{key}", admin)
    assert "ttl" in fetched and fetched["ttl"] is None
    assert "expiresAt" in fetched and fetched["expiresAt"] is None


# --- values ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        {"nested": {"list": [1, 2.5, None, True], "s": "x"}},
        [1, "two", {"three": 3}],
        42,
        -3.25,
        True,
        False,
        None,
        "héllo wörld ✓ 日本 🚀",
        "",
    ],
    ids=["object", "list", "int", "float", "true", "false", "null", "unicode", "empty-string"],
)
async def test_any_json_value_round_trips(
    client: Client, admin: dict[str, str], unique_prefix: str, value: Any
) -> None:
    key = f"{unique_prefix}.value"
    await create(client, key, admin, value=value)
    assert (await get_json(client, f"/keys/{key}", admin))["value"] == value


async def test_value_of_exactly_one_mib_compact_json_is_accepted(
    client: Client, admin: dict[str, str], unique_prefix: str
) -> None:
    key = f"{unique_prefix}.big"
    value = "a" * (MIB - 2)  # the two quotes make it exactly 1 MiB of compact JSON
    assert len(json.dumps(value, separators=(",", ":"))) == MIB
    # Whitespace in the request does not count: only the value's compact encoding does.
    body = '{"value":' + " " * 1000 + json.dumps(value) + "}"
    resp = await put_large(client, "PUT", key, admin, body)
    assert resp.status == 201, await resp.text()
    assert (await get_json(client, f"/keys/{key}", admin))["value"] == value


async def test_value_one_byte_over_one_mib_is_413(client: Client, admin: dict[str, str], unique_prefix: str) -> None:
    key = f"{unique_prefix}.toobig"
    resp = await put_large(client, "PUT", key, admin, json.dumps({"value": "a" * (MIB - 1)}))
    await expect_error(resp, 413, "Payload Too Large")
    await expect_error(await client.get(f"/keys/{key}", headers=admin), 404, "Not Found")


async def test_patch_value_over_one_mib_is_413(client: Client, admin: dict[str, str], unique_prefix: str) -> None:
    key = f"{unique_prefix}.toobigpatch"
    await create(client, key, admin, value=1)
    resp = await put_large(client, "PATCH", key, admin, json.dumps({"value": ["x" * 1000] * 1100}))
    await expect_error(resp, 413, "Payload Too Large")
    assert (await get_json(client, f"/keys/{key}", admin))["version"] == 1


async def test_body_far_over_the_limit_is_413_json(client: Client, admin: dict[str, str], unique_prefix: str) -> None:
    key = f"{unique_prefix}.huge"
    resp = await put_large(client, "PUT", key, admin, json.dumps({"value": "a" * (5 * MIB)}))
    await expect_error(resp, 413, "Payload Too Large")


# --- key validation -------------------------------------------------------------------------------


async def test_key_of_256_characters_is_accepted(client: Client, admin: dict[str, str], unique_prefix: str) -> None:
    key = unique_prefix + "." + "k" * (256 - len(unique_prefix) - 1)
    assert len(key) == 256
    assert (await create(client, key, admin, value=1))["key"] == key
    assert (await get_json(client, f"/keys/{key}", admin))["key"] == key


async def test_key_of_257_characters_is_400(client: Client, admin: dict[str, str], unique_prefix: str) -> None:
    key = unique_prefix + "." + "k" * (257 - len(unique_prefix) - 1)
    assert len(key) == 257
    body = await expect_error(await put(client, key, admin, value=1), 400, "Bad Request")
    assert "key" in body.get("fields", {})
    await expect_error(await client.get(f"/keys/{key}", headers=admin), 400, "Bad Request")


async def test_key_with_every_allowed_character_is_accepted(
    client: Client, admin: dict[str, str], unique_prefix: str
) -> None:
    key = f"{unique_prefix}.ABCxyz019_-:/Z.a_b-c:d"
    assert (await create(client, key, admin, value=1))["key"] == key
    assert (await get_json(client, f"/keys/{key}", admin))["key"] == key


@pytest.mark.parametrize(
    "suffix",
    ["a%20b", "a$b", "a@b", "a*b", "a+b", "a~b", "a%C3%A9", "a%25b", "a'b", "a,b", "a;b", "a=b", "a!b"],
    ids=[
        "space",
        "dollar",
        "at",
        "star",
        "plus",
        "tilde",
        "e-acute",
        "percent",
        "quote",
        "comma",
        "semicolon",
        "equals",
        "bang",
    ],
)
async def test_key_with_disallowed_character_is_400(
    client: Client, admin: dict[str, str], unique_prefix: str, suffix: str
) -> None:
    await expect_error(await put(client, f"{unique_prefix}.{suffix}", admin, value=1), 400, "Bad Request")


@pytest.mark.parametrize("first", ["_", "-", ":", "."])
async def test_key_must_start_with_letter_or_digit(
    client: Client, admin: dict[str, str], unique_prefix: str, first: str
) -> None:
    await expect_error(await put(client, f"{first}{unique_prefix}", admin, value=1), 400, "Bad Request")


async def test_key_starting_with_digit_is_accepted(client: Client, admin: dict[str, str], unique_prefix: str) -> None:
    key = f"9{unique_prefix}"
    assert (await create(client, key, admin, value=1))["key"] == key


@pytest.mark.parametrize(
    "shape",
    ["{p}..x", "{p}//x", "{p}.", "{p}/", "{p}./x", "{p}/.x", "/{p}"],
    ids=["double-dot", "double-slash", "trailing-dot", "trailing-slash", "dot-slash", "slash-dot", "leading-slash"],
)
async def test_key_with_empty_segment_is_400(
    client: Client, admin: dict[str, str], unique_prefix: str, shape: str
) -> None:
    key = shape.format(p=unique_prefix)
    await expect_error(await put(client, key, admin, value=1), 400, "Bad Request")


@pytest.mark.parametrize(("suffix", "allow"), [("history", "GET,HEAD"), ("rollback", "POST")])
async def test_put_key_ending_in_reserved_segment_is_refused(
    client: Client, admin: dict[str, str], unique_prefix: str, suffix: str, allow: str
) -> None:
    """``/keys/a/history`` is the history of ``a``: a PUT there is a method it has not (405, ``Allow``);
    the key ``a/history`` itself, its slashes escaped, is a bad key (400)."""
    resp = await put(client, f"{unique_prefix}/app/{suffix}", admin, value=1)
    await expect_error(resp, 405, "Method Not Allowed")
    assert resp.headers["Allow"] == allow
    escaped = URL(f"/keys/{unique_prefix}%2Fapp%2F{suffix}", encoded=True)
    await expect_error(await client.put(escaped, json={"value": 1}, headers=admin), 400, "Bad Request")


async def test_reserved_words_elsewhere_in_a_key_are_fine(
    client: Client, admin: dict[str, str], unique_prefix: str
) -> None:
    for key in (f"{unique_prefix}.history", f"{unique_prefix}/history/x", f"{unique_prefix}/rollback.x"):
        assert (await create(client, key, admin, value=key))["key"] == key
        assert (await get_json(client, f"/keys/{key}", admin))["value"] == key


async def test_hierarchical_key_is_addressed_by_its_path(
    client: Client, admin: dict[str, str], unique_prefix: str
) -> None:
    key = f"{unique_prefix}/app/key"
    created = await create(client, key, admin, value={"a": 1})
    assert created["key"] == key
    fetched = await get_json(client, f"/keys/{unique_prefix}/app/key", admin)
    assert (fetched["key"], fetched["value"]) == (key, {"a": 1})
    await expect_error(await client.get(f"/keys/{unique_prefix}/app", headers=admin), 404, "Not Found")


# --- body validation ------------------------------------------------------------------------------


async def test_put_without_value_is_400_with_fields(client: Client, admin: dict[str, str], unique_prefix: str) -> None:
    body = await expect_error(await put(client, f"{unique_prefix}.novalue", admin, ttl=10), 400, "Bad Request")
    assert "value" in body["fields"]


async def test_put_with_unknown_field_is_400(client: Client, admin: dict[str, str], unique_prefix: str) -> None:
    body = await expect_error(
        await put(client, f"{unique_prefix}.unknown", admin, value=1, colour="red"), 400, "Bad Request"
    )
    assert "colour" in body.get("fields", {})


@pytest.mark.parametrize(
    "ttl", [0, -1, "3600", 1.5, True, [1], {"s": 1}], ids=["0", "-1", "string", "float", "bool", "list", "object"]
)
async def test_invalid_ttl_is_400(client: Client, admin: dict[str, str], unique_prefix: str, ttl: Any) -> None:
    key = f"{unique_prefix}.badttl"
    body = await expect_error(await put(client, key, admin, value=1, ttl=ttl), 400, "Bad Request")
    assert "ttl" in body.get("fields", {})
    await expect_error(await client.get(f"/keys/{key}", headers=admin), 404, "Not Found")


async def test_malformed_json_is_400(client: Client, admin: dict[str, str], unique_prefix: str) -> None:
    resp = await client.put(
        f"/keys/{unique_prefix}.malformed", data='{"value": ', headers={**admin, "Content-Type": "application/json"}
    )
    await expect_error(resp, 400, "Bad Request")


async def test_empty_body_is_400(client: Client, admin: dict[str, str], unique_prefix: str) -> None:
    resp = await client.put(f"/keys/{unique_prefix}.empty", data=b"", headers=admin)
    await expect_error(resp, 400, "Bad Request")


@pytest.mark.parametrize(
    "raw",
    ['{"value": NaN}', '{"value": Infinity}', '{"value": -Infinity}', '{"value": 1e400}'],
    ids=["nan", "infinity", "minus-infinity", "overflow"],
)
async def test_non_json_numbers_are_400(client: Client, admin: dict[str, str], unique_prefix: str, raw: str) -> None:
    # NaN/Infinity are not JSON (RFC 8259); 1e400 cannot be represented and would come back as Infinity.
    key = f"{unique_prefix}.nan"
    resp = await client.put(f"/keys/{key}", data=raw, headers={**admin, "Content-Type": "application/json"})
    await expect_error(resp, 400, "Bad Request")


async def test_deeply_nested_value_is_a_client_error_not_500(
    client: Client, admin: dict[str, str], unique_prefix: str
) -> None:
    depth = 100_000  # 200 kB of JSON: well under the value limit
    raw = '{"value": ' + "[" * depth + "]" * depth + "}"
    resp = await put_large(client, "PUT", f"{unique_prefix}.deep", admin, raw)
    await expect_error(resp, 400, "Bad Request")


async def test_body_that_is_not_utf8_is_400(client: Client, admin: dict[str, str], unique_prefix: str) -> None:
    resp = await client.put(
        f"/keys/{unique_prefix}.latin1",
        data=b'{"value": "\xe9"}',
        headers={**admin, "Content-Type": "application/json"},
    )
    await expect_error(resp, 400, "Bad Request")


async def test_patch_value_null_is_stored_as_null(client: Client, admin: dict[str, str], unique_prefix: str) -> None:
    key = f"{unique_prefix}.patchnull"
    await create(client, key, admin, value=1)
    resp = await client.patch(f"/keys/{key}", json={"value": None}, headers=admin)
    assert resp.status == 200
    fetched = await get_json(client, f"/keys/{key}", admin)
    assert fetched["version"] == 2
    assert "value" in fetched and fetched["value"] is None


@pytest.mark.parametrize("body", [[{"value": 1}], "value", 1, None], ids=["list", "string", "number", "null"])
async def test_non_object_body_is_400(client: Client, admin: dict[str, str], unique_prefix: str, body: Any) -> None:
    resp = await client.put(f"/keys/{unique_prefix}.nonobject", json=body, headers=admin)
    await expect_error(resp, 400, "Bad Request")


@pytest.mark.parametrize(
    ("body", "sent"),
    [("on", "a JSON string"), (3, "a JSON number"), ([1], "a JSON array"), (True, "a JSON boolean"), (None, "null")],
)
async def test_a_body_that_is_not_an_object_says_what_the_body_is(
    client: Client, admin: dict[str, str], unique_prefix: str, body: Any, sent: str
) -> None:
    key = f"{unique_prefix}.bare"
    raw = {"data": json.dumps(body), "headers": {**admin, "Content-Type": "application/json"}}  # null too
    for method in ("PUT", "PATCH"):
        resp = await client.request(method, f"/keys/{key}", **raw)
        message = (await expect_error(resp, 400, "Bad Request"))["message"]
        assert message.startswith(f'The request body must be a JSON object like {{"value": "on"}}, not {sent}'), message
    rollback = await client.post(f"/keys/{key}/rollback", **raw)
    assert '{"version": 3}' in (await expect_error(rollback, 400, "Bad Request"))["message"]
    namespace = await client.put(f"/namespaces/{unique_prefix}", **raw)
    assert '{"acls": {"read": [' in (await expect_error(namespace, 400, "Bad Request"))["message"]


async def test_patch_with_empty_object_is_400(client: Client, admin: dict[str, str], unique_prefix: str) -> None:
    key = f"{unique_prefix}.emptypatch"
    await create(client, key, admin, value=1)
    await expect_error(await client.patch(f"/keys/{key}", json={}, headers=admin), 400, "Bad Request")
    assert (await get_json(client, f"/keys/{key}", admin))["version"] == 1


@pytest.mark.parametrize(
    "acls",
    [
        {"read": ["bad user"]},
        {"write": [" admin-user"]},
        {"read": "*"},
        {"read": [1]},
        {"owner": ["x"]},
        {"read": ["a*b*"]},
    ],
    ids=["space-inside", "leading-space", "not-a-list", "not-a-string", "unknown-list", "star-in-middle"],
)
async def test_invalid_acls_are_400(client: Client, admin: dict[str, str], unique_prefix: str, acls: Any) -> None:
    key = f"{unique_prefix}.badacl"
    body = await expect_error(await put(client, key, admin, value=1, acls=acls), 400, "Bad Request")
    assert "acls" in body.get("fields", {})


# --- If-Match / ETag ------------------------------------------------------------------------------


async def test_get_sends_etag_of_the_version(client: Client, admin: dict[str, str], unique_prefix: str) -> None:
    key = f"{unique_prefix}.etag"
    await create(client, key, admin, value=1)
    resp = await client.get(f"/keys/{key}", headers=admin)
    assert resp.headers["ETag"] == '"1"'
    await client.patch(f"/keys/{key}", json={"value": 2}, headers=admin)
    resp = await client.get(f"/keys/{key}", headers=admin)
    assert resp.headers["ETag"] == '"2"'


async def test_if_match_quoted_or_bare_version_succeeds(
    client: Client, admin: dict[str, str], unique_prefix: str
) -> None:
    key = f"{unique_prefix}.ifmatch"
    await create(client, key, admin, value=1)
    etag = (await client.get(f"/keys/{key}", headers=admin)).headers["ETag"]
    resp = await client.put(f"/keys/{key}", json={"value": 2}, headers={**admin, "If-Match": etag})
    assert resp.status == 200 and (await resp.json())["version"] == 2
    resp = await client.patch(f"/keys/{key}", json={"value": 3}, headers={**admin, "If-Match": "2"})
    assert resp.status == 200 and (await resp.json())["version"] == 3
    resp = await client.delete(f"/keys/{key}", headers={**admin, "If-Match": '"3"'})
    assert resp.status == 204


@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE"])
async def test_stale_if_match_is_412_and_changes_nothing(
    client: Client, admin: dict[str, str], unique_prefix: str, method: str
) -> None:
    key = f"{unique_prefix}.stale"
    await create(client, key, admin, value=1)
    await client.patch(f"/keys/{key}", json={"value": 2}, headers=admin)
    body = None if method == "DELETE" else {"value": 3}
    for stale in ('"1"', "1", '"7"'):
        resp = await client.request(method, f"/keys/{key}", json=body, headers={**admin, "If-Match": stale})
        await expect_error(resp, 412, "Precondition Failed")
    fetched = await get_json(client, f"/keys/{key}", admin)
    assert (fetched["value"], fetched["version"]) == (2, 2)


async def test_if_match_on_absent_key_is_412(client: Client, admin: dict[str, str], unique_prefix: str) -> None:
    key = f"{unique_prefix}.absent"
    resp = await client.put(f"/keys/{key}", json={"value": 1}, headers={**admin, "If-Match": '"1"'})
    await expect_error(resp, 412, "Precondition Failed")
    await expect_error(await client.get(f"/keys/{key}", headers=admin), 404, "Not Found")


async def test_if_match_on_deleted_key_put_is_412(client: Client, admin: dict[str, str], unique_prefix: str) -> None:
    key = f"{unique_prefix}.deletedifmatch"
    await create(client, key, admin, value=1)
    assert (await client.delete(f"/keys/{key}", headers=admin)).status == 204
    resp = await client.put(f"/keys/{key}", json={"value": 1}, headers={**admin, "If-Match": '"2"'})
    await expect_error(resp, 412, "Precondition Failed")


# --- TTL ------------------------------------------------------------------------------------------


async def test_expired_key_is_gone_for_reads_and_recreation_continues_versions(
    client: Client, admin: dict[str, str], unique_prefix: str
) -> None:
    key = f"{unique_prefix}.ttl.short"
    created = await create(client, key, admin, value="old", ttl=1)
    assert at(created["lastModified"])
    await asyncio.sleep(1.2)

    await expect_error(await client.get(f"/keys/{key}", headers=admin), 404, "Not Found")
    listed = await get_json(client, f"/keys?namespace={unique_prefix}", admin)
    assert key not in listed["keys"]
    await expect_error(await client.patch(f"/keys/{key}", json={"value": "x"}, headers=admin), 404, "Not Found")
    await expect_error(await client.delete(f"/keys/{key}", headers=admin), 404, "Not Found")

    again = await create(client, key, admin, value="new")
    assert again["version"] == 3
    history = await get_json(client, f"/keys/{key}/history", admin)
    versions = history["versions"]
    assert [v["version"] for v in versions] == [3, 2, 1]
    assert [v["event"] for v in versions] == ["update", "expired", "update"]
    assert versions[1]["actor"] == "system:expiry"
    assert versions[1]["value"] is None
    assert [versions[0]["value"], versions[2]["value"]] == ["new", "old"]
    fetched = await get_json(client, f"/keys/{key}", admin)
    assert (fetched["value"], fetched["version"], fetched["ttl"]) == ("new", 3, None)


async def test_patch_restarts_the_ttl_countdown(client: Client, admin: dict[str, str], unique_prefix: str) -> None:
    key = f"{unique_prefix}.ttl.restart"
    await create(client, key, admin, value=1, ttl=60)
    first = await get_json(client, f"/keys/{key}", admin)
    await asyncio.sleep(0.05)
    resp = await client.patch(f"/keys/{key}", json={"value": 2}, headers=admin)
    assert resp.status == 200
    second = await get_json(client, f"/keys/{key}", admin)
    assert second["ttl"] == 60
    assert at(second["expiresAt"]) > at(first["expiresAt"])
    assert at(second["expiresAt"]) - at(second["lastModified"]) == timedelta(seconds=60)


async def test_ttl_one_second_key_is_readable_before_its_deadline(
    client: Client, admin: dict[str, str], unique_prefix: str
) -> None:
    key = f"{unique_prefix}.ttl.fresh"
    await create(client, key, admin, value="v", ttl=5)
    fetched = await get_json(client, f"/keys/{key}", admin)
    assert fetched["ttl"] == 5
    assert at(fetched["expiresAt"]) - at(fetched["lastModified"]) == timedelta(seconds=5)


# --- listing --------------------------------------------------------------------------------------


async def test_list_namespace_matches_dot_and_slash_children_only(
    client: Client, admin: dict[str, str], unique_prefix: str
) -> None:
    p = unique_prefix
    for key in (f"{p}.x", f"{p}/x", f"{p}.x.y", p, f"{p}le.x", f"{p}-x", f"{p}:x", f"{p}_x"):
        await create(client, key, admin, value=1)
    listed = await get_json(client, f"/keys?namespace={p}", admin)
    assert listed["keys"] == sorted([f"{p}.x", f"{p}.x.y", f"{p}/x"])
    assert listed["total"] == 3
    assert "next" not in listed
    nested = await get_json(client, f"/keys?namespace={p}.x", admin)
    assert nested["keys"] == [f"{p}.x.y"]


async def test_list_is_sorted_by_key(client: Client, admin: dict[str, str], unique_prefix: str) -> None:
    p = unique_prefix
    keys = [f"{p}.c", f"{p}.B", f"{p}/b", f"{p}.a", f"{p}.a0", f"{p}.A", f"{p}.a.b", f"{p}.a-b"]
    for key in keys:
        await create(client, key, admin, value=1)
    listed = await get_json(client, f"/keys?namespace={p}", admin)
    assert listed["keys"] == sorted(keys)
    assert listed["total"] == len(keys)


async def test_list_without_namespace_includes_own_keys(
    client: Client, admin: dict[str, str], unique_prefix: str
) -> None:
    await create(client, f"{unique_prefix}.all", admin, value=1)
    listed = await get_json(client, "/keys?limit=1000", admin)
    assert isinstance(listed["keys"], list) and isinstance(listed["total"], int)
    assert listed["keys"] == sorted(listed["keys"])
    assert listed["total"] >= len(listed["keys"]) >= 1


@pytest.mark.parametrize("limit", ["0", "1001", "abc", "-1", "1.5", ""])
async def test_list_limit_out_of_range_is_400(
    client: Client, admin: dict[str, str], unique_prefix: str, limit: str
) -> None:
    resp = await client.get(f"/keys?namespace={unique_prefix}&limit={limit}", headers=admin)
    await expect_error(resp, 400, "Bad Request")


@pytest.mark.parametrize("limit", ["1", "1000"])
async def test_list_limit_bounds_are_accepted(
    client: Client, admin: dict[str, str], unique_prefix: str, limit: str
) -> None:
    await create(client, f"{unique_prefix}.a", admin, value=1)
    await create(client, f"{unique_prefix}.b", admin, value=1)
    listed = await get_json(client, f"/keys?namespace={unique_prefix}&limit={limit}", admin)
    assert listed["keys"] == [f"{unique_prefix}.a", f"{unique_prefix}.b"][: int(limit)]
    assert listed["total"] == 2
    assert ("next" in listed) == (limit == "1")


async def test_list_cursor_walks_every_key_exactly_once(
    client: Client, admin: dict[str, str], unique_prefix: str
) -> None:
    keys = sorted(f"{unique_prefix}.k{i:02d}" for i in range(7))
    for key in keys:
        await create(client, key, admin, value=1)
    seen: list[str] = []
    pages: list[list[str]] = []
    cursor = None
    for _ in range(10):
        url = f"/keys?namespace={unique_prefix}&limit=3" + (f"&cursor={cursor}" if cursor else "")
        page = await get_json(client, url, admin)
        assert page["total"] == 7
        pages.append(page["keys"])
        seen.extend(page["keys"])
        cursor = page.get("next")
        if cursor is None:
            break
        assert isinstance(cursor, str) and cursor
    assert [len(p) for p in pages] == [3, 3, 1]
    assert seen == keys


async def test_list_last_full_page_has_no_next(client: Client, admin: dict[str, str], unique_prefix: str) -> None:
    for i in range(4):
        await create(client, f"{unique_prefix}.k{i}", admin, value=1)
    first = await get_json(client, f"/keys?namespace={unique_prefix}&limit=2", admin)
    second = await get_json(client, f"/keys?namespace={unique_prefix}&limit=2&cursor={first['next']}", admin)
    assert second["keys"] == [f"{unique_prefix}.k2", f"{unique_prefix}.k3"]
    assert "next" not in second


@pytest.mark.parametrize(
    "cursor", ["garbage!!", "bm90LWpzb24", "MTIz", "%00", "e30"], ids=["junk", "not-json", "number", "nul", "object"]
)
async def test_list_garbage_cursor_is_400(
    client: Client, admin: dict[str, str], unique_prefix: str, cursor: str
) -> None:
    resp = await client.get(f"/keys?namespace={unique_prefix}&cursor={cursor}", headers=admin)
    await expect_error(resp, 400, "Bad Request")


async def test_list_leaves_out_deleted_and_expired_keys(
    client: Client, admin: dict[str, str], unique_prefix: str
) -> None:
    p = unique_prefix
    await create(client, f"{p}.live", admin, value=1)
    await create(client, f"{p}.deleted", admin, value=1)
    await create(client, f"{p}.expiring", admin, value=1, ttl=1)
    assert (await client.delete(f"/keys/{p}.deleted", headers=admin)).status == 204
    await asyncio.sleep(1.2)
    listed = await get_json(client, f"/keys?namespace={p}", admin)
    assert listed["keys"] == [f"{p}.live"]
    assert listed["total"] == 1


async def test_list_namespace_underscore_is_not_a_wildcard(
    client: Client, admin: dict[str, str], unique_prefix: str
) -> None:
    p = unique_prefix
    await create(client, f"{p}_x.k", admin, value=1)
    await create(client, f"{p}ax.k", admin, value=1)
    await create(client, f"{p}Zx/k", admin, value=1)
    listed = await get_json(client, f"/keys?namespace={p}_x", admin)
    assert listed["keys"] == [f"{p}_x.k"]
    assert listed["total"] == 1


async def test_list_namespace_percent_is_not_a_wildcard(
    client: Client, admin: dict[str, str], unique_prefix: str
) -> None:
    p = unique_prefix
    await create(client, f"{p}abc.k", admin, value=1)
    resp = await client.get(f"/keys?namespace={p}%25", headers=admin)
    if resp.status == 400:  # '%' cannot occur in a key, so refusing the namespace is fine too
        await expect_error(resp, 400, "Bad Request")
    else:
        assert resp.status == 200
        listed = await resp.json()
        assert listed["keys"] == [] and listed["total"] == 0


# --- history --------------------------------------------------------------------------------------


async def test_history_lists_every_version_newest_first(
    client: Client, admin: dict[str, str], unique_prefix: str
) -> None:
    key = f"{unique_prefix}.hist"
    await create(client, key, admin, value="v1")
    await client.patch(f"/keys/{key}", json={"value": {"v": 2}}, headers=admin)
    await client.put(f"/keys/{key}", json={"value": [3]}, headers=admin)
    assert (await client.delete(f"/keys/{key}", headers=admin)).status == 204
    history = await get_json(client, f"/keys/{key}/history", admin)
    assert history["key"] == key
    assert "next" not in history
    versions = history["versions"]
    assert [(v["version"], v["event"], v["value"], v["actor"]) for v in versions] == [
        (4, "delete", None, "admin-user"),
        (3, "update", [3], "admin-user"),
        (2, "update", {"v": 2}, "admin-user"),
        (1, "update", "v1", "admin-user"),
    ]
    for v in versions:
        assert set(v) >= {"version", "value", "event", "actor", "at"}
        assert RFC3339_Z.match(v["at"])
    ats = [at(v["at"]) for v in versions]
    assert ats == sorted(ats, reverse=True)


async def test_history_includes_the_current_version(client: Client, admin: dict[str, str], unique_prefix: str) -> None:
    key = f"{unique_prefix}.histcur"
    created = await create(client, key, admin, value="only")
    history = await get_json(client, f"/keys/{key}/history", admin)
    assert history["versions"] == [
        {"version": 1, "value": "only", "event": "update", "actor": "admin-user", "at": created["lastModified"]}
    ]


async def test_history_pages_with_limit_and_cursor(client: Client, admin: dict[str, str], unique_prefix: str) -> None:
    key = f"{unique_prefix}.histpage"
    await create(client, key, admin, value=1)
    for value in range(2, 6):
        assert (await client.patch(f"/keys/{key}", json={"value": value}, headers=admin)).status == 200
    first = await get_json(client, f"/keys/{key}/history?limit=2", admin)
    assert [v["version"] for v in first["versions"]] == [5, 4]
    second = await get_json(client, f"/keys/{key}/history?limit=2&cursor={first['next']}", admin)
    assert [v["version"] for v in second["versions"]] == [3, 2]
    third = await get_json(client, f"/keys/{key}/history?limit=2&cursor={second['next']}", admin)
    assert [v["version"] for v in third["versions"]] == [1]
    assert "next" not in third
    assert [v["value"] for v in third["versions"]] == [1]


@pytest.mark.parametrize("query", ["limit=0", "limit=1001", "limit=x", "cursor=garbage!!"])
async def test_history_bad_limit_or_cursor_is_400(
    client: Client, admin: dict[str, str], unique_prefix: str, query: str
) -> None:
    key = f"{unique_prefix}.histbad"
    await create(client, key, admin, value=1)
    await expect_error(await client.get(f"/keys/{key}/history?{query}", headers=admin), 400, "Bad Request")


async def test_history_of_never_existing_key_is_404(client: Client, admin: dict[str, str], unique_prefix: str) -> None:
    await expect_error(await client.get(f"/keys/{unique_prefix}.never/history", headers=admin), 404, "Not Found")


@pytest.mark.parametrize("method", ["PUT", "POST", "PATCH", "DELETE"])
async def test_other_methods_on_history_are_405_with_allow(
    client: Client, admin: dict[str, str], unique_prefix: str, method: str
) -> None:
    key = f"{unique_prefix}.histmethod"
    await create(client, key, admin, value=1)
    resp = await client.request(method, f"/keys/{key}/history", json={"value": 2}, headers=admin)
    await expect_error(resp, 405, "Method Not Allowed")
    assert resp.headers["Allow"] == "GET,HEAD"
    assert (await get_json(client, f"/keys/{key}", admin))["version"] == 1


# --- routing, methods, request ids ----------------------------------------------------------------


async def test_unknown_route_is_404_json(client: Client, admin: dict[str, str]) -> None:
    resp = await client.get("/no-such-route", headers=admin)
    await expect_error(resp, 404, "Not Found")
    assert resp.headers.get("X-Request-Id")


async def test_wrong_method_is_405_json(client: Client, admin: dict[str, str], unique_prefix: str) -> None:
    resp = await client.post(f"/keys/{unique_prefix}.x", json={"value": 1}, headers=admin)
    await expect_error(resp, 405, "Method Not Allowed")
    assert resp.headers.get("X-Request-Id")


async def test_every_response_has_a_request_id(client: Client, admin: dict[str, str], unique_prefix: str) -> None:
    key = f"{unique_prefix}.rid"
    responses = [
        await client.put(f"/keys/{key}", json={"value": 1}, headers=admin),
        await client.get(f"/keys/{key}", headers=admin),
        await client.patch(f"/keys/{key}", json={"value": 2}, headers=admin),
        await client.get(f"/keys?namespace={unique_prefix}", headers=admin),
        await client.get(f"/keys/{key}/history", headers=admin),
        await client.delete(f"/keys/{key}", headers=admin),
        await client.get(f"/keys/{key}", headers=admin),
        await client.get(f"/keys/{key}"),  # 401
        await client.put(f"/keys/{key}..", json={"value": 1}, headers=admin),  # 400
        await client.get("/health"),
    ]
    ids = [r.headers.get("X-Request-Id") for r in responses]
    assert all(ids), ids
    assert len(set(ids)) == len(ids)


async def test_sane_client_request_id_is_echoed(client: Client, admin: dict[str, str], unique_prefix: str) -> None:
    rid = f"req-{unique_prefix}:1.a_b"
    resp = await client.put(f"/keys/{unique_prefix}.echo", json={"value": 1}, headers={**admin, "X-Request-Id": rid})
    assert resp.status == 201
    assert resp.headers["X-Request-Id"] == rid
    resp = await client.get(f"/keys/{unique_prefix}.missing", headers={**admin, "X-Request-Id": rid})
    assert resp.status == 404
    assert resp.headers["X-Request-Id"] == rid


async def test_insane_client_request_id_is_replaced(client: Client, admin: dict[str, str], unique_prefix: str) -> None:
    bad = "x" * 300
    resp = await client.get(f"/keys/{unique_prefix}.missing", headers={**admin, "X-Request-Id": bad})
    assert resp.status == 404
    assert resp.headers["X-Request-Id"] not in ("", bad)


# --- concurrency ----------------------------------------------------------------------------------


async def test_concurrent_patches_get_distinct_consecutive_versions(
    client: Client, admin: dict[str, str], unique_prefix: str
) -> None:
    key = f"{unique_prefix}.concurrent"
    await create(client, key, admin, value=0)

    async def patch(i: int) -> tuple[int, int]:
        resp = await client.patch(f"/keys/{key}", json={"value": i}, headers=admin)
        body = await resp.json()
        return resp.status, body.get("version", -1)

    results = await asyncio.gather(*(patch(i) for i in range(1, 21)))
    assert [status for status, _ in results] == [200] * 20
    assert sorted(version for _, version in results) == list(range(2, 22))
    fetched = await get_json(client, f"/keys/{key}", admin)
    assert fetched["version"] == 21
    history = await get_json(client, f"/keys/{key}/history", admin)
    assert [v["version"] for v in history["versions"]] == list(range(21, 0, -1))
    # the current value is the one written by the PATCH that got version 21
    winner = next(i for i, (_, version) in enumerate(results, start=1) if version == 21)
    assert fetched["value"] == winner


async def test_concurrent_creates_of_one_key_yield_exactly_one_201(
    client: Client, admin: dict[str, str], unique_prefix: str
) -> None:
    key = f"{unique_prefix}.race"

    async def put_once(i: int) -> tuple[int, Any]:
        resp = await client.put(f"/keys/{key}", json={"value": i}, headers=admin)
        return resp.status, await resp.json()

    results = await asyncio.gather(*(put_once(i) for i in range(10)))
    statuses = sorted(status for status, _ in results)
    assert statuses == [200] * 9 + [201], results
    assert sorted(body["version"] for _, body in results) == list(range(1, 11))
    assert next(body for status, body in results if status == 201)["version"] == 1
    assert (await get_json(client, f"/keys/{key}", admin))["version"] == 10


async def test_response_timestamps_are_utc_z(client: Client, admin: dict[str, str], unique_prefix: str) -> None:
    before = time.time()
    created = await create(client, f"{unique_prefix}.ts", admin, value=1, ttl=10)
    moment = at(created["lastModified"]).timestamp()
    assert before - 2 <= moment <= time.time() + 2


async def test_list_page_reads_only_the_namespace_range(
    client: Client, admin: dict[str, str], pg: Any, unique_prefix: str
) -> None:
    """Page 1 of a namespace starts its index scan at the namespace, not at the first key of the table:
    no row outside the namespace is read and filtered away. Before, with many keys sorting before the
    namespace, Postgres walked the index from the start and filtered them all (0.5 s for 900,000)."""
    from shared.sql import keys as keys_sql
    from shared.timeutil import utcnow

    early, ns = f"{unique_prefix}.aaa", f"{unique_prefix}.zzz"
    await create(client, f"{ns}.k", admin, value=1)
    params = {**keys_sql.LiveRange(ns, utcnow()).params(), "after": "", "limit": 101}
    async with pg.acquire() as conn, conn.cursor() as cur:
        try:  # 20,000 rows just before the namespace, 3,000 more in it (a big namespace, sorting late)
            for prefix, count in ((early, 20_000), (ns, 3_000)):
                await cur.execute(
                    "INSERT INTO keys (key, version, value_enc, creator, deleted, created_at, last_modified)"
                    " SELECT %(prefix)s || '.bulk' || g, 1, '\\x00', 'nobody', false, now(), now()"
                    "   FROM generate_series(1, %(count)s) g",
                    {"prefix": prefix, "count": count},
                )
            await cur.execute("ANALYZE keys")
            await cur.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + keys_sql.LIST_PAGE, params)
            (plan,) = await cur.fetchone()
        finally:
            for prefix in (early, ns):
                await cur.execute("DELETE FROM keys WHERE key LIKE %(pattern)s", {"pattern": prefix + ".bulk%"})

    def removed(node: dict[str, Any]) -> int:
        return node.get("Rows Removed by Filter", 0) + sum(removed(child) for child in node.get("Plans", []))

    top = plan[0]["Plan"]
    assert top["Actual Rows"] == 101, top
    assert removed(top) == 0, json.dumps(plan, indent=1)
