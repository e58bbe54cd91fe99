"""Helpers several test modules share (not fixtures: those live in conftest.py)."""

from __future__ import annotations

import asyncio
import datetime
import inspect
import ipaddress
import json
import os
import queue
import shutil
import threading
import time
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar
from uuid import uuid4

import aiopg
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

if TYPE_CHECKING:
    from shared.settings import Settings

T = TypeVar("T")


def _describe(what: str | Callable[[], str]) -> str:
    return what() if callable(what) else what


async def eventually(
    predicate: Callable[[], T | Awaitable[T]],
    timeout: float = 10.0,
    what: str | Callable[[], str] = "the condition",
    *,
    interval: float = 0.05,
    ignoring: tuple[type[BaseException], ...] = (),
) -> T:
    """Call ``predicate`` (plain or async) every ``interval`` s until it answers something truthy, and
    return that answer. After ``timeout`` s without one: AssertionError naming ``what`` (a string, or
    a function called then, for a message that shows the state at the end). An exception in
    ``ignoring`` counts as a falsy answer (e.g. ``aiohttp.ClientError`` while a process starts)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            answer = predicate()
            if inspect.isawaitable(answer):
                answer = await answer
        except ignoring:
            answer = None
        if answer:
            return answer  # type: ignore[return-value]
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {timeout} s: {_describe(what)}")
        await asyncio.sleep(interval)


def eventually_sync(
    predicate: Callable[[], T],
    timeout: float = 10.0,
    what: str | Callable[[], str] = "the condition",
    *,
    interval: float = 0.05,
    ignoring: tuple[type[BaseException], ...] = (),
) -> T:
    """:func:`eventually` for plain (non-async) tests and threads: the same, with ``time.sleep``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            answer = predicate()
        except ignoring:
            answer = None  # type: ignore[assignment]
        if answer:
            return answer
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {timeout} s: {_describe(what)}")
        time.sleep(interval)


#: The username the test JWKS's tokens name by default, an admin in the test settings.
ADMIN = "admin-user"


# --- HTTP through the real api_server app -----------------------------------------------------------


class Answer(NamedTuple):
    status: int
    body: Any  # the JSON body, None for a 204
    headers: Any  # the response's headers (a CIMultiDictProxy)


class Api:
    """HTTP calls through a test client of the real api_server app (``client`` fixture or
    ``make_client()``), each made as a named user with a token from ``token`` (the admin by default).
    Test modules subclass it for calls of their own."""

    def __init__(self, client: Any, token: Callable[..., str]) -> None:
        self.client = client
        self.token = token

    def headers(self, user: str = ADMIN, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(user)}", **extra}

    async def request(
        self,
        method: str,
        path: str,
        user: str = ADMIN,
        body: Any = None,
        *,
        params: dict[str, str] | None = None,
        **headers: str,
    ) -> Answer:
        kwargs: dict[str, Any] = {"headers": self.headers(user, **headers), "params": params}
        if body is not None:
            kwargs["json"] = body
        async with self.client.request(method, path, **kwargs) as resp:
            return Answer(resp.status, await resp.json() if resp.status != 204 else None, resp.headers)

    async def call(
        self,
        method: str,
        path: str,
        user: str = ADMIN,
        body: Any = None,
        *,
        params: dict[str, str] | None = None,
        **headers: str,
    ) -> tuple[int, Any]:
        """(status, JSON body or None for a 204)."""
        answer = await self.request(method, path, user, body, params=params, **headers)
        return answer.status, answer.body

    async def ok(self, method: str, path: str, user: str = ADMIN, body: Any = None) -> Any:
        """A call that must succeed (2xx); its body."""
        status, answer = await self.call(method, path, user, body)
        assert 200 <= status < 300, (method, path, user, status, answer)
        return answer

    async def write(self, method: str, key: str, value: Any = None, **extra: Any) -> None:
        """PUT or PATCH ``{"value": value, **extra}``, or DELETE, as the admin; it must succeed."""
        status, body = await self.call(
            method, f"/keys/{key}", ADMIN, None if method == "DELETE" else {"value": value, **extra}
        )
        assert status in (200, 201, 204), (status, body)

    async def put(self, key: str, value: Any, user: str = ADMIN, **extra: Any) -> dict[str, Any]:
        status, body = await self.call("PUT", f"/keys/{key}", user, {"value": value, **extra})
        assert status in (200, 201), body
        return body  # type: ignore[no-any-return]

    async def patch(self, key: str, value: Any, user: str = ADMIN) -> dict[str, Any]:
        status, body = await self.call("PATCH", f"/keys/{key}", user, {"value": value})
        assert status == 200, body
        return body  # type: ignore[no-any-return]

    async def delete(self, key: str, user: str = ADMIN) -> None:
        status, body = await self.call("DELETE", f"/keys/{key}", user)
        assert status == 204, body


# --- the JSON error shape (SPEC §4) -----------------------------------------------------------------


