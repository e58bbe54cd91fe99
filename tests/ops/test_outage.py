"""Postgres down and back, as Kubernetes and clients see it on the real processes (SPEC §1, §7).

While Postgres is stopped: ``/health`` is 503 (the pod leaves the Service's endpoints), ``/health/live``
stays 200 (the pod is not restarted), every call that needs Postgres answers 503 in the JSON error
shape with ``Retry-After`` and logs one warning line, no traceback. Once it is back, everything
recovers by itself: no process is restarted.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import aiopg
import psycopg2
import pytest
import yaml
from aiopg.connection import IsolationLevel, Transaction
from support import WatchRecorder, eventually

from devtools.services import PostgresServer
from shared.db import (
    CLIENT_TIMEOUT_MARGIN_SECONDS,
    DEDICATED_CLIENT_TIMEOUT_SECONDS,
    DEDICATED_STATEMENT_TIMEOUT_SECONDS,
    connect_pool,
    connector,
)
from shared.settings import Settings

pytestmark = pytest.mark.usefixtures("redis_server")

REPO = Path(__file__).resolve().parents[2]
PROCESSES = ("api_server", "notifier", "expiry_worker")
#: How long a process gets to notice Postgres going or coming back (its checks answer within 2 s; its
#: listeners reconnect with a backoff capped at 5 s).
NOTICE_SECONDS = 20.0
TIMEOUT = aiohttp.ClientTimeout(total=15)


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def get_json(session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with session.get(url, timeout=TIMEOUT) as resp:
        return resp.status, await resp.json(content_type=None)


async def health_becomes(session: aiohttp.ClientSession, base: str, status: int) -> dict[str, Any]:
    """Poll ``/health`` until it answers ``status``; its body."""
    got, body = 0, None

    async def answered() -> dict[str, Any] | None:
        nonlocal got, body
        got, body = await get_json(session, f"{base}/health")
        return dict(body) if got == status else None  # a /health body is never empty

    return await eventually(
        answered, NOTICE_SECONDS, lambda: f"{base}/health answering {status}; still {got} {body}", interval=0.2
    )


def assert_unavailable(status: int, headers: Any, body: Any, what: str) -> None:
    """SPEC §7: 503 ``{"error": "Service Unavailable", "message"}`` with ``Retry-After``."""
    assert status == 503, f"{what}: {status} {body}"
    assert isinstance(body, dict) and body.get("error") == "Service Unavailable", f"{what}: {body}"
    assert isinstance(body.get("message"), str) and body["message"], f"{what}: {body}"
    assert headers.get("Retry-After", "").isdigit(), f"{what}: no Retry-After in {dict(headers)}"


def assert_quiet_log(log: str) -> None:
    """An expected outage is a warning, not an error with a traceback."""
    assert "Traceback" not in log, log[-4000:]
    errors = [line for line in log.splitlines() if " ERROR " in line or " CRITICAL " in line]
    assert errors == [], "\n".join(errors[:20])


# --- /health/live ---------------------------------------------------------------------------------


async def test_live_stays_200_while_postgres_is_down_and_health_recovers(
    spawn: Callable[..., Any], pg_server: PostgresServer
) -> None:
    """A database blip takes every pod out of rotation (``/health`` 503) but restarts none
    (``/health/live`` 200, no token needed); once Postgres is back every ``/health`` is 200 again."""
    procs = [spawn(name) for name in PROCESSES]
    async with aiohttp.ClientSession() as session:
        for proc in procs:
            status, body = await get_json(session, f"{proc.url}/health/live")
            assert (status, body.get("status")) == (200, "alive"), (proc.name, status, body)
        pg_server.stop()
        for proc in procs:
            body = await health_becomes(session, proc.url, 503)
            assert body["error"] == "Service Unavailable" and "postgres" in body["message"], (proc.name, body)
            status, live = await get_json(session, f"{proc.url}/health/live")
            assert status == 200, (proc.name, status, live)
        pg_server.start()
        for proc in procs:
            body = await health_becomes(session, proc.url, 200)
            assert all(body["checks"][name] == "ok" for name in ("postgres", "background", "keyring")), body
    for proc in procs:
        assert proc.popen.poll() is None, proc.log()
        assert_quiet_log(proc.log())


# --- every call of the API while Postgres is down -------------------------------------------------


async def test_every_call_answers_503_while_postgres_is_down_then_all_recovers(
    spawn: Callable[..., Any], pg_server: PostgresServer, token: Callable[..., str], unique_prefix: str
) -> None:
    """Writes, reads (a cached key too), lists, polls, history, audit and namespaces: 503 with
    ``Retry-After``, never 500, and one warning line each, no traceback. Then, with no restart,
    every call works again and every background loop is ok."""
    api = spawn("api_server")
    headers = auth(token())
    ns = unique_prefix
    cached, other = f"{ns}.cached", f"{ns}.other"
    async with aiohttp.ClientSession(headers=headers) as session:

        async def call(method: str, path: str, body: Any = None) -> tuple[int, Any, Any]:
            async with session.request(method, f"{api.url}{path}", json=body, timeout=TIMEOUT) as resp:
                return resp.status, resp.headers, await resp.json(content_type=None) if resp.status != 204 else None

        for key in (cached, other):
            status, _, body = await call("PUT", f"/keys/{key}", {"value": {"v": 1}})
            assert status == 201, body
        for _ in range(2):  # the second is served from the value cache
            status, _, body = await call("GET", f"/keys/{cached}")
            assert status == 200, body

        calls = [
            ("GET", f"/keys/{cached}", None),
            ("GET", f"/keys/{other}", None),
            ("GET", f"/keys/{ns}.missing", None),
            ("PUT", f"/keys/{cached}", {"value": {"v": 2}}),
            ("PUT", f"/keys/{ns}.new", {"value": 1}),
            ("PATCH", f"/keys/{cached}", {"value": {"v": 3}}),
            ("DELETE", f"/keys/{other}", None),
            ("POST", f"/keys/{cached}/rollback", {"version": 1}),
            ("GET", f"/keys?namespace={ns}", None),
            ("GET", f"/keys?since_version=0&namespace={ns}", None),
            ("GET", f"/keys/{cached}/history", None),
            ("GET", f"/audit?key={cached}", None),
            ("GET", "/audit/verify", None),
            ("PUT", f"/namespaces/{ns}", {"acls": {"read": ["*"], "write": []}}),
            ("GET", f"/namespaces/{ns}", None),
            ("DELETE", f"/namespaces/{ns}", None),
        ]
        pg_server.stop()
        # At once (the pooled connections are dead, and nothing has noticed yet), and again once
        # /health has noticed.
        for method, path, body in calls:
            status, resp_headers, answer = await call(method, path, body)
            assert_unavailable(status, resp_headers, answer, f"{method} {path}")
        await health_becomes(session, api.url, 503)
        for method, path, body in calls:
            status, resp_headers, answer = await call(method, path, body)
            assert_unavailable(status, resp_headers, answer, f"{method} {path} (later)")
        status, _, live = await call("GET", "/health/live")
        assert status == 200, live
        outage_log = api.log()
        assert_quiet_log(outage_log)
        warnings = [line for line in outage_log.splitlines() if "Postgres unavailable in" in line]
        assert len(warnings) >= len(calls), outage_log[-4000:]

        pg_server.start()
        health = await health_becomes(session, api.url, 200)
        assert health["checks"]["background"] == "ok" and health["checks"]["audit"] == "ok", health
        # Every call works again, on the same process.
        status, _, body = await call("PUT", f"/keys/{cached}", {"value": {"v": 4}})
        assert status == 200 and body["version"] == 2, body
        status, _, body = await call("GET", f"/keys/{cached}")
        assert status == 200 and body["value"] == {"v": 4}, body
        status, _, body = await call("DELETE", f"/keys/{other}")
        assert status == 204, body
        for method, path, body in calls[8:]:
            status, _, answer = await call(method, path, body)
            assert status < 300, (method, path, status, answer)
        status, _, page = await call("GET", f"/audit?key={cached}")
        assert any(record["action"] == "replace" and record["version"] == 2 for record in page["records"]), page
    assert api.popen.poll() is None
    assert_quiet_log(api.log())


# --- watchers while Postgres is down --------------------------------------------------------------


async def test_watchers_get_every_change_after_postgres_comes_back(
    spawn: Callable[..., Any], pg_server: PostgresServer, token: Callable[..., str], unique_prefix: str
) -> None:
    """A watcher connected through the outage gets the changes made after it (on its socket, or by
    resuming with ``since_version`` if the notifier closed it), and one that resumes later from a
    revision before the outage sees every change since, with no gap."""
    api = spawn("api_server")
    notifier = spawn("notifier")
    admin = token()
    key = f"{unique_prefix}.watched"
    watch_url = f"{notifier.url.replace('http', 'ws')}/watch"
    async with aiohttp.ClientSession(headers=auth(admin)) as session:

        async def put(value: int) -> int:
            async with session.put(f"{api.url}/keys/{key}", json={"value": value}, timeout=TIMEOUT) as resp:
                body = await resp.json()
                assert resp.status in (200, 201), body
                return int(body["revision"])

        first = await put(1)
        watcher = await WatchRecorder.open(session, watch_url, admin, [f"{unique_prefix}.*"], since_version=first - 1)
        assert await watcher.holds(lambda: len(watcher.events) == 1, 10), watcher.messages

        pg_server.stop()
        await health_becomes(session, notifier.url, 503)
        # A watcher that subscribes now cannot be replayed to: told so, and closed 1013 (try again later).
        refused = await session.ws_connect(watch_url, heartbeat=None)
        await refused.send_json({"subscribe": [f"{unique_prefix}.*"], "since_version": first - 1})
        error = await refused.receive_json(timeout=10)
        assert (error["event"], error["error"]) == ("error", "Service Unavailable"), error
        assert (await refused.receive(timeout=10)).type == aiohttp.WSMsgType.CLOSE
        assert refused.close_code == 1013, refused.close_code
        await refused.close()
        pg_server.start()
        await health_becomes(session, api.url, 200)
        await health_becomes(session, notifier.url, 200)

        revisions = [first, *[await put(value) for value in (2, 3, 4)]]
        seen: list[int] = []
        if not await watcher.holds(lambda: len(watcher.events) == 4, 10):
            # The notifier may close a socket it cannot serve; the watcher resumes where it was.
            assert watcher.closed, watcher.messages
            seen = [event["revision"] for event in watcher.events]
            watcher = await WatchRecorder.open(
                session, watch_url, admin, [f"{unique_prefix}.*"], since_version=seen[-1]
            )
            assert await watcher.holds(lambda: len(seen) + len(watcher.events) == 4, 10), watcher.messages
        seen += [event["revision"] for event in watcher.events if event["revision"] not in seen]
        assert seen == revisions, watcher.messages
        await watcher.close()

        resumed = await WatchRecorder.open(session, watch_url, admin, [f"{unique_prefix}.*"], since_version=first)
        assert await resumed.holds(lambda: len(resumed.events) == 3, 10), resumed.messages
        assert [event["revision"] for event in resumed.events] == revisions[1:], resumed.messages
        assert [json.dumps(event["value"]) for event in resumed.events] == ["2", "3", "4"]
        await resumed.close()
    for proc in (api, notifier):
        assert proc.popen.poll() is None
        assert_quiet_log(proc.log())


# --- a statement the server cancels, a server that does not answer --------------------------------


@asynccontextmanager
async def row_locked(url: str, key: str) -> AsyncIterator[None]:
    """Hold ``key``'s row lock in a transaction of our own (another replica writing it, say)."""
    async with aiopg.connect(url) as conn, conn.cursor() as cur:
        await cur.execute("BEGIN")
        await cur.execute("SELECT 1 FROM keys WHERE key = %s FOR UPDATE", (key,))
        try:
            yield
        finally:
            await cur.execute("ROLLBACK")


