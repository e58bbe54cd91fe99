"""Assembly of the API server: ``create_app(settings)`` for tests, ``main()`` for ``python -m api_server``."""

from __future__ import annotations

from aiohttp import web

from api_server.auditkeeper import audit_keeper_ctx
from api_server.cache import cache_ctx
from api_server.committer import committer_ctx
from api_server.metrics import API_METRICS, ApiMetrics
from api_server.middlewares import auth_middleware
from api_server.retention import retention_ctx
from api_server.routes import setup_routes
from api_server.state_reader import state_reader_ctx
from shared.audit.writer import audit_ctx
from shared.db import pool_ctx
from shared.redis import redis_ctx
from shared.runtime.process import main_for
from shared.runtime.web import process_app
from shared.security.crypto import KEYRING, Keyring
from shared.security.jwks import http_session_ctx, verifier_ctx
from shared.security.keyring_check import keyring_check_ctx
from shared.security.nsacls import namespace_acls_ctx
from shared.security.ratelimit import rate_limiter_ctx
from shared.settings import Settings

PROCESS_NAME = "api_server"
# A value's compact JSON may be 1 MiB; leave room for formatting and metadata, then check exactly.
CLIENT_MAX_SIZE = 4 * 1024 * 1024


def create_app(settings: Settings) -> web.Application:
    """The API application; resources open on startup and close on cleanup."""
    metrics = ApiMetrics(PROCESS_NAME)
    app = process_app(PROCESS_NAME, settings, metrics, [auth_middleware], client_max_size=CLIENT_MAX_SIZE)
    app[KEYRING] = Keyring(settings.encryption_keys)
    app[API_METRICS] = metrics
    app.cleanup_ctx.extend(
        [
            http_session_ctx,
            pool_ctx,
            keyring_check_ctx,
            namespace_acls_ctx,
            state_reader_ctx,
            audit_ctx,
            audit_keeper_ctx,
            retention_ctx,
            redis_ctx,
            cache_ctx,
            committer_ctx,
            rate_limiter_ctx,
            verifier_ctx,
        ]
    )
    setup_routes(app)
    return app


def main() -> None:
    """Read the environment, then serve until SIGTERM."""
    main_for(PROCESS_NAME, create_app, lambda settings: settings.api_port)
