"""SIGTERM of the real processes, as Kubernetes stops a pod (SPEC §1): every request that reached the
process before the signal is answered, every watch socket is closed with 1001, and the process exits
0 within 10 s. ``python -m api_server``, ``python -m notifier`` and the dev front door
(``python -m devtools.frontdoor``, which ``./dev/up`` runs on :8080) are each tested for real: the
in-process app objects of the other tests never go through ``shared/runtime/process.py``.

The writers speak HTTP/1.1 on raw keep-alive sockets so that "sent before the signal" is exact: a
request counts as sent when its bytes are in the kernel (``transport.write`` returned with nothing
left in the buffer) before the test calls ``os.kill``, in the same step of the test's event loop.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
import aiopg
from support import eventually

if TYPE_CHECKING:
    from tests.conftest import Proc

#: SPEC §1: the process is gone within this many seconds of SIGTERM.
DRAIN_SECONDS = 10.0
SHUTDOWN_REASON = "server shutting down"


@dataclass
class Attempt:
    """One PUT a writer sent: whether its bytes were out before SIGTERM, and the answer (``status``
    None: the connection ended without one)."""

    key: str
    before_signal: bool
    status: int | None = None
    body: Any = None
    error: str = ""
    answered_after_signal: bool = False


class Writers:
    """``count`` writers, each on its own keep-alive connection, each PUT creating a new key, until
    the connection ends; a writer reconnects once the server closes its connection, and stops when
    the listener refuses it (after SIGTERM)."""

    def __init__(self, port: int, token: str, prefix: str, count: int) -> None:
        self.port = port
        self.token = token
        self.prefix = prefix
        self.attempts: list[Attempt] = []
        self.signalled = False
        self._tasks = [asyncio.create_task(self._write(i)) for i in range(count)]

    def answered(self) -> int:
        return sum(1 for a in self.attempts if a.status is not None)

    def signal(self, pid: int) -> None:
        """Mark every later write as sent after the signal, and send SIGTERM (one synchronous step)."""
        self.signalled = True
        os.kill(pid, signal.SIGTERM)

    async def finish(self, timeout: float = 20.0) -> None:
        done, pending = await asyncio.wait(self._tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for task in done:
            task.result()  # a writer's own bug fails the test
        assert not pending, f"{len(pending)} writers still waiting for an answer {timeout:.0f} s after SIGTERM"

    async def _write(self, writer_id: int) -> None:
        n = 0
        while True:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                assert self.signalled, "the server refused a connection before SIGTERM"
                return
            try:
                while True:
                    key = f"{self.prefix}.w{writer_id}.n{n}"
                    n += 1
                    body = json.dumps({"value": {"writer": writer_id, "n": n}}).encode()
                    writer.write(
                        f"PUT /keys/{key} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                        f"Authorization: Bearer {self.token}\r\nContent-Type: application/json\r\n"
                        f"Content-Length: {len(body)}\r\n\r\n".encode()
                        + body
                    )
                    sent = writer.transport.get_write_buffer_size() == 0
                    attempt = Attempt(key, before_signal=sent and not self.signalled)
                    self.attempts.append(attempt)
                    try:
                        attempt.status, attempt.body, close = await _read_response(reader)
                    except (asyncio.IncompleteReadError, ConnectionError) as exc:
                        attempt.error = type(exc).__name__
                        break
                    attempt.answered_after_signal = self.signalled
                    if close:
                        break
            finally:
                writer.close()
                try:
                    await writer.wait_closed()
                except ConnectionError:
                    pass
            if self.signalled:
                await asyncio.sleep(0.01)  # the next connect is refused once the listener is closed


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, Any, bool]:
    """(status, JSON body or None, whether the server closes the connection after it)."""
    status_line = await reader.readuntil(b"\r\n")
    status = int(status_line.split()[1])
    headers: dict[str, str] = {}
    while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    raw = await reader.readexactly(int(headers.get("content-length", "0")))
    body = json.loads(raw) if raw and "json" in headers.get("content-type", "") else None
    return status, body, headers.get("connection", "").lower() == "close"


async def wait_exit(proc: Proc, timeout: float = DRAIN_SECONDS) -> int | None:
    """The exit code, or None if the process is still running ``timeout`` s later (then it is killed)."""
    try:
        return int(await asyncio.to_thread(proc.popen.wait, timeout))
    except subprocess.TimeoutExpired:
        proc.popen.kill()
        await asyncio.to_thread(proc.popen.wait, 5)
        return None


async def check_writes(writers: Writers, pg: aiopg.Pool) -> None:
    """Every write sent before SIGTERM got an answer: a 2xx that Postgres holds, or a 503 for a write
    that was not made; and some of them were in flight when the signal came (else the test proved
    nothing)."""
    before = [a for a in writers.attempts if a.before_signal]
    unanswered = [a for a in before if a.status is None]
    assert not unanswered, (
        f"{len(unanswered)} of {len(before)} writes sent before SIGTERM lost their answer "
        f"({sorted({a.error for a in unanswered})}), e.g. {unanswered[0].key}"
    )
    in_flight = [a for a in before if a.answered_after_signal]
    assert in_flight, "no write was in flight when SIGTERM came"
    written = {a.key for a in before if a.status in (200, 201)}
    refused = [a for a in before if a.status not in (200, 201)]
    for attempt in refused:
        assert attempt.status == 503, (attempt.status, attempt.body)
        assert attempt.body["error"] == "Service Unavailable", attempt.body
        assert "not" in attempt.body["message"], attempt.body  # "… the write was not made"
    async with pg.acquire() as conn, conn.cursor() as cur:
        await cur.execute("SELECT key FROM keys WHERE key LIKE %s AND version = 1", (f"{writers.prefix}.%",))
        stored = {key for (key,) in await cur.fetchall()}
    assert written <= stored, f"{len(written - stored)} writes answered 2xx are not in Postgres"
    assert not stored & {a.key for a in refused}, "a write answered 503 was made"


async def open_watchers(url: str, token: str, pattern: str, count: int) -> tuple[aiohttp.ClientSession, list[Any]]:
    session = aiohttp.ClientSession()
    sockets = []
    for _ in range(count):
        ws = await session.ws_connect(url, headers={"Authorization": f"Bearer {token}"}, heartbeat=None)
        await ws.send_json({"subscribe": [pattern]})
        first = await asyncio.wait_for(ws.receive_json(), timeout=10)
        assert first["event"] == "subscribed", first
        sockets.append(ws)
    return session, sockets


async def close_codes(sockets: list[Any]) -> list[tuple[Any, str]]:
    """Read each socket to its end: (close code, reason); 1006 when it ended without a close frame."""

    async def end(ws: Any) -> tuple[Any, str]:
        while True:
            msg = await ws.receive()
            if msg.type == aiohttp.WSMsgType.CLOSE:
                return msg.data, msg.extra or ""
            if msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR, aiohttp.WSMsgType.CLOSING):
                return ws.close_code or 1006, ""

    return list(await asyncio.wait_for(asyncio.gather(*(end(ws) for ws in sockets)), timeout=DRAIN_SECONDS + 5))


# --- the notifier --------------------------------------------------------------------------------


async def test_notifier_sigterm_closes_every_watcher_with_1001_and_exits_0(
    spawn: Callable[..., Proc], token: Callable[..., str], unique_prefix: str
) -> None:
    proc = spawn("notifier")
    session, sockets = await open_watchers(f"ws://127.0.0.1:{proc.port}/watch", token(), f"{unique_prefix}.*", 20)
    try:
        proc.popen.send_signal(signal.SIGTERM)
        codes = await close_codes(sockets)
        code = await wait_exit(proc)
    finally:
        await session.close()
    assert codes == [(1001, SHUTDOWN_REASON)] * len(sockets), f"close codes after SIGTERM: {sorted(set(codes))}"
    assert code == 0, f"notifier exit code {code} (None: still running {DRAIN_SECONDS:.0f} s after SIGTERM)"
    assert "Traceback" not in proc.log(), proc.log()[-3000:]


# --- the API server ------------------------------------------------------------------------------


async def test_api_sigterm_under_writes_answers_every_request_sent_before_it(
    spawn: Callable[..., Proc], token: Callable[..., str], unique_prefix: str, pg: aiopg.Pool
) -> None:
    proc = spawn("api_server", RATE_LIMIT="1000000")
    writers = Writers(proc.port, token(), unique_prefix, 32)
    try:
        await eventually(lambda: writers.answered() >= 300, 20, "300 writes answered before SIGTERM", interval=0.02)
        writers.signal(proc.popen.pid)
        await writers.finish()
    finally:
        if proc.popen.poll() is None and not writers.signalled:
            proc.popen.send_signal(signal.SIGTERM)
    code = await wait_exit(proc)
    await check_writes(writers, pg)
    assert code == 0, f"api_server exit code {code} (None: still running {DRAIN_SECONDS:.0f} s after SIGTERM)"
    assert "Traceback" not in proc.log(), proc.log()[-3000:]


# --- the dev front door --------------------------------------------------------------------------


async def test_frontdoor_sigterm_answers_proxied_requests_and_closes_bridged_watchers_with_1001(
    spawn: Callable[..., Proc], token: Callable[..., str], unique_prefix: str, pg: aiopg.Pool
) -> None:
    api = spawn("api_server", RATE_LIMIT="1000000")
    notifier = spawn("notifier")
    door = spawn("devtools.frontdoor", API_PORT=str(api.port), NOTIFIER_PORT=str(notifier.port))
    session, sockets = await open_watchers(f"ws://127.0.0.1:{door.port}/watch", token(), f"{unique_prefix}.*", 10)
    writers = Writers(door.port, token(), unique_prefix, 16)
    try:
        await eventually(
            lambda: writers.answered() >= 150, 20, "150 writes answered through the front door", interval=0.02
        )
        writers.signal(door.popen.pid)
        await writers.finish()
        codes = await close_codes(sockets)
    finally:
        await session.close()
    code = await wait_exit(door)
    await check_writes(writers, pg)
    assert codes == [(1001, SHUTDOWN_REASON)] * len(sockets), f"close codes after SIGTERM: {sorted(set(codes))}"
    assert code == 0, f"front door exit code {code} (None: still running {DRAIN_SECONDS:.0f} s after SIGTERM)"
    assert api.popen.poll() is None and notifier.popen.poll() is None
    assert "Traceback" not in door.log(), door.log()[-3000:]
