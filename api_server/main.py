"""Assembly of the API server: ``create_app(settings)`` for tests, ``main()`` for ``python -m api_server``."""

from __future__ import annotations

from aiohttp import web

from shared.audit import audit_ctx
from shared.crypto import KEYRING, Keyring
from shared.db import pool_ctx
from shared.jwks import http_session_ctx, verifier_ctx
from shared.keyring_check import keyring_check_ctx
from shared.nsacls import namespace_acls_ctx
from shared.ratelimit import rate_limiter_ctx
from shared.redis import redis_ctx
from shared.serve import main_for
from shared.settings import Settings
from shared.web import process_app

from .auditkeeper import audit_keeper_ctx
from .cache import cache_ctx
from .committer import committer_ctx
from .metrics import API_METRICS, ApiMetrics
from .middlewares import auth_middleware
from .reads import state_reader_ctx
from .retention import retention_ctx
from .routes import setup_routes

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
