"""The real ``python -m api_server`` process: start-up checks, serving, logs, TLS, SIGTERM (SPEC §1, §8)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import ssl
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from http import HTTPStatus
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import aiohttp
import psycopg2
import pytest
from aiohttp.test_utils import TestClient
from support import eventually, write_self_signed

from devtools.services import PostgresServer, RedisServer, die_with_parent, free_port
from dynconfig_admin.migrate import migrate
from shared.migrations import MIGRATIONS
from shared.settings import Settings
from shared.version import SCHEMA_MAX, SCHEMA_MIN, VERSION

if TYPE_CHECKING:
    from tests.conftest import JwksServer

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT = 20.0
QUICK_EXIT_TIMEOUT = 15.0


# --- running the process ------------------------------------------------------------------------


def _base_env() -> dict[str, str]:
    """Only what a Python process needs from our environment: none of DynConfig's own variables."""
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT")
    return {name: os.environ[name] for name in keep if name in os.environ}


@pytest.fixture
def process_env(
    settings: Settings, pg_server: PostgresServer, redis_server: RedisServer, jwks: JwksServer
) -> dict[str, str]:
    """A complete, valid environment for one api_server on a free port.

    The keyring comes from the ``settings`` fixture, i.e. conftest's ``TEST_ENCRYPTION_KEYS``
    (importing ``tests.conftest`` here would load a second copy of conftest with another random key).
    """
    key_id, key = settings.encryption_keys[0]
    return {
        **_base_env(),
        "POSTGRES_URL": pg_server.url,
        "REDIS_URL": redis_server.url,
        "JWKS_URL": jwks.url,
        "ENCRYPTION_KEYS": f"{key_id}:{base64.b64encode(key).decode()}",
        # The session's budget, not the default 1,000/min: the admin's requests are counted in the
        # session's Redis across tests (a version-skew run just before left it nearly spent).
        "RATE_LIMIT": str(settings.rate_limit),
        "API_PORT": str(free_port()),
        "HOST": "127.0.0.1",
    }


def run_to_exit(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run ``python -m api_server`` expecting it to stop by itself (it must not hang)."""
    return subprocess.run(
        [sys.executable, "-m", "api_server"],
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=QUICK_EXIT_TIMEOUT,
        preexec_fn=die_with_parent(signal.SIGKILL),
    )


class ApiProcess:
    """One running api_server; stderr goes to a file so a chatty process never blocks on a pipe."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.port = int(env["API_PORT"])
        self.scheme = "https" if env.get("TLS_CERT_FILE") else "http"
        self.log_path = log_path
        self._log: IO[bytes] = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "api_server"],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._log,
            preexec_fn=die_with_parent(signal.SIGKILL),
        )

    @property
    def base(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def stderr(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout: float = 10.0) -> int:
        """SIGTERM and wait; the exit code (raises TimeoutExpired when it does not stop)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        """Make sure the process is gone (teardown)."""
        try:
            if self.proc.poll() is None:
                try:
                    self.terminate()
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        finally:
            self._log.close()

    async def wait_healthy(self, ssl_ctx: ssl.SSLContext | None = None) -> dict[str, Any]:
        """Poll ``/health`` until 200; fail with the process's stderr if it exits or never gets there."""
        timeout = aiohttp.ClientTimeout(total=2)
        async with aiohttp.ClientSession(timeout=timeout) as session:

            async def healthy() -> dict[str, Any] | None:
                code = self.proc.poll()
                if code is not None:
                    pytest.fail(f"api_server exited with {code} before it was healthy:\n{self.stderr()}")
                async with session.get(f"{self.base}/health", ssl=ssl_ctx if ssl_ctx else True) as resp:
                    if resp.status == 200:
                        body: dict[str, Any] = await resp.json()
                        return body
                return None

            return await eventually(
                healthy,
                START_TIMEOUT,
                lambda: f"api_server healthy:\n{self.stderr()}",
                interval=0.1,
                ignoring=(TimeoutError, aiohttp.ClientError),
            )


StartApi = Callable[[dict[str, str]], ApiProcess]


@pytest.fixture
def start_api(tmp_path: Path) -> Iterator[StartApi]:
    """``start_api(env)`` starts a process; every one started is stopped at teardown."""
    started: list[ApiProcess] = []

    def start(env: dict[str, str]) -> ApiProcess:
        proc = ApiProcess(env, tmp_path / f"api-{len(started)}.stderr")
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture
async def api(start_api: StartApi, process_env: dict[str, str]) -> ApiProcess:
    """One healthy api_server with the default test environment."""
    proc = start_api(process_env)
    await proc.wait_healthy()
    return proc


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def stderr_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


# --- bad settings stop the process with one line ------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("POSTGRES_URL", None),
        ("RATE_LIMIT", "abc"),
        ("ENCRYPTION_KEYS", "bad"),
        ("JWKS_URL", "ftp://example.com/jwks.json"),
        ("API_PORT", "70000"),
    ],
)
def test_bad_setting_exits_with_one_line_naming_the_variable(
    process_env: dict[str, str], variable: str, value: str | None
) -> None:
    env = dict(process_env)
    if value is None:
        del env[variable]
    else:
        env[variable] = value
    result = run_to_exit(env)
    assert result.returncode != 0
    lines = stderr_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    assert variable in lines[0]
    assert "Traceback" not in result.stderr


