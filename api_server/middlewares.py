"""Authentication and rate limiting for every route except the open ones (SPEC §2, §8)."""

from __future__ import annotations

from aiohttp import web

from api_server.console import is_console_path
from api_server.domain.keys import Caller
from shared.errors import DynConfigError
from shared.runtime.metrics import Handler
from shared.runtime.web import request_id
from shared.security.auth import VERIFIER, bearer_token
from shared.security.ratelimit import RATE_LIMITER

OPEN_PATHS = frozenset({"/health", "/health/live", "/metrics", "/openapi.json"})
CALLER = web.RequestKey("caller", Caller)


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Verify the bearer token and apply the caller's rate limit."""
    # Unknown routes need a token too: an anonymous caller learns nothing about which paths exist.
    if request.path in OPEN_PATHS or is_console_path(request.path):
        return await handler(request)
    token = bearer_token(request.headers.get("Authorization"))
    principal, _exp = await request.app[VERIFIER].verify(token)
    decision = await request.app[RATE_LIMITER].hit(principal.username)
    if not decision.allowed:
        raise decision.refusal()
    limit_headers = decision.headers
    request[CALLER] = Caller(principal, request_id(request))
    try:
        response = await handler(request)
    except DynConfigError as exc:
        exc.headers.update(limit_headers)
        raise
    response.headers.update(limit_headers)
    return response
