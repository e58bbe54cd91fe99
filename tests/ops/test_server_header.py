"""No process of ours tells a client which Python or aiohttp it runs (the ``Server`` header).

aiohttp answers ``Server: Python/3.11 aiohttp/3.x`` by default: a free map from a scanner to the
advisories that apply. Every DynConfig process, and the dev front door, sends ``DynConfig`` instead,
on every kind of answer: a handler's, an error, a WebSocket handshake, and a request so malformed that
aiohttp refuses it before any middleware runs. Tested on the real ``python -m`` processes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from support import eventually

from shared.runtime.web import SERVER_HEADER


async def _raw_answer(port: int, request: bytes) -> str:
    """The head of the answer to a raw request (one aiohttp's client would never send)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    finally:
        writer.close()
        await writer.wait_closed()
    return head.decode("latin-1")


def _server_headers(head: str) -> list[str]:
    return [line.split(":", 1)[1].strip() for line in head.split("\r\n") if line.lower().startswith("server:")]


async def _answers(url: str) -> dict[str, str | None]:
    """The ``Server`` header of each kind of answer a process gives over HTTP."""
    out: dict[str, str | None] = {}
    async with aiohttp.ClientSession() as session:
        for what, path in (("/health", "/health"), ("/metrics", "/metrics"), ("404", "/no/such/route")):
            async with session.get(url + path) as resp:
                out[what] = resp.headers.get("Server")
    return out


@pytest.mark.parametrize("module", ["api_server", "notifier", "expiry_worker"])
async def test_no_process_names_its_software_versions(spawn: Callable[..., Any], module: str) -> None:
    proc = spawn(module)
    answers = await _answers(proc.url)
    # A line aiohttp's parser refuses (its own error path, before any middleware).
    refused = await _raw_answer(proc.port, b"GET /health HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")
    answers["malformed request"] = ", ".join(_server_headers(refused)) or None
    assert answers == dict.fromkeys(answers, SERVER_HEADER), answers


async def test_the_watch_handshake_and_the_dev_front_door_name_no_versions(
    spawn: Callable[..., Any], token: Callable[..., str]
) -> None:
    api = spawn("api_server")
    notifier = spawn("notifier")
    door = spawn("devtools.frontdoor", API_PORT=str(api.port), NOTIFIER_PORT=str(notifier.port))
    seen: dict[str, str | None] = {}
    async with aiohttp.ClientSession() as session:
        for name, proc in (("notifier", notifier), ("front door", door)):
            async with session.ws_connect(proc.url + "/watch", headers={"Authorization": f"Bearer {token()}"}) as ws:
                assert ws._response is not None
                seen[f"{name} /watch handshake"] = ws._response.headers.get("Server")
        async with session.get(door.url + "/keys/x") as resp:
            seen["front door, proxied"] = resp.headers.get("Server")
    bad_gateway_door = spawn("devtools.frontdoor", API_PORT="1", NOTIFIER_PORT="1", wait=False)
    await _wait_listening(bad_gateway_door.port)
    async with aiohttp.ClientSession() as session, session.get(bad_gateway_door.url + "/keys/x") as resp:
        assert resp.status == 502
        seen["front door, its own 502"] = resp.headers.get("Server")
    refused = await _raw_answer(door.port, b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")
    seen["front door, malformed request"] = ", ".join(_server_headers(refused)) or None
    assert seen == dict.fromkeys(seen, SERVER_HEADER), seen


async def _wait_listening(port: int) -> None:
    async def connects() -> bool:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.close()
        await writer.wait_closed()
        return True

    await eventually(connects, 10, f"something listening on {port}", ignoring=(OSError,))


def test_the_compose_front_door_hides_its_version() -> None:
    """nginx answers ``Server: nginx/1.x`` unless told otherwise."""
    text = (Path(__file__).resolve().parents[2] / "deploy" / "nginx.conf").read_text()
    assert "server_tokens off;" in text
