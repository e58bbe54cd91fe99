"""What a write leaves in Postgres and Redis: rows, ciphertext, cache behaviour, re-encryption, connections.

Migrations are tested in tests/ops/test_migrate.py."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import sys
from collections.abc import Callable
from typing import Any
from uuid import uuid4

import aiopg
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient
from support import eventually, expect_error

from api_server.cache import cache_key
from dynconfig_admin.reencrypt import reencrypt
from shared.security.crypto import DecryptionError, Keyring
from shared.settings import Settings
from tests.conftest import TEST_ENCRYPTION_KEYS, process_env

Client = TestClient[Any, Any]
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def admin(token: Callable[..., str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {token()}"}


async def fetch(pool: aiopg.Pool, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    async with pool.acquire() as conn, conn.cursor() as cur:
        await cur.execute(sql, args)
        return list(await cur.fetchall())


def compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


# --- one write, one row in each table --------------------------------------------------------------


async def _rows_for(pg: aiopg.Pool, key: str) -> dict[str, list[tuple[Any, ...]]]:
    return {
        "keys": await fetch(pg, "SELECT version, deleted, value_enc IS NULL FROM keys WHERE key = %s", key),
        "history": await fetch(
            pg, "SELECT version, event, actor FROM key_history WHERE key = %s ORDER BY version", key
        ),
        "outbox": await fetch(pg, "SELECT version, event FROM outbox WHERE key = %s ORDER BY id", key),
        "audit": await fetch(
            pg,
            "SELECT action, version, actor, outcome, request_id FROM audit_log"
            " WHERE key = %s AND version IS NOT NULL ORDER BY id",
            key,
        ),
    }


async def test_each_write_adds_one_row_to_keys_history_outbox_and_audit(
    client: Client, admin: dict[str, str], pg: aiopg.Pool, unique_prefix: str
) -> None:
    key = f"{unique_prefix}.rows"
    expected_audit: list[tuple[Any, ...]] = []

    resp = await client.put(f"/keys/{key}", json={"value": 1}, headers=admin)
    assert resp.status == 201
    expected_audit.append(("create", 1, "admin-user", "ok", resp.headers["X-Request-Id"]))
    rows = await _rows_for(pg, key)
    assert rows["keys"] == [(1, False, False)]
    assert rows["history"] == [(1, "update", "admin-user")]
    assert rows["outbox"] == [(1, "update")]
    assert rows["audit"] == expected_audit

    resp = await client.put(f"/keys/{key}", json={"value": 2}, headers=admin)
    assert resp.status == 200
    expected_audit.append(("replace", 2, "admin-user", "ok", resp.headers["X-Request-Id"]))
    resp = await client.patch(f"/keys/{key}", json={"value": 3}, headers=admin)
    assert resp.status == 200
    expected_audit.append(("patch", 3, "admin-user", "ok", resp.headers["X-Request-Id"]))
    rows = await _rows_for(pg, key)
    assert rows["keys"] == [(3, False, False)]
    assert rows["history"] == [(1, "update", "admin-user"), (2, "update", "admin-user"), (3, "update", "admin-user")]
    assert rows["outbox"] == [(1, "update"), (2, "update"), (3, "update")]
    assert rows["audit"] == expected_audit

    resp = await client.delete(f"/keys/{key}", headers={**admin, "X-Request-Id": f"rid-{unique_prefix}"})
    assert resp.status == 204
    assert resp.headers["X-Request-Id"] == f"rid-{unique_prefix}"
    expected_audit.append(("delete", 4, "admin-user", "ok", f"rid-{unique_prefix}"))
    rows = await _rows_for(pg, key)
    assert rows["keys"] == [(4, True, True)]
    assert rows["history"][-1] == (4, "delete", "admin-user")
    assert len(rows["history"]) == 4
    assert rows["outbox"] == [(1, "update"), (2, "update"), (3, "update"), (4, "delete")]
    assert rows["audit"] == expected_audit


async def test_a_write_commits_its_revision_with_it(
    client: Client, admin: dict[str, str], pg: aiopg.Pool, unique_prefix: str
) -> None:
    """The key, its history row and its outbox row carry the revision the answer gives."""
    key = f"{unique_prefix}.outbox"
    response = await client.put(f"/keys/{key}", json={"value": 1}, headers=admin)
    assert response.status == 201
    revision = (await response.json())["revision"]
    assert await fetch(pg, "SELECT version, event, revision FROM outbox WHERE key = %s", key) == [
        (1, "update", revision)
    ]
    assert await fetch(pg, "SELECT revision FROM key_history WHERE key = %s", key) == [(revision,)]
    assert await fetch(pg, "SELECT revision FROM keys WHERE key = %s", key) == [(revision,)]
    assert await fetch(pg, "SELECT head >= %s FROM relay_state", revision) == [(True,)]


async def _poll_audit(pg: aiopg.Pool, sql: str, *args: Any, seconds: float = 2.0) -> list[tuple[Any, ...]]:
    return await eventually(lambda: fetch(pg, sql, *args), seconds, f"audit rows: {sql} {args}")


async def test_denied_create_leaves_no_rows_but_a_denied_audit_record(
    client: Client, token: Callable[..., str], pg: aiopg.Pool, unique_prefix: str
) -> None:
    key = f"{unique_prefix}.denied"
    user = f"{unique_prefix}-intruder"
    resp = await client.put(f"/keys/{key}", json={"value": 1}, headers={"Authorization": f"Bearer {token(user)}"})
    await expect_error(resp, 403, "Forbidden")
    rid = resp.headers["X-Request-Id"]
    assert await fetch(pg, "SELECT 1 FROM keys WHERE key = %s", key) == []
    assert await fetch(pg, "SELECT 1 FROM key_history WHERE key = %s", key) == []
    assert await fetch(pg, "SELECT 1 FROM outbox WHERE key = %s", key) == []
    audit = await _poll_audit(pg, "SELECT actor, outcome, version, request_id FROM audit_log WHERE key = %s", key)
    assert audit == [(user, "denied", None, rid)]


async def test_denied_patch_changes_nothing_and_is_audited(
    client: Client, admin: dict[str, str], token: Callable[..., str], pg: aiopg.Pool, unique_prefix: str
) -> None:
    key = f"{unique_prefix}.deniedpatch"
    user = f"{unique_prefix}-reader"
    body = {"value": 1, "acls": {"read": [user], "write": ["admin-user"]}}
    assert (await client.put(f"/keys/{key}", json=body, headers=admin)).status == 201
    resp = await client.patch(f"/keys/{key}", json={"value": 2}, headers={"Authorization": f"Bearer {token(user)}"})
    await expect_error(resp, 403, "Forbidden")
    assert await fetch(pg, "SELECT version FROM keys WHERE key = %s", key) == [(1,)]
    assert await fetch(pg, "SELECT version FROM key_history WHERE key = %s", key) == [(1,)]
    assert await fetch(pg, "SELECT version FROM outbox WHERE key = %s", key) == [(1,)]
    audit = await _poll_audit(
        pg, "SELECT actor, outcome, request_id FROM audit_log WHERE key = %s AND outcome <> 'ok'", key
    )
    assert audit == [(user, "denied", resp.headers["X-Request-Id"])]


# --- encryption at rest ----------------------------------------------------------------------------


async def _redis_bytes(redis_client: aioredis.Redis) -> list[bytes]:
    """Every Redis key under ``dynconfig:`` and everything stored in it."""
    found: list[Any] = []
    r: Any = redis_client  # redis-py's stubs type replies as bytes | str; this client returns bytes
    async for name in r.scan_iter(match="dynconfig:*", count=1000):
        found.append(name)
        kind = (await r.type(name)).decode()
        if kind == "string":
            found.append(await r.get(name) or b"")
        elif kind == "hash":
            for field, value in (await r.hgetall(name)).items():
                found.extend([field, value])
        elif kind == "zset":
            found.extend(member for member, _ in await r.zrange(name, 0, -1, withscores=True))
        elif kind == "list":
            found.extend(await r.lrange(name, 0, -1))
        elif kind == "set":
            found.extend(await r.smembers(name))
        elif kind == "stream":
            for _, entry in await r.xrange(name):
                for field, value in entry.items():
                    found.extend([field, value])
    assert all(isinstance(item, bytes) for item in found)
    return found


async def test_values_are_encrypted_in_postgres_redis_and_absent_from_audit(
    client: Client, admin: dict[str, str], pg: aiopg.Pool, redis_client: aioredis.Redis, unique_prefix: str
) -> None:
    key = f"{unique_prefix}.secret"
    secret = f"PLAINTEXT-{uuid4().hex}"
    value = {"password": secret, "n": 1}
    assert (await client.put(f"/keys/{key}", json={"value": value}, headers=admin)).status == 201
    assert (
        await client.patch(f"/keys/{key}", json={"value": {"password": secret, "n": 2}}, headers=admin)
    ).status == 200
    fetched = await client.get(f"/keys/{key}", headers=admin)  # fills the cache, audits a read
    assert (await fetched.json())["value"] == {"password": secret, "n": 2}
    # the read's audit row, written by the audit writer in the background, is among the rows searched
    await _poll_audit(pg, "SELECT 1 FROM audit_log WHERE key = %s AND action = 'read'", key)

    needles = [secret.encode(), base64.b64encode(secret.encode()), secret.encode().hex().encode()]

    (blob,) = (bytes(row[0]) for row in await fetch(pg, "SELECT value_enc FROM keys WHERE key = %s", key))
    history = [bytes(row[0]) for row in await fetch(pg, "SELECT value_enc FROM key_history WHERE key = %s", key)]
    assert len(history) == 2
    for stored in [blob, *history]:
        assert not any(needle in stored for needle in needles)

    cached = await _redis_bytes(redis_client)
    assert cache_key(key).encode() in cached  # the cache does hold the key …
    assert not any(needle in item for item in cached for needle in needles)  # … as ciphertext only

    audit = await fetch(pg, "SELECT a::text FROM audit_log a WHERE key = %s", key)
    assert len(audit) >= 3
    assert not any(secret in row[0] for row in audit)

    keyring = Keyring(TEST_ENCRYPTION_KEYS)
    assert keyring.decrypt(blob, aad=key) == compact({"password": secret, "n": 2})
    assert sorted(keyring.decrypt(h, aad=key) for h in history) == sorted(
        [compact(value), compact({"password": secret, "n": 2})]
    )


async def test_blob_is_bound_to_its_key_name(
    private_db: str,
    make_client: Any,
    settings: Settings,
    admin: dict[str, str],
    redis_client: aioredis.Redis,
    unique_prefix: str,
) -> None:
    client = await make_client(settings.replace(postgres_url=private_db))
    source, target = f"{unique_prefix}.source", f"{unique_prefix}.target"
    secret = f"SOURCE-{uuid4().hex}"
    assert (await client.put(f"/keys/{source}", json={"value": secret}, headers=admin)).status == 201
    assert (await client.put(f"/keys/{target}", json={"value": "target"}, headers=admin)).status == 201
    async with aiopg.create_pool(private_db, minsize=1, maxsize=2) as pool:
        async with pool.acquire() as conn, conn.cursor() as cur:
            await cur.execute(
                "UPDATE keys SET value_enc = (SELECT value_enc FROM keys WHERE key = %s) WHERE key = %s",
                (source, target),
            )
        (blob,) = (bytes(r[0]) for r in await fetch(pool, "SELECT value_enc FROM keys WHERE key = %s", target))
    await redis_client.delete(cache_key(target))

    with pytest.raises(DecryptionError):
        Keyring(TEST_ENCRYPTION_KEYS).decrypt(blob, aad=target)
    assert Keyring(TEST_ENCRYPTION_KEYS).decrypt(blob, aad=source) == compact(secret)

    resp = await client.get(f"/keys/{target}", headers=admin)
    body = await expect_error(resp, 500, "Internal Server Error")
    assert set(body) == {"error", "message"}
    assert secret not in await resp.text()
    assert "Traceback" not in body["message"]


# --- the keyring and settings ----------------------------------------------------------------------


def test_keyring_rotation_encrypts_with_new_key_and_still_decrypts_old() -> None:
    old, new = ("old", os.urandom(32)), ("new", os.urandom(32))
    before = Keyring((old,))
    old_blob = before.encrypt(b'"v"', aad="a.key")
    assert Keyring.key_id_of(old_blob) == "old"
    rotated = Keyring((new, old))
    assert rotated.active_id == "new"
    new_blob = rotated.encrypt(b'"v"', aad="a.key")
    assert Keyring.key_id_of(new_blob) == "new"
    assert rotated.needs_rotation(old_blob) and not rotated.needs_rotation(new_blob)
    assert rotated.decrypt(old_blob, aad="a.key") == b'"v"'
    assert rotated.decrypt(new_blob, aad="a.key") == b'"v"'
    with pytest.raises(DecryptionError):
        before.decrypt(new_blob, aad="a.key")


def test_keyring_same_plaintext_encrypts_differently() -> None:
    ring = Keyring((("k", os.urandom(32)),))
    assert ring.encrypt(b"1", aad="k1") != ring.encrypt(b"1", aad="k1")


def test_keyring_unknown_key_id_fails() -> None:
    blob = Keyring((("other", os.urandom(32)),)).encrypt(b"1", aad="x")
    with pytest.raises(DecryptionError):
        Keyring((("mine", os.urandom(32)),)).decrypt(blob, aad="x")


def test_keyring_same_id_different_secret_fails() -> None:
    blob = Keyring((("k", os.urandom(32)),)).encrypt(b"1", aad="x")
    with pytest.raises(DecryptionError):
        Keyring((("k", os.urandom(32)),)).decrypt(blob, aad="x")


@pytest.mark.parametrize("position", [0, 1, 5, 20, -1])
def test_keyring_tampered_blob_fails(position: int) -> None:
    ring = Keyring((("k", os.urandom(32)),))
    blob = bytearray(ring.encrypt(b'{"a":1}', aad="x"))
    blob[position] ^= 0x01
    with pytest.raises(DecryptionError):
        ring.decrypt(bytes(blob), aad="x")


@pytest.mark.parametrize("blob", [b"", b"\x01", b"\x01k", b"\x05kk"])
def test_keyring_truncated_blob_fails(blob: bytes) -> None:
    with pytest.raises(DecryptionError):
        Keyring((("k", os.urandom(32)),)).decrypt(blob, aad="x")


def test_keyring_wrong_aad_fails() -> None:
    ring = Keyring((("k", os.urandom(32)),))
    with pytest.raises(DecryptionError):
        ring.decrypt(ring.encrypt(b"1", aad="a"), aad="b")


def test_keyring_needs_at_least_one_key() -> None:
    with pytest.raises(ValueError):
        Keyring(())


def _material(secret: bytes) -> list[str]:
    return [secret.hex(), base64.b64encode(secret).decode(), repr(secret)[2:-1], str(list(secret))[1:40]]


def test_keyring_repr_shows_no_key_material() -> None:
    secrets = [os.urandom(32), os.urandom(32)]
    ring = Keyring((("a", secrets[0]), ("b", secrets[1])))
    for text in (repr(ring), str(ring)):
        for secret in secrets:
            assert not any(m in text for m in _material(secret)), text


def test_settings_repr_shows_no_secrets(settings: Settings) -> None:
    secret = os.urandom(32)
    custom = settings.replace(
        postgres_url="postgresql://dynconfig:pg-pass-9f3a@db.example:5432/dynconfig",
        redis_url="redis://:redis-pass-77c1@cache.example:6379/0",
        encryption_keys=(("k9", secret),),
    )
    for text in (repr(custom), str(custom)):
        assert "pg-pass-9f3a" not in text
        assert "redis-pass-77c1" not in text
        assert not any(m in text for m in _material(secret)), text


# --- the Redis cache -------------------------------------------------------------------------------


async def test_get_after_put_is_served_and_cached(
    client: Client, admin: dict[str, str], redis_client: aioredis.Redis, unique_prefix: str
) -> None:
    key = f"{unique_prefix}.cached"
    assert (await client.put(f"/keys/{key}", json={"value": "one"}, headers=admin)).status == 201
    for _ in range(3):
        body = await (await client.get(f"/keys/{key}", headers=admin)).json()
        assert (body["value"], body["version"]) == ("one", 1)
    assert await redis_client.hget(cache_key(key), "version") == b"1"
    assert (await client.put(f"/keys/{key}", json={"value": "two"}, headers=admin)).status == 200
    body = await (await client.get(f"/keys/{key}", headers=admin)).json()
    assert (body["value"], body["version"]) == ("two", 2)
    assert await redis_client.hget(cache_key(key), "version") == b"2"
    assert (await client.delete(f"/keys/{key}", headers=admin)).status == 204
    await expect_error(await client.get(f"/keys/{key}", headers=admin), 404, "Not Found")


async def test_write_while_redis_down_is_never_read_stale_after_recovery(
    client: Client, admin: dict[str, str], redis_client: aioredis.Redis, redis_server: Any, unique_prefix: str
) -> None:
    key = f"{unique_prefix}.stale"
    gone = f"{unique_prefix}.stalegone"
    for k in (key, gone):
        assert (await client.put(f"/keys/{k}", json={"value": "old"}, headers=admin)).status == 201
        assert (await (await client.get(f"/keys/{k}", headers=admin)).json())["value"] == "old"
    # What the cache held before the outage (the test Redis does not persist; we put it back, as a
    # Redis that was only unreachable, e.g. partitioned, would still have it).
    saved: dict[str, Any] = {k: await redis_client.hgetall(cache_key(k)) for k in (key, gone)}
    assert all(entry.get(b"version") == b"1" for entry in saved.values())

    redis_server.stop()
    resp = await client.put(f"/keys/{key}", json={"value": "new"}, headers=admin)
    assert resp.status == 200, await resp.text()
    assert (await client.delete(f"/keys/{gone}", headers=admin)).status == 204
    body = await (await client.get(f"/keys/{key}", headers=admin)).json()
    assert (body["value"], body["version"]) == ("new", 2)
    await expect_error(await client.get(f"/keys/{gone}", headers=admin), 404, "Not Found")

    redis_server.start()
    fresh = aioredis.Redis.from_url(redis_server.url)
    try:
        for k, entry in saved.items():
            await fresh.hset(cache_key(k), mapping=entry)
            await fresh.pexpire(cache_key(k), 60_000)
        refilled = unclean = False

        async def settled() -> bool:
            nonlocal refilled, unclean
            body = await (await client.get(f"/keys/{key}", headers=admin)).json()
            assert (body["value"], body["version"]) == ("new", 2), body
            await expect_error(await client.get(f"/keys/{gone}", headers=admin), 404, "Not Found")
            refilled = await fresh.hget(cache_key(key), "version") == b"2"
            # A 404 is decided on Postgres and fills nothing: the entry of `gone` stays unclean.
            unclean = int(await fresh.hget(cache_key(gone), "pending") or 0) >= 2
            return refilled and unclean

        with contextlib.suppress(AssertionError):  # the assertion below says which one is missing
            await eventually(settled, 3.0, "the live key refilled and the gone one unclean", interval=0.1)
        # the pending invalidation made both entries unclean; the read of the live key filled it again
        assert refilled and unclean
    finally:
        await fresh.aclose()


async def test_crud_works_with_redis_down_and_health_reports_it(
    client: Client, admin: dict[str, str], redis_server: Any, unique_prefix: str
) -> None:
    key = f"{unique_prefix}.noredis"
    redis_server.stop()
    resp = await client.put(f"/keys/{key}", json={"value": 1, "ttl": 600}, headers=admin)
    assert resp.status == 201, await resp.text()
    body = await (await client.get(f"/keys/{key}", headers=admin)).json()
    assert (body["value"], body["version"], body["ttl"]) == (1, 1, 600)
    assert (await client.put(f"/keys/{key}", json={"value": 2}, headers=admin)).status == 200
    assert (await client.patch(f"/keys/{key}", json={"value": 3}, headers=admin)).status == 200
    body = await (await client.get(f"/keys/{key}", headers=admin)).json()
    assert (body["value"], body["version"]) == (3, 3)
    listed = await (await client.get(f"/keys?namespace={unique_prefix}", headers=admin)).json()
    assert listed["keys"] == [key]
    history = await (await client.get(f"/keys/{key}/history", headers=admin)).json()
    assert [v["version"] for v in history["versions"]] == [3, 2, 1]
    assert (await client.delete(f"/keys/{key}", headers=admin)).status == 204
    await expect_error(await client.get(f"/keys/{key}", headers=admin), 404, "Not Found")

    resp = await client.get("/health")
    assert resp.status == 200
    health = await resp.json()
    assert health["status"] == "healthy"
    assert health["checks"]["postgres"] == "ok"
    assert health["checks"]["redis"] != "ok"


# --- re-encryption ---------------------------------------------------------------------------------


async def _write_sample(client: Client, admin: dict[str, str], p: str) -> dict[str, Any]:
    """Keys with several versions (one deleted); returns the live values."""
    assert (await client.put(f"/keys/{p}.one", json={"value": {"n": 1}}, headers=admin)).status == 201
    assert (await client.put(f"/keys/{p}/two", json={"value": "a"}, headers=admin)).status == 201
    assert (await client.patch(f"/keys/{p}/two", json={"value": "b"}, headers=admin)).status == 200
    assert (await client.patch(f"/keys/{p}/two", json={"value": ["c"]}, headers=admin)).status == 200
    assert (await client.put(f"/keys/{p}.gone", json={"value": 0}, headers=admin)).status == 201
    assert (await client.delete(f"/keys/{p}.gone", headers=admin)).status == 204
    for key in (f"{p}.one", f"{p}/two"):  # fill the cache with ciphertext of the old key
        assert (await client.get(f"/keys/{key}", headers=admin)).status == 200
    return {f"{p}.one": {"n": 1}, f"{p}/two": ["c"]}


async def _assert_all_blobs_sealed_by(db_url: str, key_id: str) -> None:
    async with aiopg.create_pool(db_url, minsize=1, maxsize=2) as pool:
        blobs = await fetch(pool, "SELECT value_enc FROM keys WHERE value_enc IS NOT NULL")
        blobs += await fetch(pool, "SELECT value_enc FROM key_history WHERE value_enc IS NOT NULL")
    assert len(blobs) == 2 + 5  # live keys + non-deleted history rows
    assert {Keyring.key_id_of(bytes(b)) for (b,) in blobs} == {key_id}


async def _assert_reads_back(client: Client, admin: dict[str, str], p: str, live: dict[str, Any]) -> None:
    for key, value in live.items():
        resp = await client.get(f"/keys/{key}", headers=admin)
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["value"] == value
    history = await (await client.get(f"/keys/{p}/two/history", headers=admin)).json()
    assert [v["value"] for v in history["versions"]] == [["c"], "b", "a"]
    history = await (await client.get(f"/keys/{p}.gone/history", headers=admin)).json()
    assert [v["value"] for v in history["versions"]] == [None, 0]


async def test_reencrypt_reseals_every_value_with_the_active_key(
    private_db: str,
    make_client: Any,
    settings: Settings,
    admin: dict[str, str],
    redis_client: aioredis.Redis,
    unique_prefix: str,
) -> None:
    key_a, key_b = ("ka", os.urandom(32)), ("kb", os.urandom(32))
    client_a = await make_client(settings.replace(postgres_url=private_db, encryption_keys=(key_a,)))
    live = await _write_sample(client_a, admin, unique_prefix)
    await _assert_all_blobs_sealed_by(private_db, "ka")

    async with aiopg.create_pool(private_db, minsize=1, maxsize=2) as pool:
        changed, touched = await reencrypt(pool, Keyring((key_b, key_a)))
        assert changed == 2 + 5
        assert sorted(touched) == sorted(live)
        assert await reencrypt(pool, Keyring((key_b, key_a))) == (0, [])  # idempotent
    await _assert_all_blobs_sealed_by(private_db, "kb")

    # As the command does after re-sealing: drop cached entries that still hold the old ciphertext.
    await redis_client.delete(*(cache_key(k) for k in touched))
    client_b = await make_client(settings.replace(postgres_url=private_db, encryption_keys=(key_b,)))
    await _assert_reads_back(client_b, admin, unique_prefix, live)


async def test_reencrypt_command_reseals_and_clears_the_cache(
    private_db: str, make_client: Any, settings: Settings, admin: dict[str, str], unique_prefix: str
) -> None:
    key_a, key_b = ("ka", os.urandom(32)), ("kb", os.urandom(32))
    client_a = await make_client(settings.replace(postgres_url=private_db, encryption_keys=(key_a,)))
    live = await _write_sample(client_a, admin, unique_prefix)

    env = process_env(settings.replace(postgres_url=private_db, encryption_keys=(key_b, key_a)))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "dynconfig_admin.reencrypt",
        env=env,
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode == 0, output.decode()
    await _assert_all_blobs_sealed_by(private_db, "kb")

    client_b = await make_client(settings.replace(postgres_url=private_db, encryption_keys=(key_b,)))
    await _assert_reads_back(client_b, admin, unique_prefix, live)


# --- connections -----------------------------------------------------------------------------------


async def test_our_connections_never_jit_compile(settings: Settings) -> None:
    """JIT is off on every connection we open, pooled or listening, whatever the URL's own options:
    on a fresh database the planner JIT-compiled a batch's write statement (0.2-1.5 s a batch)."""
    from shared.db import connect_pool, listen

    url = settings.postgres_url + ("&" if "?" in settings.postgres_url else "?") + "options=-c%20work_mem%3D8MB"
    pool = await connect_pool(url, wait_seconds=5)
    try:
        async with pool.acquire() as conn, conn.cursor() as cur:
            await cur.execute("SELECT current_setting('jit'), current_setting('work_mem')")
            assert await cur.fetchone() == ("off", "8MB")
    finally:
        pool.close()
        await pool.wait_closed()
    seen: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    async def serve(conn: aiopg.Connection) -> None:
        async with conn.cursor() as cur:
            await cur.execute("SELECT current_setting('jit')")
            seen.set_result(await cur.fetchone())

    task = asyncio.create_task(listen(url, ["dynconfig_test"], serve, name="test"))
    try:
        assert await asyncio.wait_for(seen, 10) == ("off",)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