def test_unreachable_postgres_exits_with_a_line_naming_postgres(process_env: dict[str, str]) -> None:
    password = "pw-" + uuid.uuid4().hex[:8]
    env = {
        **process_env,
        "POSTGRES_URL": f"postgresql://dynconfig:{password}@127.0.0.1:{free_port()}/dynconfig",
        "STARTUP_TIMEOUT_SECONDS": "1",
    }
    result = run_to_exit(env)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = stderr_lines(result.stderr)
    assert lines, "no explanation on stderr"
    assert "postgres" in lines[-1].lower(), result.stderr
    assert password not in result.stderr


# --- serving --------------------------------------------------------------------------------------


async def test_health_answers_healthy(api: ApiProcess) -> None:
    async with aiohttp.ClientSession() as session, session.get(f"{api.base}/health") as resp:
        assert resp.status == 200
        assert resp.content_type == "application/json"
        body = await resp.json()
    assert body["status"] == "healthy"


async def test_put_then_get_round_trip_over_http(
    api: ApiProcess, token: Callable[..., str], unique_prefix: str
) -> None:
    key = f"{unique_prefix}.process.roundtrip"
    value = {"enabled": True, "level": [1, 2, 3]}
    async with aiohttp.ClientSession(headers=auth(token())) as session:
        async with session.put(f"{api.base}/keys/{key}", json={"value": value}) as resp:
            assert resp.status == 201
            written = await resp.json()
        assert written["key"] == key
        assert written["version"] == 1
        async with session.get(f"{api.base}/keys/{key}") as resp:
            assert resp.status == 200
            assert resp.headers["ETag"] == '"1"'
            body = await resp.json()
    assert body["key"] == key
    assert body["value"] == value
    assert body["version"] == 1
    assert body["lastModified"] == written["lastModified"]


async def test_sigterm_exits_zero_within_10s(api: ApiProcess) -> None:
    assert api.terminate(timeout=10.0) == 0
    assert "Traceback" not in api.stderr()


async def test_access_log_has_path_but_no_query_value_no_stored_value_no_token(
    api: ApiProcess, token: Callable[..., str], unique_prefix: str
) -> None:
    key = f"{unique_prefix}.process.logged"
    secret_query = "SECRETVALUE" + uuid.uuid4().hex
    stored = "STOREDVALUE" + uuid.uuid4().hex
    jwt = token()
    async with aiohttp.ClientSession(headers=auth(jwt)) as session:
        async with session.put(f"{api.base}/keys/{key}", json={"value": stored}) as resp:
            assert resp.status == 201
        async with session.get(f"{api.base}/keys/{key}", params={"access_token": secret_query}) as resp:
            assert resp.status == 200
            assert (await resp.json())["value"] == stored
    assert api.terminate() == 0
    log = api.stderr()
    assert f"/keys/{key}" in log
    assert secret_query not in log
    assert stored not in log
    assert jwt not in log
    assert jwt.split(".")[2] not in log  # not even the signature


# --- the schema: processes never migrate -------------------------------------------------------


async def test_a_process_refuses_a_database_nobody_migrated_then_starts_once_it_is(
    start_api: StartApi, process_env: dict[str, str], empty_db: str
) -> None:
    env = {**process_env, "POSTGRES_URL": empty_db}
    result = run_to_exit(env)
    assert result.returncode == 1, result.stderr
    assert stderr_lines(result.stderr) == [
        f"api_server: cannot start: database has no DynConfig schema, this release ({VERSION}) needs "
        f"{SCHEMA_MIN}–{SCHEMA_MAX}; run dynconfig-migrate first"
    ], result.stderr
    with psycopg2.connect(empty_db) as conn, conn.cursor() as cur:
        cur.execute("SELECT to_regclass('schema_migrations'), to_regclass('keys')")
        assert cur.fetchone() == (None, None), "the process created part of the schema"
    conn.close()

    migrate(empty_db)
    proc = start_api(env)
    body = await proc.wait_healthy()
    assert body["version"] == VERSION and body["checks"]["schema"] == MIGRATIONS[-1].version, body
    assert proc.terminate() == 0


