"""The ``keyring`` check of ``/health`` (SPEC §1): a process whose keyring cannot open the values in
use is not ready, checked at start and periodically whether or not a request needed a value, so a
rollout in the wrong order never becomes ready. An extra old key is fine.

Each test has its own database: a value sealed by a key the session keyring lacks would make every
later process of the suite unready.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp.test_utils import TestClient
from support import ADMIN, eventually, first_health

from shared.settings import Settings

if TYPE_CHECKING:
    from tests.conftest import Proc

#: The check period the processes here run with (KEYRING_CHECK_SECONDS).
PERIOD = 1
#: How long past one period a process may take to show a change (a loaded CI machine).
MARGIN = 9.0

Keys = tuple[tuple[str, bytes], ...]


def ring(*keys: tuple[str, bytes]) -> str:
    """``ENCRYPTION_KEYS`` for ``keys`` (the first active)."""
    return ",".join(f"{kid}:{base64.b64encode(secret).decode()}" for kid, secret in keys)


async def health(url: str) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/health") as resp:
        return resp.status, await resp.json()


async def health_becomes(url: str, status: int, timeout: float) -> tuple[int, dict[str, Any]]:
    """Poll ``/health`` until it answers ``status``; that answer."""
    last: tuple[int, dict[str, Any]] | None = None

    async def answered() -> tuple[int, dict[str, Any]] | None:
        nonlocal last
        last = await health(url)
        return last if last[0] == status else None

    return await eventually(answered, timeout, lambda: f"{url}/health answering {status}; last {last}", interval=0.1)


def assert_cannot_open(answer: tuple[int, dict[str, Any]], key_id: str, why: str) -> None:
    status, body = answer
    assert status == 503, f"/health answered {status} {body}: the keyring cannot open values sealed by {key_id!r}"
    assert body["error"] == "Service Unavailable" and "keyring" in body["message"], body
    check = body["checks"]["keyring"]
    assert check.startswith(f"cannot open values sealed with key {key_id!r}") and why in check, check


async def put(url: str, token: str, key: str, value: Any) -> None:
    async with (
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as session,
        session.put(f"{url}/keys/{key}", json={"value": value}) as resp,
    ):
        assert resp.status in (200, 201), await resp.text()


# --- the real notifier ---------------------------------------------------------------------------


async def test_notifier_without_the_active_key_turns_unready_and_one_started_so_never_becomes_ready(
    spawn: Callable[..., Proc], private_db: str, token: Callable[..., str], unique_prefix: str
) -> None:
    k1, k2 = ("k1", os.urandom(32)), ("k2", os.urandom(32))
    common = {"POSTGRES_URL": private_db, "KEYRING_CHECK_SECONDS": str(PERIOD)}
    old = spawn("notifier", ENCRYPTION_KEYS=ring(k1), **common)  # ready: nothing is sealed by k2 yet
    api = spawn("api_server", ENCRYPTION_KEYS=ring(k2, k1), **common)
    await put(api.url, token(ADMIN), f"{unique_prefix}.sealed-by-k2", {"n": 1})

    # Periodically, though no watcher asked for the value: the notifier that was ready is not any more.
    assert_cannot_open(await health_becomes(old.url, 503, PERIOD + MARGIN), "k2", "not in ENCRYPTION_KEYS")

    # At start: a notifier started with k1 alone is never ready, from its first answer on.
    lacking = spawn("notifier", wait=False, ENCRYPTION_KEYS=ring(k1), **common)
    assert_cannot_open(await first_health(lacking), "k2", "not in ENCRYPTION_KEYS")

    # The same id with another secret is caught too: the newest value is really opened.
    forged = spawn("notifier", wait=False, ENCRYPTION_KEYS=ring(("k2", os.urandom(32)), k1), **common)
    assert_cannot_open(await first_health(forged), "k2", "fail authentication")

    # Started with k2 (the old k1 still listed): ready.
    rolled = spawn("notifier", ENCRYPTION_KEYS=ring(k2, k1), **common)
    status, body = await health(rolled.url)
    assert (status, body["checks"]["keyring"]) == (200, "ok"), body


# --- api_server and expiry_worker (app objects) ----------------------------------------------------


async def write_sealed_by(make_client: Any, settings: Settings, keys: Keys, token: str, key: str) -> None:
    writer: TestClient[Any, Any] = await make_client(settings.replace(encryption_keys=keys))
    resp = await writer.put(f"/keys/{key}", json={"value": 1}, headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 201, await resp.text()
    await writer.close()


async def test_api_server_health_names_the_keyring_it_lacks_and_accepts_an_extra_old_key(
    make_client: Any, settings: Settings, private_db: str, token: Callable[..., str], unique_prefix: str
) -> None:
    k1, k2 = ("k1", os.urandom(32)), ("k2", os.urandom(32))
    here = settings.replace(postgres_url=private_db)
    await write_sealed_by(make_client, here, (k2, k1), token(ADMIN), f"{unique_prefix}.a")

    lacking = await make_client(here.replace(encryption_keys=(k1,)))
    resp = await lacking.get("/health")
    assert_cannot_open((resp.status, await resp.json()), "k2", "not in ENCRYPTION_KEYS")

    forged = await make_client(here.replace(encryption_keys=(("k2", os.urandom(32)), k1)))
    resp = await forged.get("/health")
    assert_cannot_open((resp.status, await resp.json()), "k2", "fail authentication")

    extra = await make_client(here.replace(encryption_keys=(("k3", os.urandom(32)), k2, ("k0", os.urandom(32)))))
    resp = await extra.get("/health")
    body = await resp.json()
    assert (resp.status, body["checks"]["keyring"]) == (200, "ok"), body


async def test_expiry_worker_health_names_the_keyring_it_lacks(
    make_client: Any,
    aiohttp_client: Any,
    settings: Settings,
    private_db: str,
    token: Callable[..., str],
    unique_prefix: str,
) -> None:
    from expiry_worker.main import create_app

    k1, k2 = ("k1", os.urandom(32)), ("k2", os.urandom(32))
    here = settings.replace(postgres_url=private_db)
    await write_sealed_by(make_client, here, (k2, k1), token(ADMIN), f"{unique_prefix}.a")

    lacking = await aiohttp_client(create_app(here.replace(encryption_keys=(k1,))))
    resp = await lacking.get("/health")
    assert_cannot_open((resp.status, await resp.json()), "k2", "not in ENCRYPTION_KEYS")

    rolled = await aiohttp_client(create_app(here.replace(encryption_keys=(k2, k1))))
    resp = await rolled.get("/health")
    body = await resp.json()
    assert (resp.status, body["checks"]["keyring"]) == (200, "ok"), body