def assert_error(
    status: int, body: Any, expected: int | tuple[int, ...] | None = None, phrase: str | None = None
) -> None:
    """``body`` is an error answer, ``{"error": <phrase>, "message": <text>}``; with ``expected``, the
    status is (one of) it and the phrase is ``phrase`` (by default, the status's own phrase)."""
    if expected is not None:
        assert status in (expected if isinstance(expected, tuple) else (expected,)), (status, body)
    assert isinstance(body, dict) and isinstance(body.get("error"), str), (status, body)
    if expected is not None or phrase is not None:
        assert body["error"] == (phrase or HTTPStatus(status).phrase), body
    assert isinstance(body.get("message"), str) and body["message"], (status, body)


def assert_forbidden(status: int, body: Any) -> None:
    assert_error(status, body, 403, "Forbidden")


def assert_not_found(status: int, body: Any) -> None:
    assert_error(status, body, 404, "Not Found")


async def expect_error(resp: Any, status: int, phrase: str) -> dict[str, Any]:
    """Read ``resp`` (an aiohttp response): ``status``, JSON, the error shape with ``phrase`` and
    nothing but ``error``, ``message`` and ``fields``; the body."""
    text = await resp.text()
    assert resp.status == status, text
    assert resp.content_type == "application/json", resp.content_type
    body = json.loads(text)
    assert_error(resp.status, body, status, phrase)
    assert set(body) <= {"error", "message", "fields"}, body
    return dict(body)


#: Debian's Chromium for Playwright (its own browser download does not work here): headless, and
#: nothing that reaches for Google's hosts (the machine's network is closed).
CHROMIUM_LAUNCH: dict[str, Any] = {
    "executable_path": shutil.which("chromium") or "/usr/bin/chromium",
    "args": [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ],
}


def write_self_signed(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, written as PEM files: (cert, key)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "tls-cert.pem", directory / "tls-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def client_frame(opcode: int, payload: bytes) -> bytes:
    """A masked client WebSocket frame (RFC 6455 §5.2), for raw-socket watchers."""
    mask = os.urandom(4)
    size = len(payload)
    if size < 126:
        header = bytes((0x80 | opcode, 0x80 | size))
    elif size < 1 << 16:
        header = bytes((0x80 | opcode, 0x80 | 126)) + size.to_bytes(2, "big")
    else:
        header = bytes((0x80 | opcode, 0x80 | 127)) + size.to_bytes(8, "big")
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def wait_caught_up(pg: aiopg.Pool, server: Any, timeout: float = 10.0) -> None:
    """Synchronisation only: every committed change is relayed and fanned out by the notifier ``server``
    (an aiohttp TestServer), so a watcher that connects now is not sent changes made before it."""
    from notifier.hub import HUB

    async def caught_up() -> bool:
        async with pg.acquire() as conn, conn.cursor() as cur:
            await cur.execute("SELECT (SELECT count(*) FROM outbox WHERE revision IS NULL), head FROM relay_state")
            pending, head = await cur.fetchone()
        return bool(pending == 0 and server.app[HUB].last >= head)

    await eventually(caught_up, timeout, "notifier caught up with the change log", interval=0.01)


async def lock_waiters(pg: aiopg.Pool, query_like: str = "%") -> int:
    """How many other backends wait for a lock (``pg_stat_activity.wait_event_type = 'Lock'``) in a
    statement LIKE ``query_like``: what a test waits for, instead of sleeping, when it holds a lock and
    needs a request to be queued behind it."""
    async with pg.acquire() as conn, conn.cursor() as cur:
        await cur.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE wait_event_type = 'Lock' AND pid <> pg_backend_pid() AND query LIKE %s",
            (query_like,),
        )
        (count,) = await cur.fetchone()
    return int(count)


class WatchRecorder:
    """One real ``/watch`` connection after its ``subscribed``: a reader task keeps every message in
    order (``messages``), the change events apart (``events``, with their arrival times) and the rest
    (``control``). Test modules subclass it for their own questions."""

    CHANGE_EVENTS = frozenset({"update", "delete", "expired"})

    def __init__(self, ws: Any, subscribed: dict[str, Any]) -> None:
        self.ws = ws
        self.subscribed = subscribed
        self.messages: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.received_at: list[float] = []  # time.time() when each change event arrived
        self.arrived: list[float] = []  # time.monotonic() of the same
        self.control: list[dict[str, Any]] = []
        self._changed = asyncio.Event()
        self.task = asyncio.create_task(self._read())

    @classmethod
    async def open(
        cls, session: Any, url: Any, token: str, patterns: list[str], **subscribe: Any
    ) -> Any:  # an instance of ``cls``
        """Connect with ``token``, subscribe to ``patterns`` (plus ``since_version`` etc.), and return
        once ``subscribed`` has arrived."""
        ws = await session.ws_connect(url, headers={"Authorization": f"Bearer {token}"}, heartbeat=None)
        await ws.send_json({"subscribe": patterns, **subscribe})
        first = await asyncio.wait_for(ws.receive_json(), timeout=10)
        assert first.get("event") == "subscribed", first
        return cls(ws, first)

    async def _read(self) -> None:
        import aiohttp

        try:
            async for msg in self.ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                data = json.loads(msg.data)
                self.messages.append(data)
                if data.get("event") in self.CHANGE_EVENTS:
                    self.events.append(data)
                    self.received_at.append(time.time())
                    self.arrived.append(time.monotonic())
                else:
                    self.control.append(data)
                self._changed.set()
        finally:
            self._changed.set()

    @property
    def closed(self) -> bool:
        return self.task.done()

    async def holds(self, predicate: Any, timeout: float) -> bool:
        """Wait (at most ``timeout`` s, or until the socket closes) for ``predicate()``; return it."""
        deadline = time.monotonic() + timeout
        while not predicate():
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.task.done():
                return bool(predicate())
            self._changed.clear()
            if predicate():
                break
            try:
                await asyncio.wait_for(self._changed.wait(), timeout=min(remaining, 0.5))
            except TimeoutError:
                pass
        return True

    async def close(self) -> None:
        await self.ws.close()
        await self.task