async def waiting_for_lock(url: str) -> int:
    """The backend of a write that waits for a row lock (the committer's contended lane)."""
    async with aiopg.connect(url) as conn, conn.cursor() as cur:

        async def waiter() -> Any:
            await cur.execute(
                "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%FROM keys%FOR UPDATE'"
            )
            return await cur.fetchone()

        row = await eventually(waiter, NOTICE_SECONDS, "a write waiting for the row lock")
        return int(row[0])


async def test_a_cancelled_statement_is_a_503_and_the_committer_keeps_writing(
    spawn: Callable[..., Any], pg_server: PostgresServer, token: Callable[..., str], unique_prefix: str
) -> None:
    """An operator cancels a write's statement (``pg_cancel_backend``; a ``statement_timeout`` does the
    same): that write is answered 503, the cancel is logged as a warning, not an error, and the
    committer's lane that waits for held rows still works: the next write that must wait for the
    same row commits once the row is free."""
    api = spawn("api_server")
    key = f"{unique_prefix}.held"
    async with aiohttp.ClientSession(headers=auth(token())) as session:

        async def put(value: int) -> tuple[int, Any, Any]:
            async with session.put(f"{api.url}/keys/{key}", json={"value": value}, timeout=TIMEOUT) as resp:
                return resp.status, resp.headers, await resp.json()

        assert (await put(1))[0] == 201
        async with row_locked(pg_server.url, key):
            write = asyncio.ensure_future(put(2))
            pid = await waiting_for_lock(pg_server.url)
            async with aiopg.connect(pg_server.url) as conn, conn.cursor() as cur:
                await cur.execute("SELECT pg_cancel_backend(%s)", (pid,))
            status, headers, body = await write
            assert_unavailable(status, headers, body, "PUT whose statement was cancelled")
        async with row_locked(pg_server.url, key):
            write = asyncio.ensure_future(put(3))
            await waiting_for_lock(pg_server.url)
        status, _, body = await write
        assert (status, body["version"]) == (200, 2), body
    assert_quiet_log(api.log())


