"""ENCRYPTION_KEYS rotation end to end, with real processes, while writes and a watcher run
(SPEC §8; the steps of deploy/README.md "Rotating keys"):

1. api_server and notifier run with ``k1``;
2. they are rolled to ``k2,k1``: the new processes listen beside the old ones on the same ports
   (``REUSE_PORT``), then the old ones get SIGTERM and drain;
3. ``dynconfig-reencrypt`` re-seals every stored value under ``k2``;
4. they are rolled again, to ``k2`` alone.

Then nothing is lost (every acknowledged write reached the watcher, which resumed across both rolls,
and is the key's state or in its history), every value reads back through the processes that hold
only ``k2``, no stored value is sealed by ``k1`` any more, and the audit chain verifies.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiopg
import pytest
from support import ADMIN, eventually, first_health, process_env

from devtools.services import free_port
from dynconfig_admin.reencrypt import reencrypt
from dynconfig_client import Client, ConnectionFailed, EventStream
from shared.security.crypto import Keyring
from shared.settings import Settings

REPO = Path(__file__).resolve().parents[2]
WRITERS = 4
KEYS_PER_WRITER = 5
TIMEOUT = 30.0


def keyring(*keys: tuple[str, bytes]) -> str:
    return ",".join(f"{kid}:{base64.b64encode(key).decode()}" for kid, key in keys)


class Writers:
    """``WRITERS`` tasks, each PUTting its own keys in turn through the shared API port until stopped.

    ``acked[key]`` holds (version, value) of every write that was answered 2xx. A request the rolling
    restart cut off is sent again (its outcome unknown: at worst the same value twice, two versions)."""

    def __init__(self, api_url: str, token: str, prefix: str) -> None:
        self.api_url, self.token, self.prefix = api_url, token, prefix
        self.acked: dict[str, list[tuple[int, Any]]] = {}
        self.retries = 0
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._run(w)) for w in range(WRITERS)]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    @property
    def count(self) -> int:
        return sum(len(v) for v in self.acked.values())

    async def _run(self, writer: int) -> None:
        n = 0
        async with Client(self.api_url, self.token) as client:
            while not self._stop.is_set():
                key = f"{self.prefix}.w{writer}.k{n % KEYS_PER_WRITER}"
                value = {"writer": writer, "n": n, "pad": "x" * (n % 50)}
                while True:
                    try:
                        result = await client.put(key, value)
                        break
                    except ConnectionFailed:  # the process behind the port is draining or gone
                        self.retries += 1
                        await asyncio.sleep(0.05)
                self.acked.setdefault(key, []).append((result.version, value))
                n += 1
                await asyncio.sleep(0.005)


async def collect(stream: EventStream, into: list[dict[str, Any]]) -> None:
    async for event in stream:
        into.append(event)


def roll(spawn: Callable[..., Any], old: list[Any], ports: dict[str, int], env: dict[str, str]) -> list[Any]:
    """Start the new api_server and notifier beside the old ones, then SIGTERM the old ones and wait
    for them to exit (drained)."""
    new = [spawn(module, port=port, **env) for module, port in ports.items()]
    for proc in old:
        proc.popen.terminate()
    for proc in old:
        assert proc.popen.wait(20) == 0, proc.log()[-2000:]
    return new


async def sealed_by(db_url: str) -> dict[str, int]:
    """How many stored values (current and history) each key id has sealed."""
    counts: dict[str, int] = {}
    async with aiopg.create_pool(db_url, minsize=1, maxsize=1) as pool, pool.acquire() as conn:
        async with conn.cursor() as cur:
            for table in ("keys", "key_history"):
                await cur.execute(
                    f"SELECT convert_from(substring(value_enc from 2 for get_byte(value_enc, 0)), 'UTF8'), count(*)"
                    f" FROM {table} WHERE value_enc IS NOT NULL GROUP BY 1"
                )
                for kid, n in await cur.fetchall():
                    counts[kid] = counts.get(kid, 0) + n
    return counts


async def test_rotation_under_writes_and_watchers_loses_nothing(
    spawn: Callable[..., Any],
    private_db: str,
    settings: Settings,
    token: Callable[..., str],
    unique_prefix: str,
) -> None:
    k1, k2 = ("k1", os.urandom(32)), ("k2", os.urandom(32))
    ports = {"api_server": free_port(), "notifier": free_port()}
    api_url = f"http://127.0.0.1:{ports['api_server']}"
    ws_url = f"ws://127.0.0.1:{ports['notifier']}/watch"
    common = {
        "POSTGRES_URL": private_db,
        "AUDIT_HMAC_KEY": "a1:" + base64.b64encode(os.urandom(32)).decode(),
        "REUSE_PORT": "true",
        "RATE_LIMIT": "1000000",
    }
    admin = token(ADMIN, exp_in=3600)

    procs = [spawn(module, port=port, ENCRYPTION_KEYS=keyring(k1), **common) for module, port in ports.items()]
    events: list[dict[str, Any]] = []
    stream = EventStream(ws_url, admin, [f"{unique_prefix}.*"], since_version=0, backoff_initial=0.05)
    watching = asyncio.create_task(collect(stream, events))
    writers = Writers(api_url, admin, unique_prefix)
    writers.start()
    try:
        await eventually(lambda: writers.count >= 100 and len(events) >= 50, TIMEOUT, "writes under k1")

        procs = roll(spawn, procs, ports, {"ENCRYPTION_KEYS": keyring(k2, k1), **common})
        at_roll = writers.count
        await eventually(lambda: writers.count >= at_roll + 100, TIMEOUT, "writes after the first roll")

        # Re-encrypt while the writers go on.
        env = process_env(settings.replace(postgres_url=private_db, encryption_keys=(k2, k1)), **common)
        reencrypt = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "dynconfig_admin.reencrypt", env=env, cwd=REPO,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        output, _ = await asyncio.wait_for(reencrypt.communicate(), TIMEOUT)
        assert reencrypt.returncode == 0, output.decode()
        assert "re-encrypted" in output.decode() and "'k2'" in output.decode()
        at_reencrypt = writers.count
        await eventually(lambda: writers.count >= at_reencrypt + 50, TIMEOUT, "writes after the re-encryption")

        assert (await sealed_by(private_db)).keys() == {"k2"}, "a value is still sealed by k1 after reencrypt"
        # A read that raced the re-encryption may have cached a k1 copy: see the last test below.

        procs = roll(spawn, procs, ports, {"ENCRYPTION_KEYS": keyring(k2), **common})
        at_second = writers.count
        await eventually(lambda: writers.count >= at_second + 100, TIMEOUT, "writes under k2 alone")
        await writers.stop()
        acked = {(key, version) for key, writes in writers.acked.items() for version, _ in writes}
        await eventually(
            lambda: {(e["key"], e["version"]) for e in events} >= acked,
            TIMEOUT,
            "every acknowledged write to reach the watcher",
        )
    finally:
        if not writers._stop.is_set():
            await writers.stop()
        await stream.close()
        watching.cancel()
        await asyncio.gather(watching, return_exceptions=True)

    assert writers.count >= 450
    assert stream.connects >= 3, "the watcher did not ride through both rolls"  # one connection per notifier
    # The watcher: every event once, in revision order, each key's versions gap-free from 1.
    revisions = [e["revision"] for e in events]
    assert revisions == sorted(set(revisions))
    by_key: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        assert event["event"] == "update", event
        by_key.setdefault(event["key"], []).append(event)
    for key, acked in writers.acked.items():
        seen = {e["version"]: e["value"] for e in by_key[key]}
        assert sorted(seen) == list(range(1, max(seen) + 1)), f"{key}: a version is missing from the stream"
        for version, value in acked:
            assert seen[version] == value, f"{key} v{version}: the watcher got another value"

    # Every value, current and past, reads back through processes that hold only k2.
    assert (await sealed_by(private_db)).keys() == {"k2"}
    async with Client(api_url, admin) as client:
        for key, acked in writers.acked.items():
            item = await client.get(key)
            assert (item.version, item.value) == acked[-1]  # the last acknowledged write is the state
            history = {v.version: v.value async for v in client.history(key)}
            for version, value in acked:
                assert history[version] == value
    # A fresh snapshot from the k2-only notifier decrypts every key.
    async with EventStream(ws_url, admin, [f"{unique_prefix}.*"], snapshot=True, markers=True) as fresh:
        snapshot: dict[str, Any] = {}
        async with asyncio.timeout(TIMEOUT):
            async for event in fresh:
                if event["event"] == "synced":
                    break
                snapshot[event["key"]] = event["value"]
    assert snapshot == {key: by_key[key][-1]["value"] for key in writers.acked}

    # The audit chain is intact across both rolls (its key never changed).
    verify = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dynconfig_admin.audit", "verify", "--json",
        env=process_env(settings.replace(postgres_url=private_db, encryption_keys=(k2,)), **common),
        cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(verify.communicate(), 60)
    assert verify.returncode == 0, (out + err).decode()
    assert json.loads(out)["ok"] is True


async def test_a_key_dropped_too_early_is_a_clear_500_and_loses_nothing(
    spawn: Callable[..., Any], private_db: str, token: Callable[..., str], unique_prefix: str
) -> None:
    """What deploy/README.md's order prevents: dropping k1 before reencrypt. Such a process is never
    ready (its keyring check finds the value sealed by k1); asked anyway, it answers 500 in the JSON
    shape without leaking anything, and the value is not lost (k1 brings it back)."""
    k1, k2 = ("k1", os.urandom(32)), ("k2", os.urandom(32))
    common = {"POSTGRES_URL": private_db, "CACHE_TTL_SECONDS": "1"}
    admin = token(ADMIN, exp_in=600)
    key = f"{unique_prefix}.secret"
    first = spawn("api_server", ENCRYPTION_KEYS=keyring(k1), **common)
    async with Client(first.url, admin) as client:
        await client.put(key, {"password": "hunter2"})
    first.popen.terminate()
    first.popen.wait(20)
    await asyncio.sleep(1.2)  # the cached copy (sealed by k1) expires

    early = spawn("api_server", wait=False, ENCRYPTION_KEYS=keyring(k2), **common)
    status, body = await first_health(early)
    assert status == 503 and body["checks"]["keyring"].startswith("cannot open values sealed with key 'k1'"), body
    async with Client(early.url, admin) as client:
        with pytest.raises(Exception) as caught:
            await client.get(key)
    assert getattr(caught.value, "status", None) == 500
    assert "hunter2" not in str(caught.value) and "hunter2" not in early.log()
    again = spawn("api_server", ENCRYPTION_KEYS=keyring(k2, k1), **common)
    async with Client(again.url, admin) as client:
        assert (await client.get(key)).value == {"password": "hunter2"}


async def test_a_cached_copy_sealed_by_a_retired_key_is_read_again_from_postgres(
    private_db: str, make_client: Any, settings: Settings, token: Callable[..., str], unique_prefix: str
) -> None:
    """The race deploy/README.md used to make operators wait out: a GET that read the old ciphertext
    just before ``reencrypt`` re-sealed the row fills the cache with it after the command cleared the
    cache. Once the old key is dropped, that copy cannot be decrypted: the read must go to Postgres,
    which holds the re-sealed value, not fail."""
    k1, k2 = ("k1", os.urandom(32)), ("k2", os.urandom(32))
    admin = {"Authorization": f"Bearer {token(ADMIN)}"}
    key = f"{unique_prefix}.cached"
    before = await make_client(settings.replace(postgres_url=private_db, encryption_keys=(k1,)))
    assert (await before.put(f"/keys/{key}", json={"value": {"n": 1}}, headers=admin)).status == 201
    assert (await before.get(f"/keys/{key}", headers=admin)).status == 200  # the cache holds the k1 copy

    async with aiopg.create_pool(private_db, minsize=1, maxsize=2) as pool:
        await reencrypt(pool, Keyring((k2, k1)))  # the rows only: the cached copy stays, as in the race
    assert (await sealed_by(private_db)).keys() == {"k2"}

    after = await make_client(settings.replace(postgres_url=private_db, encryption_keys=(k2,)))
    for _ in range(2):  # and again: the stale copy does not come back to bite
        answer = await after.get(f"/keys/{key}", headers=admin)
        assert answer.status == 200, await answer.text()
        assert (await answer.json())["value"] == {"n": 1}