# --- TLS ------------------------------------------------------------------------------------------


@pytest.fixture
async def tls_api(start_api: StartApi, process_env: dict[str, str], tmp_path: Path) -> tuple[ApiProcess, Path]:
    cert, key = write_self_signed(tmp_path)
    proc = start_api({**process_env, "TLS_CERT_FILE": str(cert), "TLS_KEY_FILE": str(key)})
    await proc.wait_healthy(ssl.create_default_context(cafile=str(cert)))
    return proc, cert


async def test_tls_serves_https_with_tls13(tls_api: tuple[ApiProcess, Path]) -> None:
    proc, cert = tls_api
    ctx = ssl.create_default_context(cafile=str(cert))
    async with aiohttp.ClientSession() as session, session.get(f"{proc.base}/health", ssl=ctx) as resp:
        assert resp.status == 200
        assert (await resp.json())["status"] == "healthy"

    # The same handshake on a bare connection, to read the negotiated version.
    reader, writer = await asyncio.open_connection("127.0.0.1", proc.port, ssl=ctx, server_hostname="127.0.0.1")
    try:
        assert writer.get_extra_info("ssl_object").version() == "TLSv1.3"
        writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), timeout=10)
        assert status_line.startswith(b"HTTP/1.1 200")
    finally:
        writer.close()
        await writer.wait_closed()


async def test_tls_refuses_a_tls12_client(tls_api: tuple[ApiProcess, Path]) -> None:
    proc, cert = tls_api
    ctx = ssl.create_default_context(cafile=str(cert))
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        with pytest.raises(aiohttp.ClientConnectorError):
            async with session.get(f"{proc.base}/health", ssl=ctx):
                pass


async def test_plain_http_to_the_tls_port_gets_no_api_answer(tls_api: tuple[ApiProcess, Path]) -> None:
    proc, _ = tls_api
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        with pytest.raises(aiohttp.ClientError):
            async with session.get(f"http://127.0.0.1:{proc.port}/health") as resp:
                await resp.read()
                raise AssertionError(f"plain HTTP got {resp.status}")


# --- Postgres down while running (in-process) -----------------------------------------------------


async def test_postgres_down_health_503_reads_503_then_recovers(
    client: TestClient[Any, Any],
    pg_server: PostgresServer,
    token: Callable[..., str],
    unique_prefix: str,
) -> None:
    resp = await client.get("/health")
    assert resp.status == 200
    timeout = aiohttp.ClientTimeout(total=15)

    pg_server.stop()

    resp = await client.get("/health", timeout=timeout)
    assert resp.status == 503
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert body["error"] == "Service Unavailable"
    assert isinstance(body["message"], str) and body["message"]
    assert body.get("status") != "healthy"
    assert "postgres" in json.dumps(body).lower()

    resp = await client.get(f"/keys/{unique_prefix}.pg-down", headers=auth(token()), timeout=timeout)
    assert resp.status == 503, await resp.text()  # SPEC §7: 503 with Retry-After, never 500
    assert resp.headers.get("Retry-After", "").isdigit()
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert set(body) >= {"error", "message"}
    assert body["error"] == HTTPStatus(resp.status).phrase

    pg_server.start()

    async def healthy() -> bool:
        async with client.get("/health", timeout=timeout) as resp:
            if resp.status == 200:
                assert (await resp.json())["status"] == "healthy"
            return resp.status == 200

    await eventually(healthy, 15, "healthy within 15 s of Postgres coming back", interval=0.2)

    resp = await client.get(f"/keys/{unique_prefix}.pg-down", headers=auth(token()), timeout=timeout)
    assert resp.status == 404
    assert (await resp.json())["error"] == "Not Found"


async def test_processes_with_reuse_port_share_one_port(spawn: Callable[..., Any], settings: Settings) -> None:
    """REUSE_PORT lets a second api_server serve on the first one's port (more than one core per
    machine); without it the second stops with one line; with one of two stopped, the port still serves."""
    first = spawn("api_server", REUSE_PORT="true")
    second = spawn("api_server", port=first.port, REUSE_PORT="true")
    refused = spawn("api_server", wait=False, port=first.port)
    assert refused.popen.wait(QUICK_EXIT_TIMEOUT) != 0
    lines = stderr_lines(refused.log())
    assert lines and "cannot listen" in lines[-1], refused.log()
    first.popen.send_signal(signal.SIGTERM)
    assert first.popen.wait(QUICK_EXIT_TIMEOUT) == 0
    for _ in range(20):  # new connections each time: all of them reach the one still running
        async with aiohttp.ClientSession() as session, session.get(f"{first.url}/health") as resp:
            assert resp.status == 200
    assert second.popen.poll() is None