async def test_statement_timeout_answers_503_in_time(
    spawn: Callable[..., Any], pg_server: PostgresServer, token: Callable[..., str], unique_prefix: str
) -> None:
    """A write stuck behind a row lock for longer than POSTGRES_STATEMENT_TIMEOUT_SECONDS is cancelled
    by Postgres and answered 503 ("did not answer in time"), and the next write goes through."""
    api = spawn("api_server", POSTGRES_STATEMENT_TIMEOUT_SECONDS="1")
    key = f"{unique_prefix}.slow"
    async with aiohttp.ClientSession(headers=auth(token())) as session:
        async with session.put(f"{api.url}/keys/{key}", json={"value": 1}, timeout=TIMEOUT) as resp:
            assert resp.status == 201
        async with row_locked(pg_server.url, key):
            async with session.put(f"{api.url}/keys/{key}", json={"value": 2}, timeout=TIMEOUT) as resp:
                body = await resp.json()
                assert_unavailable(resp.status, resp.headers, body, "PUT behind a held row")
                assert "in time" in body["message"], body
        async with session.put(f"{api.url}/keys/{key}", json={"value": 3}, timeout=TIMEOUT) as resp:
            assert resp.status == 200, await resp.text()
    assert_quiet_log(api.log())


def freeze(pg_server: PostgresServer) -> list[int]:
    """SIGSTOP the postmaster, then every process it started (each backend is a session of its own, so
    the postmaster's process group is not enough); the pids stopped, to SIGCONT."""
    assert pg_server.pid is not None
    os.kill(pg_server.pid, signal.SIGSTOP)
    frozen = [pg_server.pid]
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as stat:
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if parent == pg_server.pid:
            with contextlib.suppress(ProcessLookupError):  # it just exited
                os.kill(int(entry), signal.SIGSTOP)
                frozen.append(int(entry))
    return frozen


