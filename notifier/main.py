"""Assembly of the notifier: the relay, the hub and ``/watch`` (``python -m notifier``)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from shared.audit.writer import AUDIT, audit_ctx
from shared.db import DB_POOL, app_connector, connect_pool, pool_ctx
from shared.errors import Unauthorized
from shared.redis import REDIS, redis_ctx
from shared.runtime.metrics import metrics_handler
from shared.runtime.process import main_for
from shared.runtime.supervisor import SUPERVISOR, cancel_and_wait
from shared.runtime.web import base_checks, health_response, live, process_app, request_id
from shared.security.auth import VERIFIER
from shared.security.crypto import KEYRING, Keyring
from shared.security.jwks import http_session_ctx, verifier_ctx
from shared.security.keyring_check import keyring_check_ctx
from shared.security.nsacls import NAMESPACE_ACLS, namespace_acls_ctx
from shared.security.ratelimit import RATE_LIMITER, rate_limiter_ctx
from shared.settings import SETTINGS, Settings

from .hub import HUB, Hub
from .metrics import NOTIFIER_METRICS, NotifierMetrics
from .protocol import token_from_request
from .relay import RELAY, Relay
from .watch import CONNECTIONS, WATCH_POOL, WatchConnection, close_all, serve

PROCESS_NAME = "notifier"
WATCH_POOL_SIZE = 10


async def _watch_pool_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    pool = await connect_pool(
        app_connector(app, "watch-pool"), wait_seconds=settings.startup_timeout_seconds, maxsize=WATCH_POOL_SIZE
    )
    app[WATCH_POOL] = pool
    try:
        yield
    finally:
        pool.close()
        await pool.wait_closed()


async def watch(request: web.Request) -> web.WebSocketResponse:
    """``GET /watch``: upgrade, authenticate, subscribe, stream.

    The handshake is one request of its user (SPEC §6): a token in the header or the query is verified
    before the upgrade, so a user over the rate limit gets the seed's 429 instead of a socket. An
    invalid token is refused after the upgrade, as a watcher expects (an error event, close 4401)."""
    app = request.app
    token = token_from_request(request)
    if token:
        try:
            principal, _exp = await app[VERIFIER].verify(token)
        except Unauthorized:
            pass
        else:
            decision = await app[RATE_LIMITER].hit(principal.username)
            if not decision.allowed:
                raise decision.refusal()
    ws = web.WebSocketResponse(heartbeat=20.0, compress=False, max_msg_size=1024 * 1024)
    await ws.prepare(request)
    assert request.transport is not None
    conn = WatchConnection(
        ws,
        request.transport,  # type: ignore[arg-type]
        hub=app[HUB],
        verifier=app[VERIFIER],
        limiter=app[RATE_LIMITER],
        pool=app[WATCH_POOL],
        audit=app[AUDIT],
        metrics=app[NOTIFIER_METRICS],
        request_id=request_id(request),
    )
    app[CONNECTIONS].add(conn)
    app[NOTIFIER_METRICS].connections.inc()
    try:
        await serve(conn, request)
    finally:
        app[CONNECTIONS].discard(conn)
        app[NOTIFIER_METRICS].connections.dec()
        await conn.finish()
    return ws


async def health(request: web.Request) -> web.Response:
    """200 while Postgres answers; Redis and the relay role are reported (events flow without Redis)."""
    hub = request.app[HUB]
    return health_response(
        {
            **await base_checks(request.app),
            "audit": request.app[AUDIT].status,
            "redis": "ok" if hub.redis_ok else "unavailable (degraded: events read from Postgres)",
            "relay": "active" if request.app[RELAY].is_leader else "standby",
            "revision": hub.last,
            "connections": len(request.app[CONNECTIONS]),
        }
    )


async def _streams_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    metrics = app[NOTIFIER_METRICS]
    supervisor = app[SUPERVISOR]
    hub_listener = app_connector(app, "hub", dedicated=True)
    hub = Hub(hub_listener, app[DB_POOL], app[REDIS], app[KEYRING], app[NAMESPACE_ACLS], metrics, supervisor)
    relay = Relay(
        app_connector(app, "relay", dedicated=True),
        app[DB_POOL],
        app[REDIS],
        metrics,
        supervisor,
        retention_seconds=settings.changelog_retention_seconds,
    )
    app[HUB] = hub
    app[RELAY] = relay
    connections: set[WatchConnection] = set()
    app[CONNECTIONS] = connections
    await hub.start()
    relay_task = supervisor.spawn("relay", relay.run)
    try:
        yield
    finally:
        await cancel_and_wait(relay_task)
        await hub.stop()


async def _close_watchers(app: web.Application) -> None:
    """On shutdown, close every watch socket with 1001 (going away)."""
    connections = app[CONNECTIONS]
    await close_all(connections)


def create_app(settings: Settings) -> web.Application:
    """The notifier application."""
    metrics = NotifierMetrics(PROCESS_NAME)
    app = process_app(PROCESS_NAME, settings, metrics)
    app[KEYRING] = Keyring(settings.encryption_keys)
    app[NOTIFIER_METRICS] = metrics
    app.cleanup_ctx.extend(
        [
            http_session_ctx,
            pool_ctx,
            keyring_check_ctx,
            _watch_pool_ctx,
            namespace_acls_ctx,
            audit_ctx,
            redis_ctx,
            rate_limiter_ctx,
            verifier_ctx,
            _streams_ctx,
        ]
    )
    app.on_shutdown.append(_close_watchers)
    app.router.add_get("/watch", watch)
    app.router.add_get("/health", health)
    app.router.add_get("/health/live", live)
    app.router.add_get("/metrics", metrics_handler)
    return app


def main() -> None:
    """Read the environment, then serve until SIGTERM."""
    main_for(PROCESS_NAME, create_app, lambda settings: settings.notifier_port)
