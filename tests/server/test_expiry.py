"""TTL expiry (SPEC §3): reads stop at the deadline, the expiry worker soft-deletes the key (version +1)
and an ``expired`` event reaches watchers within 1 s of the deadline.

A real worker runs in-process (``expiry_worker.main.create_app`` on a TestServer) where a test needs
the loop; ``ExpiryWorker.run_once()`` is called directly where the test controls when expiry happens.
The database is shared, so ``run_once`` may also expire other tests' keys; assertions look at ours only.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import aiopg
import pytest
from aiohttp.test_utils import TestClient
from support import WatchRecorder, assert_not_found

from expiry_worker.expiry import ExpiryWorker
from expiry_worker.metrics import ExpiryMetrics
from shared.audit.chain import AuditChain
from shared.settings import Settings
from shared.timeutil import parse_rfc3339

Client = TestClient[Any, Any]
EXPIRY_ACTOR = "system:expiry"


# --- helpers --------------------------------------------------------------------------------------


class Watcher(WatchRecorder):
    """One real /watch connection; change events with their arrival time."""

    async def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float) -> int:
        """Index of the first event matching ``predicate``, waiting up to ``timeout`` s for it."""

        def found() -> bool:
            return any(predicate(event) for event in self.events)

        if not await self.holds(found, timeout):
            raise AssertionError(f"no matching event within {timeout} s: {self.events}")
        return next(i for i, event in enumerate(self.events) if predicate(event))


async def open_watch(session: aiohttp.ClientSession, url: Any, token: str, patterns: list[str]) -> Watcher:
    watcher: Watcher = await Watcher.open(session, url, token, patterns)
    return watcher


@pytest.fixture
def admin(token: Callable[..., str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {token()}"}


@pytest.fixture
async def expiry_app(aiohttp_server: Any, settings: Settings) -> Any:
    """A real expiry worker (its loop running) in this process."""
    from expiry_worker.main import create_app

    return await aiohttp_server(create_app(settings))


def make_worker(settings: Settings, pool: aiopg.Pool) -> ExpiryWorker:
    return ExpiryWorker(settings.postgres_url, pool, ExpiryMetrics("test"), AuditChain.from_settings(settings))


async def put(client: Client, key: str, headers: dict[str, str], **body: Any) -> tuple[int, dict[str, Any]]:
    resp = await client.put(f"/keys/{key}", json=body, headers=headers)
    return resp.status, await resp.json()


async def get_key(client: Client, key: str, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    resp = await client.get(f"/keys/{key}", headers=headers)
    return resp.status, await resp.json()


async def history(client: Client, key: str, headers: dict[str, str]) -> list[dict[str, Any]]:
    resp = await client.get(f"/keys/{key}/history", headers=headers)
    assert resp.status == 200, await resp.text()
    versions: list[dict[str, Any]] = (await resp.json())["versions"]
    return versions


async def key_row(pg: aiopg.Pool, key: str) -> tuple[int, bool]:
    """(version, deleted) straight from the keys table."""
    async with pg.acquire() as conn, conn.cursor() as cur:
        await cur.execute("SELECT version, deleted FROM keys WHERE key = %s", (key,))
        version, deleted = await cur.fetchone()
        return int(version), bool(deleted)


def deadline_of(written: tuple[int, dict[str, Any]]) -> float:
    """The deadline a write's answer gives (not a GET's: on a loaded machine the GET can come after it)."""
    status, body = written
    assert status in (200, 201), body
    return parse_rfc3339(body["expiresAt"]).timestamp()


async def sleep_until(moment: float) -> None:
    await asyncio.sleep(max(0.0, moment - time.time()))


# --- with a running worker --------------------------------------------------------------------------


async def test_ttl_expiry_emits_expired_event_within_a_second_of_the_deadline(
    client: Client,
    notifier_server: Any,
    expiry_app: Any,
    token: Callable[..., str],
    admin: dict[str, str],
    unique_prefix: str,
) -> None:
    key = f"{unique_prefix}.session.token"
    async with aiohttp.ClientSession() as session:
        w = await open_watch(session, notifier_server.make_url("/watch"), token(), [key])
        status, body = await put(client, key, admin, value="secret", ttl=1)
        assert (status, body["version"]) == (201, 1), body
        deadline = deadline_of((status, body))
        index = await w.wait_for(lambda e: e["event"] == "expired", timeout=10)
        received = w.received_at[index]
        await w.close()
    event = w.events[index]
    assert set(event) == {"event", "key", "version", "revision", "lastModified"}, event  # no value
    assert (event["event"], event["key"], event["version"]) == ("expired", key, 2)
    assert isinstance(event["revision"], int) and event["revision"] > w.events[0]["revision"]
    assert [e["version"] for e in w.events] == [1, 2]
    lateness = received - deadline
    # SPEC §3 targets 1 s from deadline to event; 1.5 s absorbs CI scheduling noise.
    assert 0 <= lateness <= 1.5, lateness
    print(f"expired event {lateness * 1000:.0f} ms after the deadline")

    assert_not_found(*await get_key(client, key, admin))
    resp = await client.get("/keys", params={"since_version": str(w.events[0]["revision"])}, headers=admin)
    assert resp.status == 200, await resp.text()
    assert [e for e in (await resp.json())["events"] if e["key"] == key] == [event]  # the poll sees it too
    newest = (await history(client, key, admin))[0]
    assert (newest["version"], newest["event"], newest["actor"], newest["value"]) == (2, "expired", EXPIRY_ACTOR, None)
    resp = await client.get("/audit", params={"key": key}, headers=admin)
    assert resp.status == 200, await resp.text()
    records = (await resp.json())["records"]
    expires = [r for r in records if r["action"] == "expire"]
    assert len(expires) == 1, records
    assert (expires[0]["actor"], expires[0]["key"], expires[0]["version"], expires[0]["outcome"]) == (
        EXPIRY_ACTOR,
        key,
        2,
        "ok",
    )


async def test_patch_before_the_deadline_restarts_the_countdown(
    client: Client,
    notifier_server: Any,
    expiry_app: Any,
    token: Callable[..., str],
    admin: dict[str, str],
    unique_prefix: str,
) -> None:
    key = f"{unique_prefix}.lease"
    async with aiohttp.ClientSession() as session:
        w = await open_watch(session, notifier_server.make_url("/watch"), token(), [key])
        old_deadline = deadline_of(await put(client, key, admin, value=1, ttl=2))
        await asyncio.sleep(1.0)
        resp = await client.patch(f"/keys/{key}", json={"value": 2}, headers=admin)
        new_deadline = deadline_of((resp.status, await resp.json()))
        assert new_deadline >= old_deadline + 0.9, (old_deadline, new_deadline)

        await sleep_until(old_deadline + 0.4)
        assert [e["event"] for e in w.events] == ["update", "update"], w.events
        status, body = await get_key(client, key, admin)
        assert (status, body["version"], body["value"]) == (200, 2, 2), body

        index = await w.wait_for(lambda e: e["event"] == "expired", timeout=10)
        received = w.received_at[index]
        await w.close()
    assert w.events[index]["version"] == 3
    # Target 1 s after the (new) deadline; 1.5 s absorbs CI noise. Never before it.
    assert 0 <= received - new_deadline <= 1.5, received - new_deadline
    assert_not_found(*await get_key(client, key, admin))


# --- run_once, without a worker loop --------------------------------------------------------------


async def test_expired_key_is_gone_at_the_deadline_and_run_once_expires_it_exactly_once(
    client: Client, pg: aiopg.Pool, settings: Settings, admin: dict[str, str], unique_prefix: str
) -> None:
    keys = [f"{unique_prefix}.k{i}" for i in range(3)]
    deadline = max([deadline_of(await put(client, key, admin, value=key, ttl=1)) for key in keys])
    await sleep_until(deadline + 0.05)
    for key in keys:
        assert_not_found(*await get_key(client, key, admin))
        assert await key_row(pg, key) == (1, False)  # nobody has expired it yet: reads alone hide it
    resp = await client.get("/keys", params={"namespace": unique_prefix}, headers=admin)
    assert resp.status == 200, await resp.text()
    assert await resp.json() == {"keys": [], "total": 0}

    first, second = make_worker(settings, pg), make_worker(settings, pg)
    counts = await asyncio.gather(first.run_once(), second.run_once())
    assert sum(counts) >= len(keys), counts
    assert await first.run_once() >= 0
    await second.run_once()

    for key in keys:
        assert await key_row(pg, key) == (2, True)
        versions = await history(client, key, admin)
        assert [(v["version"], v["event"], v["actor"]) for v in versions] == [
            (2, "expired", EXPIRY_ACTOR),
            (1, "update", "admin-user"),
        ]
        assert_not_found(*await get_key(client, key, admin))
    async with pg.acquire() as conn, conn.cursor() as cur:
        await cur.execute(
            "SELECT key, version, event FROM outbox WHERE key LIKE %s ORDER BY key, version", (unique_prefix + ".%",)
        )
        rows = await cur.fetchall()
    assert rows == [(key, v, e) for key in keys for v, e in ((1, "update"), (2, "expired"))]


async def test_key_recreated_after_expiry_continues_versions(
    client: Client, pg: aiopg.Pool, settings: Settings, admin: dict[str, str], unique_prefix: str
) -> None:
    key = f"{unique_prefix}.token"
    await sleep_until(deadline_of(await put(client, key, admin, value="a", ttl=1)) + 0.05)
    await make_worker(settings, pg).run_once()
    assert await key_row(pg, key) == (2, True)

    status, body = await put(client, key, admin, value="b")
    assert (status, body["key"], body["version"]) == (201, key, 3), body
    status, body = await get_key(client, key, admin)
    assert (status, body["value"], body["version"], body["ttl"], body["expiresAt"]) == (200, "b", 3, None, None)
    versions = await history(client, key, admin)
    assert [(v["version"], v["event"]) for v in versions] == [(3, "update"), (2, "expired"), (1, "update")]


async def test_key_recreated_after_its_deadline_before_any_worker_ran_continues_versions(
    client: Client, pg: aiopg.Pool, admin: dict[str, str], unique_prefix: str
) -> None:
    key = f"{unique_prefix}.token"
    await sleep_until(deadline_of(await put(client, key, admin, value="a", ttl=1)) + 0.05)
    assert await key_row(pg, key) == (1, False)

    status, body = await put(client, key, admin, value="b")
    assert (status, body["version"]) == (201, 3), body  # 2 is the expiry, recorded on the way
    versions = await history(client, key, admin)
    assert [(v["version"], v["event"]) for v in versions] == [(3, "update"), (2, "expired"), (1, "update")]
    assert versions[1]["actor"] == EXPIRY_ACTOR


async def test_deleted_key_is_never_expired(
    client: Client, pg: aiopg.Pool, settings: Settings, admin: dict[str, str], unique_prefix: str
) -> None:
    key = f"{unique_prefix}.gone"
    deadline = deadline_of(await put(client, key, admin, value=1, ttl=1))
    resp = await client.delete(f"/keys/{key}", headers=admin)
    assert resp.status == 204, await resp.text()
    await sleep_until(deadline + 0.05)
    worker = make_worker(settings, pg)
    await worker.run_once()
    await worker.run_once()
    assert await key_row(pg, key) == (2, True)
    versions = await history(client, key, admin)
    assert [(v["version"], v["event"]) for v in versions] == [(2, "delete"), (1, "update")]
    resp = await client.get("/audit", params={"key": key}, headers=admin)
    assert resp.status == 200
    assert not [r for r in (await resp.json())["records"] if r["action"] == "expire"]


async def test_deleted_key_is_never_expired_by_a_running_worker(
    client: Client, pg: aiopg.Pool, expiry_app: Any, admin: dict[str, str], unique_prefix: str
) -> None:
    key = f"{unique_prefix}.gone"
    deadline = deadline_of(await put(client, key, admin, value=1, ttl=1))
    resp = await client.delete(f"/keys/{key}", headers=admin)
    assert resp.status == 204, await resp.text()
    await sleep_until(deadline + 0.6)
    assert await key_row(pg, key) == (2, True)
    versions = await history(client, key, admin)
    assert [v["event"] for v in versions] == ["delete", "update"]