async def test_a_frozen_postgres_gets_503s_not_500s_then_all_recovers(
    spawn: Callable[..., Any], pg_server: PostgresServer, token: Callable[..., str], unique_prefix: str
) -> None:
    """Postgres that accepts connections but answers nothing (stopped with SIGSTOP: a frozen host, a
    network that drops packets): /health/live stays 200, /health turns 503, a write and every read that
    needs Postgres answer 503 once the client's timeout passes, never 500; a cached GET is served only
    while the cache fence's last catch-up is recent, otherwise 503. After SIGCONT all recovers."""
    api = spawn("api_server", POSTGRES_STATEMENT_TIMEOUT_SECONDS="1")
    cached = f"{unique_prefix}.cached"
    async with aiohttp.ClientSession(headers=auth(token())) as session:

        async def call(method: str, path: str, body: Any = None) -> tuple[int, Any, Any]:
            async with session.request(method, f"{api.url}{path}", json=body, timeout=TIMEOUT) as resp:
                return resp.status, resp.headers, await resp.json()

        assert (await call("PUT", f"/keys/{cached}", {"value": "v1"}))[0] == 201
        for _ in range(2):
            assert (await call("GET", f"/keys/{cached}"))[0] == 200
        frozen = freeze(pg_server)
        try:
            status, _, live = await call("GET", "/health/live")
            assert status == 200, live
            answers = await asyncio.gather(
                call("PUT", f"/keys/{cached}", {"value": "v2"}),
                call("GET", f"/keys/{unique_prefix}.other"),
                call("GET", f"/keys?namespace={unique_prefix}"),
                call("GET", f"/keys/{cached}/history"),
                call("GET", f"/keys/{cached}"),
            )
            for (status, headers, body), what in zip(answers[:4], ["PUT", "GET", "list", "history"], strict=True):
                assert_unavailable(status, headers, body, what)
            status, headers, body = answers[4]
            if status == 200:  # the fence caught up less than STALE_SECONDS ago: the cache still holds
                assert body["value"] == "v1", body
            else:
                assert_unavailable(status, headers, body, "cached GET")
            status, health = await get_json(session, f"{api.url}/health")
            assert status == 503 and health["checks"]["postgres"] == "unavailable", health
            status, _, live = await call("GET", "/health/live")
            assert status == 200, live
        finally:
            for pid in frozen:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
        await health_becomes(session, api.url, 200)
        status, _, body = await call("PUT", f"/keys/{cached}", {"value": "v3"})
        assert status == 200, body
        status, _, body = await call("GET", f"/keys/{cached}")
        assert (status, body["value"]) == (200, "v3"), body
    assert_quiet_log(api.log())


