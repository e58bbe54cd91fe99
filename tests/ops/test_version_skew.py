"""A rolling upgrade under load, with the previous release's real code (SPEC §1).

The previous release's processes (its code checked out with ``git worktree`` and run from there with
the same virtualenv: ``python -m api_server`` in that directory imports that directory's code) serve
an empty database they create themselves, as that release did, while writers write and a watcher
watches. Then, as deploy/README.md says an upgrade goes: this release's ``dynconfig-migrate`` runs
while they serve, and the processes are replaced one by one (SIGTERM the old one, start the new one
on the same port; clients retry while nothing listens).

At the end: every acknowledged write is in Postgres, and in the watcher's events exactly once, in
revision order, with no gap among its keys (the events are exactly the versions Postgres holds);
no 5xx but 503s that a retry got past; and this release's ``audit verify`` finds the trail intact.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psycopg2
import pytest
from support import ADMIN, eventually, process_env

from devtools.services import free_port
from shared.migrations import MIGRATIONS
from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
#: The previous release's code: the end of step 8 (0.1.0), the last commit before schema 9, whose
#: processes still migrate at start. Move it to the previous release's tag when a release ships.
PREVIOUS_RELEASE = "d568c83"
WRITERS = 4
KEYS_PER_WRITER = 3
#: How long each phase of the rollout runs with traffic flowing (seconds).
PHASE = 2.0
LAST = MIGRATIONS[-1].version
#: The migrations of this release, which the previous release's database (at 8) lacks.
AFTER_PREVIOUS = ", ".join(str(m.version) for m in MIGRATIONS if m.version > 8)
START_TIMEOUT = 30.0
#: A fixed audit key for both releases, as the manifests in deploy/ set one.
AUDIT_HMAC_KEY = "a1:" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWY="


def _git(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def previous_release(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The previous release's code in a worktree of its own (removed afterwards)."""
    if shutil.which("git") is None or _git("cat-file", "-e", f"{PREVIOUS_RELEASE}^{{commit}}").returncode != 0:
        pytest.skip(f"commit {PREVIOUS_RELEASE} (the previous release) is not in this clone")
    path = tmp_path_factory.mktemp("previous") / "release"
    added = _git("worktree", "add", "--detach", str(path), PREVIOUS_RELEASE)
    assert added.returncode == 0, added.stderr
    try:
        yield path
    finally:
        _git("worktree", "remove", "--force", str(path))
        _git("worktree", "prune")


# --- processes of either release ----------------------------------------------------------------


@dataclass
class Process:
    module: str
    release: str
    port: int
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]


@dataclass
class Cluster:
    """The processes of a rollout, each started from its release's directory."""

    env: dict[str, str]
    directories: dict[str, Path]
    logs: Path
    running: list[Process] = field(default_factory=list)

    def launch(self, release: str, module: str, port: int) -> Process:
        """``python -m module`` in ``release``'s directory, so that it imports that release's code."""
        port_var = {"api_server": "API_PORT", "notifier": "NOTIFIER_PORT"}[module]
        log_path = self.logs / f"{release}-{module}-{len(self.running)}.log"
        with open(log_path, "wb") as log:
            popen = subprocess.Popen(
                [sys.executable, "-m", module],
                cwd=self.directories[release],
                env={**self.env, port_var: str(port)},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        proc = Process(module, release, port, popen, log_path)
        self.running.append(proc)
        return proc

    async def start(self, release: str, module: str, port: int) -> Process:
        """:meth:`launch`, then wait until its ``/health`` is 200."""
        proc = self.launch(release, module, port)
        popen = proc.popen
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:

            async def healthy() -> bool:
                assert popen.poll() is None, f"{release} {module} exited:\n{proc.log()}"
                async with session.get(f"{proc.url}/health") as resp:
                    return resp.status == 200

            await eventually(
                healthy,
                START_TIMEOUT,
                lambda: f"{release} {module} healthy:\n{proc.log()}",
                interval=0.1,
                ignoring=(aiohttp.ClientError, TimeoutError),
            )
            return proc

    async def stop(self, proc: Process) -> int:
        """SIGTERM, as Kubernetes stops a pod; its exit status."""
        proc.popen.send_signal(signal.SIGTERM)
        return await asyncio.to_thread(proc.popen.wait, 15)

    def stop_all(self) -> None:
        for proc in self.running:
            if proc.popen.poll() is None:
                proc.popen.send_signal(signal.SIGTERM)
        for proc in self.running:
            try:
                proc.popen.wait(15)
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait()


@pytest.fixture
def cluster(previous_release: Path, empty_db: str, settings: Settings, tmp_path: Path) -> Iterator[Cluster]:
    env = process_env(
        settings,
        POSTGRES_URL=empty_db,
        AUDIT_HMAC_KEY=AUDIT_HMAC_KEY,
        LOG_LEVEL="WARNING",
        STARTUP_TIMEOUT_SECONDS="10",
    )
    running = Cluster(env, {"previous": previous_release, "new": ROOT}, tmp_path)
    try:
        yield running
    finally:
        running.stop_all()


# --- traffic ---------------------------------------------------------------------------------------


@dataclass
class Tally:
    acknowledged: list[tuple[str, int, int]] = field(default_factory=list)  # (key, version, revision)
    retries: int = 0
    unavailable: int = 0  # 503s, each retried
    other_5xx: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # 4xx: the test's own mistake


async def until_acknowledged(
    session: aiohttp.ClientSession, method: str, url: str, body: Any, auth: dict[str, str], tally: Tally
) -> Any:
    """Send until a 2xx (its body), retrying a refused connection (a process being replaced) or a 5xx
    (counted) with backoff; None for a 4xx (the test's own mistake, counted)."""
    delay = 0.05
    while True:
        try:
            async with session.request(method, url, json=body, headers=auth) as resp:
                answer = await resp.json(content_type=None)
                status = resp.status
        except (aiohttp.ClientError, TimeoutError):
            tally.retries += 1
        else:
            if 200 <= status < 300:
                return answer
            if status < 500:
                tally.refused.append(f"{status} {answer}")
                return None
            tally.retries += 1
            if status == 503:
                tally.unavailable += 1
            else:
                tally.other_5xx.append(f"{status} {answer}")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.5)


