"""The development tooling itself: dev servers, test JWKS, dev keys, ``dev/token`` and ``dev/up``."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import aiopg
import jwt
import psycopg2
import pytest
import redis
import redis.asyncio as aioredis
from support import eventually, eventually_sync

from devtools.devkeys import ensure_dev_keys, load_dev_keys, mint_token
from devtools.services import PostgresServer, RedisServer, ServerError, free_port, port_in_use
from devtools.up import build_env
from shared.settings import parse_jwks_url, parse_keyring

if TYPE_CHECKING:
    from tests.conftest import JwksServer

REPO_ROOT = Path(__file__).resolve().parents[2]


def _rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    conn = psycopg2.connect(url)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


def _ping(url: str) -> bool:
    client = redis.Redis.from_url(url)
    try:
        return bool(client.ping())
    finally:
        client.close()


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


# --- servers ------------------------------------------------------------------------------------


def test_free_port_is_bindable() -> None:
    port = free_port()
    assert 1024 < port < 65536
    assert not port_in_use(port)


def test_postgres_keeps_data_across_restart_and_crash(pg_server: PostgresServer, unique_prefix: str) -> None:
    port = pg_server.port
    _rows(pg_server.url, f"CREATE TABLE {unique_prefix} (n int); INSERT INTO {unique_prefix} VALUES (1)")
    first_pid = pg_server.pid

    pg_server.restart()
    assert (pg_server.port, pg_server.running) == (port, True)
    assert pg_server.pid != first_pid
    _rows(pg_server.url, f"INSERT INTO {unique_prefix} VALUES (2)")

    pg_server.kill()
    assert not pg_server.running and pg_server.pid is None
    pg_server.start()
    assert _rows(pg_server.url, f"SELECT n FROM {unique_prefix} ORDER BY n") == [(1,), (2,)]


def test_stopping_twice_is_harmless_and_the_server_comes_back(pg_server: PostgresServer) -> None:
    pg_server.stop()
    pg_server.stop()
    assert not pg_server.running and pg_server.pid is None
    assert not port_in_use(pg_server.port)
    # the autouse fixture restarts it for the next test


def test_postgres_server_as_context_manager(tmp_path: Path) -> None:
    base = Path(tempfile.mkdtemp(prefix="dynconfig-pg-"))
    try:
        os.chmod(base, 0o755)
        if os.geteuid() == 0:
            shutil.chown(base, "postgres", "postgres")
        with PostgresServer(base / "data") as server:
            assert _rows(server.url, "SELECT current_database(), current_user") == [("dynconfig", "dynconfig")]
            pid = server.pid
        assert not server.running
        assert pid is not None and not Path(f"/proc/{pid}").exists()
        assert (base / "data.log").stat().st_size > 0  # the log went to a file, not our output
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_redis_restart_same_port(redis_server: RedisServer) -> None:
    client = redis.Redis.from_url(redis_server.url)
    try:
        assert client.ping()
        port, pid = redis_server.port, redis_server.pid
        redis_server.restart()
        assert (redis_server.port, redis_server.running) == (port, True)
        assert redis_server.pid != pid
        assert client.ping()  # redis-py reconnects
        redis_server.kill()
        with pytest.raises(redis.ConnectionError):
            client.ping()
    finally:
        client.close()


def test_redis_server_as_context_manager(tmp_path: Path) -> None:
    with RedisServer(tmp_path / "redis") as server:
        assert _ping(server.url)
    server.stop()
    assert not server.running


async def test_pg_and_redis_client_fixtures(pg: aiopg.Pool, redis_client: aioredis.Redis) -> None:
    async with pg.acquire() as conn, conn.cursor() as cur:
        await cur.execute("SELECT current_database()")
        assert await cur.fetchone() == ("dynconfig",)
    assert await redis_client.ping()


# --- the test JWKS ------------------------------------------------------------------------------


def _verify(jwks: JwksServer, token: str) -> dict[str, Any]:
    keyset = jwt.PyJWKSet.from_dict(_get_json(jwks.url))
    kid = jwt.get_unverified_header(token)["kid"]
    key = keyset[kid]
    return jwt.decode(token, key.key, algorithms=[key.algorithm_name])


def test_jwks_serves_keys_that_verify_tokens(jwks: JwksServer) -> None:
    document = _get_json(jwks.url)
    assert {(k["kid"], k["alg"], k["use"]) for k in document["keys"]} == {
        ("test-key-1", "ES256", "sig"),
        ("test-rsa-1", "RS256", "sig"),
    }
    assert all("d" not in k for k in document["keys"])  # public halves only
    assert jwks.fetch_count == 1

    claims = _verify(jwks, jwks.token())
    assert claims["username"] == claims["sub"] == "admin-user"
    assert claims["exp"] - claims["iat"] == 3600
    assert _verify(jwks, jwks.token("alice", key="rsa", role="x"))["role"] == "x"
    assert jwks.fetch_count == 3


def test_jwks_token_options(jwks: JwksServer) -> None:
    unsigned = jwt.decode(jwks.token(exp_in=None, username=None), options={"verify_signature": False})
    assert "exp" not in unsigned and "username" not in unsigned
    header = jwt.get_unverified_header(jwks.token(kid="nope", headers={"typ": "JWT"}))
    assert header["kid"] == "nope" and header["typ"] == "JWT"
    with pytest.raises(jwt.ExpiredSignatureError):
        _verify(jwks, jwks.token(exp_in=-60))


def test_jwks_rotation_and_outage(jwks: JwksServer) -> None:
    new = jwks.new_key("ec", "rotated-1")
    jwks.add_key(new)
    assert _verify(jwks, jwks.token("bob", key=new))["username"] == "bob"
    jwks.remove_key("test-key-1")
    assert {k["kid"] for k in _get_json(jwks.url)["keys"]} == {"test-rsa-1", "rotated-1"}
    jwks.set_keys(new)
    assert [k.kid for k in jwks.keys] == ["rotated-1"]

    jwks.fail_with = 503
    with pytest.raises(urllib.error.HTTPError) as failure:
        _get_json(jwks.url)
    assert failure.value.code == 503
    failure.value.close()

    jwks.reset()
    assert jwks.fetch_count == 0 and len(_get_json(jwks.url)["keys"]) == 2


# --- dev keys and dev/token ---------------------------------------------------------------------


def test_dev_keys_are_created_once_and_private(tmp_path: Path) -> None:
    keys = ensure_dev_keys(tmp_path / "keys")
    for path in (keys.signing_key_path, keys.jwks_path, tmp_path / "keys" / "encryption-keys"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ensure_dev_keys(tmp_path / "keys") == keys
    assert load_dev_keys(tmp_path / "keys") == keys
    assert load_dev_keys(tmp_path / "elsewhere") is None

    (ring,) = parse_keyring(keys.encryption_keys)
    assert ring[0] == "dev1" and len(ring[1]) == 32
    assert parse_jwks_url(keys.jwks_url).startswith("file:///")
    assert keys.encryption_keys not in repr(keys)

    (jwk,) = json.loads(keys.jwks_path.read_text())["keys"]
    assert (jwk["kid"], jwk["alg"], jwk["use"], jwk["crv"]) == (keys.kid, "ES256", "sig", "P-256")


def test_mint_token_round_trip(tmp_path: Path) -> None:
    keys = ensure_dev_keys(tmp_path)
    token = mint_token(keys.signing_key_path, keys.kid, "carol", ttl_seconds=120, team="ops")
    assert jwt.get_unverified_header(token)["kid"] == keys.kid
    key = jwt.PyJWKSet.from_dict(json.loads(keys.jwks_path.read_text()))[keys.kid]
    claims = jwt.decode(token, key.key, algorithms=["ES256"])
    assert (claims["username"], claims["sub"], claims["team"]) == ("carol", "carol", "ops")
    assert claims["exp"] - claims["iat"] == 120


def _token_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "devtools.token", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=30
    )


def test_token_cli_without_keys_exits_2_with_one_line(tmp_path: Path) -> None:
    result = _token_cli("--username", "admin-user", "--dir", str(tmp_path))
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1
    assert "./dev/up" in result.stderr


def test_token_cli_mints_with_the_dev_key(tmp_path: Path) -> None:
    keys = ensure_dev_keys(tmp_path / "keys")
    result = _token_cli("--username", "admin-user", "--ttl", "60", "--dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    key = jwt.PyJWKSet.from_dict(json.loads(keys.jwks_path.read_text()))[keys.kid]
    claims = jwt.decode(result.stdout.strip(), key.key, algorithms=["ES256"])
    assert claims["username"] == "admin-user" and claims["exp"] - claims["iat"] == 60


# --- dev/up -------------------------------------------------------------------------------------

_STUB = """
import json, os, sys
from http.server import BaseHTTPRequestHandler, HTTPServer