# --- what every connection carries ----------------------------------------------------------------

#: Each process's connections, by role: its pool, and its dedicated ones (LISTEN, the relay's lock).
CONNECTIONS = {
    "api_server": {"pool", "namespace-acls", "cache-guard", "cache-fence", "retention"},
    "notifier": {"pool", "watch-pool", "namespace-acls", "hub", "relay"},
    "expiry_worker": {"pool", "expiry"},
}


def test_the_connections_table_in_deploy_readme_adds_up() -> None:
    """deploy/README.md's "Postgres connections" table: per pod, the default pool size, the notifier's
    watch pool and the dedicated connections above; pods at most, from deploy/k8s/base; the total."""
    from notifier.main import WATCH_POOL_SIZE

    pool = next(f.default for f in dataclasses.fields(Settings) if f.name == "postgres_pool_size")
    readme = (REPO / "deploy" / "README.md").read_text()
    section = readme.split("## Postgres connections", 1)[1].split("\n## ", 1)[0]
    rows = {
        cells[0]: cells
        for line in section.splitlines()
        if line.startswith("| ") and (cells := [c.strip(" *`") for c in line.strip("|").split("|")])
    }
    most_pods = {}
    for path in (REPO / "deploy" / "k8s" / "base").glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["kind"] == "HorizontalPodAutoscaler":
                most_pods[doc["spec"]["scaleTargetRef"]["name"]] = doc["spec"]["maxReplicas"]
            elif doc and doc["kind"] == "Deployment" and "replicas" in doc["spec"]:
                most_pods.setdefault(doc["metadata"]["name"], doc["spec"]["replicas"])
    total = 0
    for process, roles in CONNECTIONS.items():
        dedicated = roles - {"pool", "watch-pool"}
        per_pod = pool + (WATCH_POOL_SIZE if "watch-pool" in roles else 0) + len(dedicated)
        pods = most_pods[f"dynconfig-{process.replace('_', '-')}"]
        cells = rows[process]
        assert cells[1] == str(pool), cells
        assert cells[3].startswith(f"{len(dedicated)}: ") and all(role in cells[3] for role in dedicated), cells
        assert [int(cells[4]), int(cells[5].split()[0]), int(cells[6])] == [per_pod, pods, per_pod * pods], cells
        total += per_pod * pods
    assert rows["all"][6] == str(total), rows["all"]