async def writer(session: aiohttp.ClientSession, api: str, keys: list[str], auth: dict[str, str], tally: Tally,
                 stop: asyncio.Event) -> None:  # fmt: skip
    """Writes its keys in turn until ``stop``, each write until acknowledged, remembered once it is."""
    n = 0
    while not stop.is_set():
        key = keys[n % len(keys)]
        n += 1
        body = await until_acknowledged(session, "PUT", f"{api}/keys/{key}", {"value": {"n": n}}, auth, tally)
        if body is None:
            return
        tally.acknowledged.append((key, body["version"], body["revision"]))
        await asyncio.sleep(0.02)


async def txn_writer(session: aiohttp.ClientSession, api: str, keys: list[str], auth: dict[str, str], tally: Tally,
                     stop: asyncio.Event) -> None:  # fmt: skip
    """Writes all of ``keys`` in one transaction (``POST /txn``, this release's) until ``stop``, as
    :func:`writer` does, each change remembered once acknowledged."""
    n = 0
    while not stop.is_set():
        n += 1
        body = {"ops": [{"op": "put", "key": key, "value": {"n": n}} for key in keys]}
        answer = await until_acknowledged(session, "POST", f"{api}/txn", body, auth, tally)
        if answer is None:
            return
        tally.acknowledged.extend((r["key"], r["version"], answer["revision"]) for r in answer["results"])
        await asyncio.sleep(0.05)


@dataclass
class Watcher:
    """One watcher that reconnects, resuming with ``since_version``, whenever its socket ends."""

    events: list[dict[str, Any]] = field(default_factory=list)
    control: list[dict[str, Any]] = field(default_factory=list)
    connections: int = 0

    @property
    def last(self) -> int:
        return self.events[-1]["revision"] if self.events else 0

    async def run(self, session: aiohttp.ClientSession, url: Callable[[], str], pattern: str, token: str) -> None:
        while True:
            try:
                async with session.ws_connect(url(), headers={"Authorization": f"Bearer {token}"}) as ws:
                    await ws.send_json({"subscribe": [pattern], "since_version": self.last})
                    self.connections += 1
                    async for msg in ws:
                        if msg.type != aiohttp.WSMsgType.TEXT:
                            break
                        data = json.loads(msg.data)
                        if data.get("event") in ("update", "delete", "expired"):
                            self.events.append(data)
                        elif data.get("event") == "txn":
                            self.events.extend(data["changes"])
                        else:
                            self.control.append(data)
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.2)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
        yield session


async def serve_a_while(tally: Tally, phase: str) -> None:
    """Let the traffic run for a phase; some writes must be acknowledged in it."""
    before = len(tally.acknowledged)
    await asyncio.sleep(PHASE)
    assert len(tally.acknowledged) > before, f"no write acknowledged: {phase}"


def history(url: str, prefix: str) -> list[tuple[str, int, int]]:
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT key, version, revision FROM key_history WHERE key LIKE %s ORDER BY revision", (f"{prefix}.%",)
        )
        rows = [(k, int(v), int(r)) for k, v, r in cur.fetchall()]
    conn.close()
    return rows


