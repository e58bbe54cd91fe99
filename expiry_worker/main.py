"""Assembly of the expiry worker: an aiohttp app serving /health and /metrics around its loop."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from shared.audit.chain import AUDIT_CHAIN
from shared.db import DB_POOL, app_connector, pool_ctx
from shared.runtime.metrics import metrics_handler
from shared.runtime.process import main_for
from shared.runtime.supervisor import SUPERVISOR, cancel_and_wait
from shared.runtime.web import base_checks, health_response, live, process_app
from shared.security.keyring_check import keyring_check_ctx
from shared.settings import Settings

from .expiry import WORKER, ExpiryWorker
from .metrics import EXPIRY_METRICS, ExpiryMetrics

PROCESS_NAME = "expiry_worker"


async def _worker_ctx(app: web.Application) -> AsyncIterator[None]:
    listener = app_connector(app, "expiry", dedicated=True)
    worker = ExpiryWorker(listener, app[DB_POOL], app[EXPIRY_METRICS], app[AUDIT_CHAIN])
    app[WORKER] = worker
    task = app[SUPERVISOR].spawn("expiry", worker.run)
    try:
        yield
    finally:
        await cancel_and_wait(task)


async def health(request: web.Request) -> web.Response:
    """200 while Postgres answers, the expiry loop is not failing and the keyring opens the values in use."""
    return health_response(await base_checks(request.app))


def create_app(settings: Settings) -> web.Application:
    """The expiry worker application."""
    metrics = ExpiryMetrics(PROCESS_NAME)
    app = process_app(PROCESS_NAME, settings, metrics)
    app[EXPIRY_METRICS] = metrics
    app.cleanup_ctx.extend([pool_ctx, keyring_check_ctx, _worker_ctx])
    app.router.add_get("/health", health)
    app.router.add_get("/health/live", live)
    app.router.add_get("/metrics", metrics_handler)
    return app


def main() -> None:
    """Read the environment, then run until SIGTERM."""
    main_for(PROCESS_NAME, create_app, lambda settings: settings.expiry_port)