def _tcp_sockets() -> dict[tuple[int, int], tuple[int, float]]:
    """Every IPv4 TCP socket on this host: (local port, remote port) -> (timer kind, seconds left),
    from /proc/net/tcp (timer kind 2 is the keepalive timer)."""
    ticks = os.sysconf("SC_CLK_TCK")
    sockets = {}
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            local, remote, timer = fields[1], fields[2], fields[5]
            kind, left = timer.split(":")
            sockets[(int(local.split(":")[1], 16), int(remote.split(":")[1], 16))] = (
                int(kind, 16),
                int(left, 16) / ticks,
            )
    return sockets


async def test_every_connection_is_named_and_keeps_alive(
    spawn: Callable[..., Any], pg_server: PostgresServer, private_db: str
) -> None:
    """pg_stat_activity names every connection of the three processes ``dynconfig/<process>/<role>``,
    and both ends of each have TCP keepalives at POSTGRES_KEEPALIVES_IDLE_SECONDS (the server's end got
    its ``tcp_keepalives_idle`` from the connection's options, which carry its ``statement_timeout``
    and ``idle_in_transaction_session_timeout`` as well: see the test after this one)."""
    idle = 21  # not a default anywhere: seen on a socket, it can only have come from the setting
    for name in PROCESSES:
        spawn(name, POSTGRES_URL=private_db, POSTGRES_KEEPALIVES_IDLE_SECONDS=str(idle))
    expected = {f"dynconfig/{process}/{role}" for process, roles in CONNECTIONS.items() for role in roles}
    database = private_db.rsplit("/", 1)[1]
    rows: list[tuple[str, int]] = []
    async with aiopg.connect(pg_server.url) as conn, conn.cursor() as cur:

        async def connected() -> bool:
            nonlocal rows
            await cur.execute(
                "SELECT application_name, client_port FROM pg_stat_activity WHERE datname = %s", (database,)
            )
            rows = await cur.fetchall()
            return {name for name, _ in rows} >= expected

        await eventually(connected, NOTICE_SECONDS, lambda: f"every role connected: {sorted(rows)}", interval=0.2)
    assert {name for name, _ in rows} == expected, sorted(rows)
    ports = {port for _, port in rows}
    unseen = set(ports)
    sockets: dict[tuple[int, int], Any] = {}

    def all_keepalive() -> bool:  # a socket with a statement in flight shows its retransmission timer instead
        nonlocal sockets
        sockets = _tcp_sockets()
        for port in list(unseen):
            ends = [sockets.get((port, pg_server.port)), sockets.get((pg_server.port, port))]
            if all(end is not None and end[0] == 2 and end[1] <= idle + 1 for end in ends):
                unseen.discard(port)
        return not unseen

    await eventually(
        all_keepalive, 5, lambda: f"keepalive timers on every socket; not on {sorted(unseen)}", interval=0.1
    )
    assert not unseen, {
        port: (sockets.get((port, pg_server.port)), sockets.get((pg_server.port, port))) for port in unseen
    }


async def test_each_kind_of_connection_carries_its_timeouts(settings: Settings, private_db: str) -> None:
    """Pooled connections get POSTGRES_STATEMENT_TIMEOUT_SECONDS; dedicated ones (LISTEN, the relay's
    lock) their own, whatever the requests' is, and go to POSTGRES_LISTEN_URL when it is set; every one
    gets the idle-in-transaction timeout, server and client keepalives, JIT off and its name, next to
    any options its URL has."""
    options = "?options=-c%20work_mem%3D8MB"
    custom = settings.replace(
        postgres_url=settings.postgres_url + options,
        postgres_listen_url=private_db + options,
        postgres_statement_timeout_seconds=2,
        postgres_idle_in_transaction_timeout_seconds=17,
        postgres_keepalives_idle_seconds=21,
        postgres_keepalives_interval_seconds=4,
        postgres_keepalives_count=5,
    )
    names = [
        "application_name",
        "statement_timeout",  # ms
        "idle_in_transaction_session_timeout",  # ms
        "tcp_keepalives_idle",
        "tcp_keepalives_interval",
        "tcp_keepalives_count",
        "jit",
        "work_mem",  # kB
    ]
    for dedicated, statement_ms in ((False, 2000), (True, DEDICATED_STATEMENT_TIMEOUT_SECONDS * 1000)):
        target = connector(custom, "test/role", dedicated=dedicated)
        async with aiopg.connect(target.dsn) as conn, conn.cursor() as cur:
            await cur.execute("SELECT current_database()")
            assert await cur.fetchone() == ((private_db if dedicated else settings.postgres_url).rsplit("/", 1)[1],)
            await cur.execute("SELECT name, setting FROM pg_settings WHERE name = ANY(%s)", (names,))
            assert dict(await cur.fetchall()) == {
                "application_name": "dynconfig/test/role",
                "statement_timeout": str(statement_ms),
                "idle_in_transaction_session_timeout": "17000",
                "tcp_keepalives_idle": "21",
                "tcp_keepalives_interval": "4",
                "tcp_keepalives_count": "5",
                "jit": "off",
                "work_mem": "8192",
            }
            client = conn.raw.get_dsn_parameters()
            assert [client[f"keepalives_{part}"] for part in ("idle", "interval", "count")] == ["21", "4", "5"]
        # The client waits longer than the server for a pooled statement (the server cancels first).
        assert target.timeout == (DEDICATED_CLIENT_TIMEOUT_SECONDS if dedicated else 2 + CLIENT_TIMEOUT_MARGIN_SECONDS)


