"""``python -m devtools.frontdoor``: the local run's single origin (what the Ingress is in Kubernetes).

``/watch`` (WebSocket) goes to the notifier, everything else to the API server, so the seed's examples
(`curl http://localhost:8080/keys/…`, `new WebSocket('ws://localhost:8080/watch')`) work on one port.
Development only: in production a real ingress or load balancer does this.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from typing import Any

import aiohttp
from aiohttp import WSCloseCode, WSMsgType, web

from shared.errors import DynConfigError
from shared.runtime.logs import setup_logging
from shared.runtime.process import run
from shared.runtime.web import close_websockets, name_the_server

log = logging.getLogger(__name__)

SESSION = web.AppKey("session", aiohttp.ClientSession)
API_URL = web.AppKey("api_url", str)
NOTIFIER_URL = web.AppKey("notifier_url", str)
SOCKETS: web.AppKey[set[web.WebSocketResponse]] = web.AppKey("sockets")
_HOP = {"connection", "keep-alive", "transfer-encoding", "upgrade", "host", "content-length", "te", "trailer"}
_WS_FORWARD = ("Authorization", "X-Request-Id")
#: Headers of a refused WebSocket handshake that the client needs (a 429's).
_REFUSAL_HEADERS = ("Retry-After", "X-RateLimit-Limit", "X-RateLimit-Remaining", "X-Request-Id")


def _bad_gateway(message: str) -> web.Response:
    return web.json_response({"error": "Bad Gateway", "message": message}, status=502)


async def proxy_http(request: web.Request) -> web.StreamResponse:
    """Forward a plain HTTP request to the API server and its answer back."""
    url = request.app[API_URL] + request.rel_url.raw_path_qs
    headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
    body = await request.read()
    try:
        async with request.app[SESSION].request(
            request.method, url, headers=headers, data=body or None, allow_redirects=False
        ) as upstream:
            payload = await upstream.read()
            out = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP | {"content-encoding"}}
            return web.Response(status=upstream.status, body=payload, headers=out)
    except aiohttp.ClientError as exc:
        return _bad_gateway(f"API server unreachable: {exc.__class__.__name__}")


def _refused_handshake(exc: aiohttp.WSServerHandshakeError) -> web.Response:
    """The notifier's refusal of a handshake, passed on: its status and headers in the JSON error shape
    (aiohttp's client does not keep the body of a refused handshake)."""
    phrases = {cls.status: cls.phrase for cls in DynConfigError.__subclasses__()}
    status = exc.status if exc.status >= 400 else 502
    body = {"error": phrases.get(status, exc.message), "message": f"The notifier refused the WebSocket: {exc.message}"}
    sent: Any = exc.headers or {}
    headers = {name: sent[name] for name in _REFUSAL_HEADERS if name in sent}
    return web.json_response(body, status=status, headers=headers)


async def proxy_watch(request: web.Request) -> web.StreamResponse:
    """Bridge a WebSocket to the notifier, passing messages and the close code both ways."""
    url = request.app[NOTIFIER_URL] + request.rel_url.raw_path_qs
    headers = {name: request.headers[name] for name in _WS_FORWARD if name in request.headers}
    try:
        upstream = await request.app[SESSION].ws_connect(url, headers=headers, autoping=True, max_msg_size=0)
    except aiohttp.WSServerHandshakeError as exc:  # the notifier answered, without upgrading (a 429, say)
        return _refused_handshake(exc)
    except aiohttp.ClientError as exc:
        return _bad_gateway(f"notifier unreachable: {exc.__class__.__name__}")
    client = web.WebSocketResponse(autoping=True, max_msg_size=0)
    await client.prepare(request)
    request.app[SOCKETS].add(client)

    async def pump(source: Any, sink: Any) -> None:
        """Copy messages from ``source`` to ``sink`` until ``source`` closes, then close ``sink`` with the
        same code and reason (``async for`` would stop at the close frame and lose its reason)."""
        while True:
            msg = await source.receive()
            if msg.type == WSMsgType.TEXT:
                await sink.send_str(msg.data)
            elif msg.type == WSMsgType.BINARY:
                await sink.send_bytes(msg.data)
            elif msg.type == WSMsgType.CLOSE:
                reason = msg.extra.encode() if isinstance(msg.extra, str) else b""
                await sink.close(code=msg.data or 1000, message=reason)
                return
            elif msg.type in (WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                await sink.close(code=source.close_code or 1000)
                return

    tasks = [asyncio.create_task(pump(upstream, client)), asyncio.create_task(pump(client, upstream))]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await task
        await upstream.close()
        await client.close()
        request.app[SOCKETS].discard(client)
    return client


async def _close_sockets(app: web.Application) -> None:
    """On shutdown: close the bridged sockets (1001) so their handlers end instead of holding it up."""
    sockets: set[web.WebSocketResponse] = app[SOCKETS]
    await close_websockets(sockets, code=WSCloseCode.GOING_AWAY, reason=b"server shutting down")


async def _session_ctx(app: web.Application):  # type: ignore[no-untyped-def]
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        app[SESSION] = session
        yield


def create_app(api_url: str, notifier_url: str) -> web.Application:
    """The front door, forwarding to ``api_url`` and (``/watch``) ``notifier_url``."""
    app = web.Application(client_max_size=16 * 1024 * 1024)
    app[API_URL] = api_url.rstrip("/")
    app[NOTIFIER_URL] = notifier_url.rstrip("/")
    app[SOCKETS] = set()
    app.on_response_prepare.append(name_the_server)  # its own answers and those it passes on
    app.on_shutdown.append(_close_sockets)
    app.cleanup_ctx.append(_session_ctx)
    app.router.add_get("/watch", proxy_watch)
    app.router.add_route("*", r"/{tail:[\s\S]*}", proxy_http)  # every path, newlines included
    return app


def main() -> None:
    env = os.environ
    try:
        port = int(env.get("FRONTDOOR_PORT", "8080"))
        api = f"http://127.0.0.1:{int(env.get('API_PORT', '8090'))}"
        notifier = f"http://127.0.0.1:{int(env.get('NOTIFIER_PORT', '8081'))}"
    except ValueError as exc:
        print(f"frontdoor: invalid port setting: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    setup_logging(env.get("LOG_LEVEL", "INFO"), "%(asctime)s %(levelname)s frontdoor: %(message)s")
    run(
        create_app(api, notifier),
        process="frontdoor",
        host="127.0.0.1",
        port=port,
        access_log=False,
    )


if __name__ == "__main__":
    main()
