"""Shared fixtures: real Postgres, Redis and a JWKS endpoint for the whole session.

One fixture per resource. The servers are session-scoped and private to the run (free ports on
127.0.0.1); a test may stop or kill them, and they are running again before the next test starts.
Tests keep apart by using ``unique_prefix`` in every key they create.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal
from uuid import uuid4

import aiopg
import jwt
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from support import (
    MIGRATED_TEMPLATE,
    copy_database,
    drop_database,
    eventually,
    migrated_database,
    new_database,
    process_env,
)

from devtools.services import PostgresServer, RedisServer
from dynconfig_admin.migrate import migrate
from shared.settings import Settings

#: One keyring for the whole session: values written by one test stay readable in the next.
# Kept in the environment so that a second import of this module (``tests.conftest`` vs ``conftest``)
# and the processes tests start all see the same key.
TEST_ENCRYPTION_KEYS: tuple[tuple[str, bytes], ...] = (
    ("k1", bytes.fromhex(os.environ.setdefault("DYNCONFIG_TEST_KEY_HEX", os.urandom(32).hex()))),
)
ADMIN = "admin-user"

_RUNNING: list[PostgresServer | RedisServer] = []
_JWKS: list[JwksServer] = []


# --- JWKS ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SigningKey:
    """A private key the test JWKS publishes (public half) and signs tokens with."""

    kid: str
    alg: str
    private_key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

    @classmethod
    def generate(cls, kind: Literal["ec", "rsa"] = "ec", kid: str | None = None) -> SigningKey:
        """A fresh EC P-256 (ES256) or RSA-2048 (RS256) key."""
        kid = kid or f"test-{kind}-{uuid4().hex[:8]}"
        if kind == "ec":
            return cls(kid, "ES256", ec.generate_private_key(ec.SECP256R1()))
        return cls(kid, "RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048))

    def public_jwk(self) -> dict[str, Any]:
        """The JWK of the public key, with ``kid``, ``alg`` and ``use``."""
        public = self.private_key.public_key()
        if isinstance(public, ec.EllipticCurvePublicKey):
            jwk: dict[str, Any] = ECAlgorithm.to_jwk(public, as_dict=True)
        else:
            jwk = RSAAlgorithm.to_jwk(public, as_dict=True)
        return {**jwk, "kid": self.kid, "alg": self.alg, "use": "sig"}


class JwksServer:
    """A real HTTP JWKS endpoint (``GET /jwks.json``) whose key set tests can rotate."""

    def __init__(self) -> None:
        self.ec_key = SigningKey.generate("ec", "test-key-1")
        self.rsa_key = SigningKey.generate("rsa", "test-rsa-1")
        self._lock = threading.Lock()
        self._keys: dict[str, SigningKey] = {}
        self._fetches = 0
        #: When set, ``/jwks.json`` answers with this HTTP status instead of the keys.
        self.fail_with: int | None = None
        self.reset()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="jwks", daemon=True)

    @property
    def url(self) -> str:
        """``http://127.0.0.1:{port}/jwks.json``."""
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/jwks.json"

    @property
    def fetch_count(self) -> int:
        """How many times ``/jwks.json`` was requested since the last :meth:`reset`."""
        with self._lock:
            return self._fetches

    @property
    def keys(self) -> list[SigningKey]:
        """The keys currently published."""
        with self._lock:
            return list(self._keys.values())

    def start(self) -> None:
        """Serve in a background thread."""
        self._thread.start()

    def close(self) -> None:
        """Stop serving and release the socket."""
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)

    def reset(self) -> None:
        """Publish the two default keys again, clear ``fail_with`` and the fetch counter."""
        self.set_keys(self.ec_key, self.rsa_key)
        with self._lock:
            self._fetches = 0
        self.fail_with = None

    @staticmethod
    def new_key(kind: Literal["ec", "rsa"] = "ec", kid: str | None = None) -> SigningKey:
        """A fresh key to publish with :meth:`add_key` (or to forge tokens with, unpublished)."""
        return SigningKey.generate(kind, kid)

    def set_keys(self, *keys: SigningKey) -> None:
        """Publish exactly ``keys``."""
        with self._lock:
            self._keys = {k.kid: k for k in keys}

    def add_key(self, key: SigningKey) -> None:
        """Publish one more key (replacing one with the same kid)."""
        with self._lock:
            self._keys[key.kid] = key

    def remove_key(self, kid: str) -> None:
        """Stop publishing ``kid``."""
        with self._lock:
            self._keys.pop(kid, None)

    def token(
        self,
        username: str | None = ADMIN,
        *,
        key: Literal["ec", "rsa"] | SigningKey = "ec",
        kid: str | None = None,
        exp_in: float | None = 3600,
        headers: dict[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        """A signed JWT. ``key`` picks a default key or any :class:`SigningKey` (published or not);
        ``kid`` overrides the header's kid; ``exp_in=None`` leaves out ``exp``; a claim passed as
        ``None`` (``username`` included) is left out."""
        signer = self.ec_key if key == "ec" else self.rsa_key if key == "rsa" else key
        assert isinstance(signer, SigningKey)
        now = int(time.time())
        payload: dict[str, Any] = {"username": username, "sub": username, "iat": now}
        if exp_in is not None:
            payload["exp"] = int(now + exp_in)
        payload.update(claims)
        payload = {k: v for k, v in payload.items() if v is not None}
        header = {"kid": kid or signer.kid, **(headers or {})}
        return jwt.encode(payload, signer.private_key, algorithm=signer.alg, headers=header)

    def _document(self) -> tuple[int, bytes]:
        with self._lock:
            self._fetches += 1
            body = json.dumps({"keys": [k.public_jwk() for k in self._keys.values()]}).encode()
        status = self.fail_with
        return (status, b'{"error": "unavailable"}') if status else (200, body)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, body = server._document() if self.path.split("?")[0] == "/jwks.json" else (404, b"{}")
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


# --- servers ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """A private PostgreSQL for the session; ``pg_server.url`` points at database ``dynconfig``."""
    # initdb/postgres run as the postgres user when we are root, and pytest's own tmp dirs are 0700 root.
    base = Path(tempfile.mkdtemp(prefix="dynconfig-pg-"))
    os.chmod(base, 0o755)
    if os.geteuid() == 0:
        entry = pwd.getpwnam("postgres")
        os.chown(base, entry.pw_uid, entry.pw_gid)
    server = PostgresServer(base / "data")
    try:
        server.start()
        _RUNNING.append(server)
        # As an operator would: the schema comes from dynconfig-migrate's runner, once, before any
        # process starts (processes never migrate). ``private_db`` copies the migrated database.
        migrate(server.url)
        copy_database(server, MIGRATED_TEMPLATE, template=server.url.rsplit("/", 1)[1])
        yield server
    finally:
        if server in _RUNNING:
            _RUNNING.remove(server)
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A private, non-persistent Redis for the session; ``redis_server.url``."""
    server = RedisServer(tmp_path_factory.mktemp("redis") / "data")
    try:
        server.start()
        _RUNNING.append(server)
        yield server
    finally:
        if server in _RUNNING:
            _RUNNING.remove(server)
        server.stop()


@pytest.fixture(scope="session")
def jwks() -> Iterator[JwksServer]:
    """The session's JWKS endpoint; reset to its two default keys after every test."""
    server = JwksServer()
    server.start()
    _JWKS.append(server)
    try:
        yield server
    finally:
        _JWKS.remove(server)
        server.close()


@pytest.fixture(autouse=True)
def _restore_shared_services() -> Iterator[None]:
    """Undo what a test did to the session services: restart stopped servers, reset the JWKS."""
    yield
    for server in list(_RUNNING):
        if not server.running:
            server.start()
    for jwks_server in _JWKS:
        jwks_server.reset()


# --- settings and clients -----------------------------------------------------------------------


def default_settings(pg_server: PostgresServer, redis_server: RedisServer, jwks: JwksServer) -> Settings:
    """The default test settings on the session services (for fixtures of a wider scope, too)."""
    return Settings(
        postgres_url=pg_server.url,
        redis_url=redis_server.url,
        jwks_url=jwks.url,
        encryption_keys=TEST_ENCRYPTION_KEYS,
        rate_limit=100_000,
        admin_users=frozenset({ADMIN}),
    )


@pytest.fixture
def settings(pg_server: PostgresServer, redis_server: RedisServer, jwks: JwksServer) -> Settings:
    """Settings pointing at the session services; ``settings.replace(...)`` for variations."""
    return default_settings(pg_server, redis_server, jwks)


MakeClient = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.fixture
def make_client(aiohttp_client: Any, settings: Settings) -> MakeClient:
    """``await make_client(settings=None)``: a test client of a fresh api_server app."""

    async def make(custom: Settings | None = None) -> TestClient[Any, Any]:
        from api_server.main import create_app  # late: the conftest must import without api_server

        client: TestClient[Any, Any] = await aiohttp_client(create_app(custom or settings))
        return client

    return make


@pytest.fixture
async def client(make_client: MakeClient) -> TestClient[Any, Any]:
    """A test client of the api_server app with the default test settings."""
    return await make_client()


@pytest.fixture
def token(jwks: JwksServer) -> Callable[..., str]:
    """``token(username="admin-user", *, key="ec"|"rsa", kid=None, exp_in=3600, headers=None, **claims)``."""
    return jwks.token


@pytest.fixture
def unique_prefix() -> str:
    """A key prefix no other test uses."""
    return f"t{uuid4().hex[:10]}"


@pytest.fixture
async def pg(pg_server: PostgresServer) -> AsyncIterator[aiopg.Pool]:
    """An aiopg pool on the test database, for tests that look at rows directly."""
    async with aiopg.create_pool(pg_server.url, minsize=1, maxsize=4) as pool:
        yield pool


@pytest.fixture
def private_db(pg_server: PostgresServer) -> Iterator[str]:
    """The URL of a fresh database on the session's Postgres, migrated to this release's schema and
    holding no data (for tests that touch every row); dropped afterwards."""
    url = migrated_database(pg_server)
    yield url
    drop_database(pg_server, url)


@pytest.fixture
def empty_db(pg_server: PostgresServer) -> Iterator[str]:
    """The URL of a fresh database with no schema at all (for tests of migrating); dropped afterwards."""
    url = new_database(pg_server)
    yield url
    drop_database(pg_server, url)


@pytest.fixture
async def redis_client(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    """An asyncio Redis client on the test Redis."""
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        yield client
    finally:
        await client.aclose()


# --- the notifier, the expiry worker and real processes -----------------------------------------


@pytest.fixture
def make_notifier(aiohttp_server: Any, settings: Settings) -> Callable[..., Awaitable[Any]]:
    """``await make_notifier(settings=None, *, relay=True)``: a running notifier app (aiohttp TestServer).

    ``server.make_url("/watch")`` is its watch URL; ``server.app`` the application (``notifier.main.HUB``,
    ``RELAY``, ``CONNECTIONS`` keys). It returns once the hub is subscribed to Redis and, with
    ``relay=True``, once this notifier holds the relay lock (pass False for a second, standby replica).
    """

    async def make(custom: Settings | None = None, *, relay: bool = True) -> Any:
        from notifier.hub import HUB
        from notifier.main import create_app
        from notifier.relay import RELAY

        server = await aiohttp_server(create_app(custom or settings))
        await eventually(
            lambda: server.app[HUB].redis_ok and (server.app[RELAY].is_leader or not relay),
            15,
            "notifier ready (Redis subscription, relay lock)",
            interval=0.02,
        )
        return server

    return make


@pytest.fixture
async def notifier_server(make_notifier: Callable[..., Awaitable[Any]]) -> Any:
    """A notifier with the default test settings."""
    return await make_notifier()


@dataclass
class Proc:
    """A DynConfig process started by a test; stopped (by pid) at teardown."""

    name: str
    port: int
    popen: Any
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def spawn(settings: Settings, tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    """``spawn("notifier", wait=True, port=None, **env) -> Proc``: run ``python -m <module>`` for real and
    wait for /health.

    The process's port variable (API_PORT, NOTIFIER_PORT, EXPIRY_PORT, or FRONTDOOR_PORT for
    ``devtools.frontdoor``) is set to ``port`` or a free
    port (pass a killed process's port to restart it at the same address). Every
    process still running at teardown is sent SIGTERM, then SIGKILL.
    """
    import signal
    import subprocess
    import sys

    from devtools.services import ServerError, free_port, wait_healthy

    ports = {
        "api_server": "API_PORT",
        "notifier": "NOTIFIER_PORT",
        "expiry_worker": "EXPIRY_PORT",
        "devtools.frontdoor": "FRONTDOOR_PORT",  # the dev front door: pass API_PORT and NOTIFIER_PORT
    }
    started: list[Proc] = []

    def start(module: str, wait: bool = True, port: int | None = None, **extra: str) -> Proc:
        port = port or free_port()
        log_path = tmp_path / f"{module}-{len(started)}.log"
        env = process_env(settings, **{ports[module]: str(port)}, **extra)
        with open(log_path, "wb") as log_file:
            popen = subprocess.Popen(
                [sys.executable, "-m", module],
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=str(Path(__file__).resolve().parent.parent),
            )
        proc = Proc(module, port, popen, log_path)
        started.append(proc)
        if wait:
            try:
                wait_healthy(proc.url, popen)
            except ServerError as exc:
                raise RuntimeError(f"{module}: {exc}: {proc.log()[-2000:]}") from None
        return proc

    yield start
    for proc in started:
        if proc.popen.poll() is None:
            proc.popen.send_signal(signal.SIGTERM)
    for proc in started:
        try:
            proc.popen.wait(10)
        except subprocess.TimeoutExpired:
            proc.popen.kill()
            proc.popen.wait()