async def test_a_cancelled_statement_raises_its_own_error_and_a_cancelled_task_still_cancels(
    settings: Settings,
) -> None:
    """aiopg 1.4 turns a statement the server cancelled into asyncio.CancelledError; shared/db.py makes
    it raise QueryCanceled (an OperationalError) instead, while cancelling the task that waits still
    cancels it. Checked here so an aiopg upgrade that changes this is caught."""
    pool = await connect_pool(
        connector(settings.replace(postgres_statement_timeout_seconds=1), "test/pool"), wait_seconds=5
    )
    try:
        async with pool.acquire() as conn, conn.cursor() as cur:
            with pytest.raises(psycopg2.errors.QueryCanceled):
                await cur.execute("SELECT pg_sleep(3)")
            await cur.execute("SELECT 1")  # the connection is still usable
            assert await cur.fetchone() == (1,)

        async def sleep() -> None:
            async with pool.acquire() as conn, conn.cursor() as cur:
                await cur.execute("SELECT pg_sleep(0.8)")

        task = asyncio.ensure_future(sleep())
        async with aiopg.connect(settings.postgres_url) as watcher, watcher.cursor() as cur:

            async def sleeping() -> bool:
                await cur.execute("SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(0.8)'")
                return bool((await cur.fetchone())[0])

            await eventually(sleeping, 5, "the statement running", interval=0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        pool.close()
        await pool.wait_closed()


async def test_a_transaction_whose_connection_is_lost_is_not_left_open(settings: Settings) -> None:
    """aiopg 1.4 marks a transaction begun before BEGIN is sent and ended only once COMMIT or ROLLBACK
    answers: one whose connection is lost at BEGIN or COMMIT stays "open" for good, and warns
    (ResourceWarning) whenever the garbage collector reaches it, in whatever code runs then (a test
    failed so). shared/db.py ends it with the failed statement; checked here against aiopg itself."""

    async def terminate(pid: int) -> None:
        async with aiopg.connect(settings.postgres_url) as killer, killer.cursor() as kcur:
            await kcur.execute("SELECT pg_terminate_backend(%s)", (pid,))

    # Lost before COMMIT: the commit fails, and the transaction is over.
    async with aiopg.connect(settings.postgres_url) as conn, conn.cursor() as cur:
        await cur.execute("SELECT pg_backend_pid()")
        (pid,) = await cur.fetchone()
        with pytest.raises(psycopg2.Error):
            async with cur.begin() as transaction:
                await cur.execute("SELECT 1")
                await terminate(pid)
        assert not transaction.is_begin

    # Lost before BEGIN: the begin fails, and no transaction is open.
    async with aiopg.connect(settings.postgres_url) as conn, conn.cursor() as cur:
        await cur.execute("SELECT pg_backend_pid()")
        (pid,) = await cur.fetchone()
        await terminate(pid)
        transaction = Transaction(cur, IsolationLevel.default)
        with pytest.raises(psycopg2.Error):
            await transaction.begin()
        assert not transaction.is_begin