async def first_health(proc: Any, timeout: float = 30.0) -> tuple[int, dict[str, Any]]:
    """(status, body) of the first ``/health`` answer of a process started with ``spawn(..., wait=False)``,
    e.g. one that must never become ready."""
    import aiohttp

    async def health() -> tuple[int, dict[str, Any]]:
        assert proc.popen.poll() is None, f"{proc.name} exited:\n{proc.log()[-2000:]}"
        async with aiohttp.ClientSession() as session, session.get(f"{proc.url}/health") as resp:
            return resp.status, await resp.json()

    return await eventually(
        health,
        timeout,
        lambda: f"{proc.name} answering /health:\n{proc.log()[-2000:]}",
        interval=0.1,
        ignoring=(aiohttp.ClientError,),
    )


class LineReader:
    """Lines of a subprocess's output, read by a thread so the test can wait with a timeout."""

    def __init__(self, stream: Any) -> None:
        self._lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []  # every line taken so far, for failure messages
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: Any) -> None:
        for line in stream:
            self._lines.put(line)
        self._lines.put(None)  # end of output: the process is gone

    def next_line(self, timeout: float = 15.0) -> str:
        """The next line; AssertionError after ``timeout`` seconds without one."""
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no line from the process in {timeout} s; so far: {self.seen[-20:]}") from None
        if line is None:
            self._lines.put(None)
            raise AssertionError(f"the process closed its output; its last lines: {self.seen[-20:]}")
        self.seen.append(line)
        return line

    def next_json(self, timeout: float = 15.0) -> dict[str, Any]:
        event: dict[str, Any] = json.loads(self.next_line(timeout))
        return event

    def wait_for(self, text: str, timeout: float = 15.0) -> str:
        """The first line (from here on) that contains ``text``."""
        deadline = time.monotonic() + timeout
        while True:
            line = self.next_line(max(0.0, deadline - time.monotonic()))
            if text in line:
                return line


def process_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment a real DynConfig process needs to run against the test services."""
    import base64

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "COV_"))}
    env.update(
        POSTGRES_URL=settings.postgres_url,
        REDIS_URL=settings.redis_url,
        JWKS_URL=settings.jwks_url,
        ENCRYPTION_KEYS=",".join(f"{kid}:{base64.b64encode(key).decode()}" for kid, key in settings.encryption_keys),
        RATE_LIMIT=str(settings.rate_limit),
        HOST="127.0.0.1",
        LOG_LEVEL="WARNING",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


#: A database the ``pg_server`` fixture migrates once at the start of the session, holding no data:
#: :func:`migrated_database` copies it.
MIGRATED_TEMPLATE = "dynconfig_migrated"


def migrated_database(pg_server: Any) -> str:
    """A fresh database migrated to this release's schema (as ``dynconfig-migrate`` leaves it)."""
    return new_database(pg_server, template=MIGRATED_TEMPLATE)


def new_database(pg_server: Any, template: str | None = None) -> str:
    """Create an empty database on the session's Postgres (or a copy of ``template``, which must have
    no open connections); return its URL. Drop it with :func:`drop_database`."""
    return copy_database(pg_server, f"t_{uuid4().hex[:16]}", template=template)


def copy_database(pg_server: Any, name: str, *, template: str | None = None) -> str:
    """Create the database ``name`` (a copy of ``template`` when given); return its URL."""
    import psycopg2

    base = pg_server.url.rsplit("/", 1)[0]
    admin = psycopg2.connect(f"{base}/postgres")  # not the template: a copy needs it unused
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
    finally:
        admin.close()
    return f"{base}/{name}"


def drop_database(pg_server: Any, url: str) -> None:
    import psycopg2

    admin = psycopg2.connect(pg_server.url)
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
    finally:
        admin.close()