if os.environ.get("STUB_EXIT"):
    sys.exit(int(os.environ["STUB_EXIT"]))

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"status": "healthy", "env": dict(os.environ)}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

HTTPServer(("127.0.0.1", int(os.environ["API_PORT"])), Handler).serve_forever()
"""
_RUN_UP = (
    "import devtools.up as up; up.PROCESSES[:] = [('dev_stub', 'API_PORT', 8080)]; "
    "up.PUBLIC_PORT_VAR = 'API_PORT'; up.main()"
)


@pytest.fixture
def up_dir() -> Iterator[Path]:
    """A scratch dir for a dev/up run that the postgres user can traverse, with a stub process."""
    base = Path(tempfile.mkdtemp(prefix="dynconfig-up-"))
    os.chmod(base, 0o755)
    (base / "dev_stub.py").write_text(textwrap.dedent(_STUB))
    yield base
    shutil.rmtree(base, ignore_errors=True)


def _up_env(up_dir: Path, **extra: str) -> dict[str, str]:
    unset = ("POSTGRES_URL", "REDIS_URL", "REDIS_HOST", "JWKS_URL", "ENCRYPTION_KEYS")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    env.update(PYTHONPATH=f"{up_dir}{os.pathsep}{REPO_ROOT}", DYNCONFIG_DEV_DIR=str(up_dir / ".dev"), **extra)
    return env


def test_up_runs_everything_and_stops_it_on_sigterm(up_dir: Path) -> None:
    pg_port, redis_port, api_port = free_port(), free_port(), free_port()
    env = _up_env(
        up_dir, DEV_PG_PORT=str(pg_port), DEV_REDIS_PORT=str(redis_port), API_PORT=str(api_port), MY_SETTING="kept"
    )
    log = up_dir / "up.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", _RUN_UP], cwd=REPO_ROOT, env=env, stdout=out, stderr=out)
    try:
        eventually_sync(
            lambda: "is up at" in log.read_text(), 60, lambda: f"the banner; log:\n{log.read_text()}", interval=0.1
        )
        text = log.read_text()
        assert f"http://localhost:{api_port}" in text and "./dev/token --username admin-user" in text

        child_env = _get_json(f"http://127.0.0.1:{api_port}/health")["env"]
        assert child_env["POSTGRES_URL"] == f"postgresql://dynconfig@127.0.0.1:{pg_port}/dynconfig"
        assert child_env["REDIS_URL"] == f"redis://127.0.0.1:{redis_port}/0"
        assert child_env["JWKS_URL"] == (up_dir / ".dev" / "keys" / "jwks.json").as_uri()
        assert child_env["ENCRYPTION_KEYS"].startswith("dev1:")
        assert child_env["MY_SETTING"] == "kept"
        assert _rows(child_env["POSTGRES_URL"], "SELECT 1") == [(1,)]
        assert _ping(child_env["REDIS_URL"])

        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert time.monotonic() - started < 8, log.read_text()  # nobody needed the 10 s SIGKILL
        assert not any(port_in_use(p) for p in (pg_port, redis_port, api_port))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_up_stops_when_a_process_dies(up_dir: Path, pg_server: PostgresServer, redis_server: RedisServer) -> None:
    env = _up_env(
        up_dir, POSTGRES_URL=pg_server.url, REDIS_URL=redis_server.url, API_PORT=str(free_port()), STUB_EXIT="3"
    )
    result = subprocess.run(
        [sys.executable, "-c", _RUN_UP], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert "dev_stub exited with status 3" in result.stderr
    assert not (up_dir / ".dev" / "postgres").exists()  # an external POSTGRES_URL starts no server


def test_build_env_passes_user_settings_through(tmp_path: Path) -> None:
    keys = ensure_dev_keys(tmp_path)
    env = build_env(
        {"LOG_LEVEL": "DEBUG", "JWKS_URL": "https://idp/jwks", "X": "1"},
        keys,
        "postgresql://h/db",
        None,
        [("api_server", "API_PORT", 8080), ("notifier", "NOTIFIER_PORT", 8081)],
    )
    assert env["POSTGRES_URL"] == "postgresql://h/db" and "REDIS_URL" not in env
    assert (env["LOG_LEVEL"], env["JWKS_URL"], env["X"]) == ("DEBUG", "https://idp/jwks", "1")
    assert env["ENCRYPTION_KEYS"] == keys.encryption_keys
    assert (env["API_PORT"], env["NOTIFIER_PORT"]) == ("8080", "8081")


# --- one dev/up at a time -----------------------------------------------------------------------

_HOLD_LOCK = (
    "import sys, time; from pathlib import Path; from devtools.up import RunLock; "
    "RunLock(Path(sys.argv[1])).acquire(); print('locked', flush=True); time.sleep(120)"
)


def test_a_second_up_says_which_one_runs_and_exits_1(up_dir: Path) -> None:
    from devtools.up import AlreadyRunning, RunLock

    dev_dir = up_dir / ".dev"
    dev_dir.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(dev_dir)], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        with pytest.raises(AlreadyRunning) as caught:
            RunLock(dev_dir).acquire()
        assert caught.value.pid == holder.pid
        message = str(caught.value)
        assert message.startswith(f"another ./dev/up is running (pid {holder.pid}, started ")
        assert f"data in {dev_dir}" in message and f"`kill {holder.pid}`" in message and "Ctrl-C" in message

        # The real command: one line, exit 1, before it touches Postgres, Redis or any port.
        pg_port = free_port()
        env = _up_env(up_dir, DEV_PG_PORT=str(pg_port), DEV_REDIS_PORT=str(free_port()), API_PORT=str(free_port()))
        result = subprocess.run(
            [sys.executable, "-c", _RUN_UP], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 1, result.stderr
        assert result.stderr == f"dev/up: {message}\n"
        assert not (dev_dir / "postgres").exists() and not port_in_use(pg_port)
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()
    # A run that died (SIGKILL: no clean-up) leaves nothing that blocks the next one.
    lock = RunLock(dev_dir)
    lock.acquire()
    lock.release()


def test_postgres_port_held_by_an_earlier_postgres_of_the_same_data_names_it(tmp_path: Path) -> None:
    # What a postgres left running on .dev/postgres looks like: its postmaster.pid names a live
    # process that listens on the port.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        data_dir = tmp_path / "postgres"
        data_dir.mkdir()
        sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        try:
            (data_dir / "postmaster.pid").write_text(f"{sleeper.pid}\n{data_dir}\n1700000000\n{port}\n\n127.0.0.1\n")
            with pytest.raises(ServerError) as caught:
                PostgresServer(data_dir, port).start()
            assert str(caught.value) == (
                f"postgres: port 127.0.0.1:{port} is already in use by the postgres of an earlier run "
                f"(pid {sleeper.pid}, data in {data_dir}); stop it with `kill {sleeper.pid}`"
            )
            sleeper.kill()
            sleeper.wait()
            with pytest.raises(ServerError) as caught:  # its pid file is stale: somebody else has the port
                PostgresServer(data_dir, port).start()
            assert str(caught.value) == f"postgres: port 127.0.0.1:{port} is already in use"
        finally:
            sleeper.kill()
            sleeper.wait()


# --- the first install ------------------------------------------------------------------------

# Stands in for python3 on PATH: "python3 -m venv .venv" makes a .venv whose python records its arguments.
_FAKE_PYTHON3 = """#!/usr/bin/env bash
set -euo pipefail
[[ "$1 $2 $3" == "-m venv .venv" ]] || exit 9
mkdir -p .venv/bin
printf '#!/usr/bin/env bash\\necho "$*" >> "%s/pip-args"\\n' "$PWD" > .venv/bin/python
chmod +x .venv/bin/python
: > .venv/bin/activate
"""


def _source_dev_venv(tmp_path: Path, terminal: bool) -> tuple[str, list[str]]:
    """Source a copy of dev/_venv in a fresh checkout (no .venv); its stderr and the pip calls made."""
    root = tmp_path / "checkout"
    (root / "dev").mkdir(parents=True)
    shutil.copy(REPO_ROOT / "dev" / "_venv", root / "dev" / "_venv")
    (root / "setup.cfg").write_text("[metadata]\nname = x\n")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "python3").write_text(_FAKE_PYTHON3)
    (bindir / "python3").chmod(0o755)
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"}
    command = ["bash", "-c", "set -euo pipefail; . dev/_venv; echo sourced"]
    if not terminal:
        result = subprocess.run(command, cwd=root, env=env, capture_output=True, timeout=30)
        stderr = result.stderr
    else:
        import pty

        primary, secondary = pty.openpty()
        try:
            result = subprocess.run(command, cwd=root, env=env, stdout=subprocess.PIPE, stderr=secondary, timeout=30)
        finally:
            os.close(secondary)
        stderr = b""
        try:
            while chunk := os.read(primary, 65536):
                stderr += chunk
        except OSError:  # EIO once everything written to the terminal has been read
            pass
        finally:
            os.close(primary)
    assert (result.returncode, result.stdout) == (0, b"sourced\n"), stderr
    return stderr.decode().replace("\r\n", "\n"), (root / "pip-args").read_text().splitlines()


@pytest.mark.parametrize("terminal", [True, False], ids=["terminal", "ci"])
def test_first_install_says_what_it_does_and_how_long_it_takes(tmp_path: Path, terminal: bool) -> None:
    stderr, pip_calls = _source_dev_venv(tmp_path, terminal)
    first = stderr.splitlines()[0]
    assert "installing" in first and "a minute or two" in first and "first run" in first, stderr
    assert "installed" in stderr.splitlines()[-1], stderr
    # Every dependency from the lock, pinned and hash-checked; then the project alone, editable.
    dependencies, project = pip_calls
    assert dependencies.startswith("-m pip install") and dependencies.endswith(
        "--require-hashes -r requirements-test.lock"
    )
    assert project.startswith("-m pip install") and project.endswith("--no-deps --no-build-isolation -e .")
    # On a terminal pip shows its own progress; in CI (no terminal) it stays quiet.
    for pip in pip_calls:
        assert ("-q" in pip.split()) is not terminal, pip


# --- the front door -------------------------------------------------------------------------------


async def test_front_door_passes_close_codes_and_reasons_both_ways(
    aiohttp_server: Any, notifier_server: Any, token: Callable[..., str]
) -> None:
    """What a browser on http://localhost:8080 sees: the notifier's close code *and* reason."""
    from devtools.frontdoor import create_app
    from notifier.watch import CONNECTIONS

    door = await aiohttp_server(create_app("http://127.0.0.1:9", str(notifier_server.make_url("")).rstrip("/")))
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(door.make_url("/watch"))
        await ws.send_json({"subscribe": ["app.*"]})  # no token first
        error = await ws.receive_json(timeout=10)
        assert error["error"] == "Unauthorized"
        closing = await ws.receive(timeout=10)
        assert (closing.type, closing.data, closing.extra) == (
            aiohttp.WSMsgType.CLOSE,
            4401,
            "unauthorized: send a token first",
        )

        # A client's own close goes through to the notifier, which lets the connection go.
        connections = notifier_server.app[CONNECTIONS]
        ws = await session.ws_connect(door.make_url("/watch"), headers={"Authorization": f"Bearer {token()}"})
        await ws.send_json({"subscribe": ["app.*"]})
        assert (await ws.receive_json(timeout=10))["event"] == "subscribed"
        assert len(connections) == 1
        await asyncio.wait_for(ws.close(code=4000, message=b"client going"), 10)
        await eventually(lambda: not connections, 10, "the notifier letting the closed connection go", interval=0.02)


async def test_front_door_passes_a_refused_watch_handshake_on(
    aiohttp_server: Any, make_notifier: Callable[..., Any], settings: Any, token: Callable[..., str], unique_prefix: str
) -> None:
    """A user over the rate limit gets the notifier's 429 (JSON, Retry-After) through :8080 too, not a 502."""
    from devtools.frontdoor import create_app

    notifier = await make_notifier(settings.replace(rate_limit=1))
    door = await aiohttp_server(create_app("http://127.0.0.1:9", str(notifier.make_url("")).rstrip("/")))
    auth = {"Authorization": f"Bearer {token(username=f'{unique_prefix}-user')}"}
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(door.make_url("/watch"), headers=auth)  # the one request allowed
        await ws.close()
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(door.make_url("/watch"), headers=auth)
        assert refused.value.status == 429
        assert refused.value.headers is not None and int(refused.value.headers["Retry-After"]) >= 1
        handshake = {
            **auth,
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version": "13",
        }
        async with session.get(door.make_url("/watch"), headers=handshake) as resp:
            assert resp.status == 429
            body = await resp.json()
            assert set(body) == {"error", "message"} and body["error"] == "Rate Limited", body