def audit_verify(env: dict[str, str]) -> tuple[int, dict[str, Any]]:
    """This release's ``audit verify --json``: its exit status and report."""
    done = subprocess.run(
        [sys.executable, "-m", "dynconfig_admin.audit", "verify", "--json"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    return done.returncode, json.loads(done.stdout) if done.stdout.strip() else {"stderr": done.stderr}


async def test_a_rolling_upgrade_from_the_previous_release_loses_and_repeats_nothing(
    cluster: Cluster,
    http: aiohttp.ClientSession,
    empty_db: str,
    token: Callable[..., str],
    unique_prefix: str,
    settings: Settings,
) -> None:
    started = time.monotonic()
    api_port, notifier_port = free_port(), free_port()
    api = await cluster.start("previous", "api_server", api_port)  # it migrates, as that release did
    notifier = await cluster.start("previous", "notifier", notifier_port)

    auth = {"Authorization": f"Bearer {token(ADMIN)}"}
    tally, watcher, stop = Tally(), Watcher(), asyncio.Event()
    watching = asyncio.create_task(
        watcher.run(http, lambda: f"ws://127.0.0.1:{notifier_port}/watch", f"{unique_prefix}.*", token(ADMIN))
    )
    keys = [[f"{unique_prefix}.w{w}.k{k}" for k in range(KEYS_PER_WRITER)] for w in range(WRITERS)]
    writing = [asyncio.create_task(writer(http, api.url, mine, auth, tally, stop)) for mine in keys]
    txn_keys = [f"{unique_prefix}.txn.k{k}" for k in range(3)]
    try:
        await serve_a_while(tally, "the previous release")
        # 1. This release's migrations, while the previous release serves.
        migration = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "dynconfig_admin.migrate", cwd=ROOT, env=cluster.env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(migration.communicate(), 60)
        assert migration.returncode == 0, err.decode()
        assert f"database schema version {LAST} (applied {AFTER_PREVIOUS})" in out.decode(), out.decode()
        await serve_a_while(tally, "the previous release on the new schema")
        # 2. The processes, one by one. Once this release's api_server serves, transactions too: the
        # previous release's notifier relays and delivers them as single events.
        for old, module in ((api, "api_server"), (notifier, "notifier")):
            assert await cluster.stop(old) == 0, old.log()
            await cluster.start("new", module, old.port)
            if module == "api_server":
                writing.append(asyncio.create_task(txn_writer(http, api.url, txn_keys, auth, tally, stop)))
            await serve_a_while(tally, f"{module} replaced")
    finally:
        stop.set()
        await asyncio.gather(*writing)

    acknowledged = set(tally.acknowledged)
    assert tally.refused == [] and tally.other_5xx == [], (tally.refused, tally.other_5xx)
    stored = history(empty_db, unique_prefix)
    assert acknowledged <= set(stored), sorted(acknowledged - set(stored))[:5]
    await eventually(
        lambda: watcher.last >= stored[-1][2],
        20,
        lambda: f"the watcher at the log's head: it stopped at {watcher.last}, the log is at {stored[-1][2]}",
        interval=0.1,
    )
    watching.cancel()
    await asyncio.gather(watching, return_exceptions=True)

    assert any(key in txn_keys for key, _, _ in acknowledged), "no transaction acknowledged"
    seen = [(e["key"], e["version"], e["revision"]) for e in watcher.events]
    repeated = [item for item, n in Counter(seen).items() if n > 1]
    assert repeated == [], f"events delivered twice: {repeated[:5]}"
    assert [r for _, _, r in seen] == sorted(r for _, _, r in seen), "events out of revision order"
    # A transaction the previous release's notifier delivered came as single events, each with its own
    # place in the log for a revision (this release: the transaction's, one frame): compare versions.
    single = [item for item in seen if item[0] not in txn_keys]
    assert single == [item for item in stored if item[0] not in txn_keys], "a gap, or one too many"
    assert sorted((k, v) for k, v, _ in seen if k in txn_keys) == sorted((k, v) for k, v, _ in stored if k in txn_keys)
    for key in {k for k, _, _ in stored}:
        versions = [v for k, v, _ in stored if k == key]
        assert versions == list(range(1, len(versions) + 1)), f"{key}: versions {versions}"
    assert not [c for c in watcher.control if c.get("event") in ("reset", "error")], watcher.control

    status, report = audit_verify(cluster.env)
    assert status == 0 and report.get("ok") is True, report
    print(
        f"\nversion skew {PREVIOUS_RELEASE} -> this release: {len(acknowledged)} writes acknowledged, "
        f"{len(seen)} events ({watcher.connections} watch connections), {tally.retries} retries, "
        f"{tally.unavailable} 503s, {time.monotonic() - started:.1f} s; audit verify: {report.get('summary')}"
    )
