"""Authentication and rate limiting for every route except the open ones (SPEC §2, §8)."""

from __future__ import annotations

from aiohttp import web

from shared.appkeys import VERIFIER
from shared.auth import bearer_token
from shared.errors import DynConfigError, RateLimited
from shared.metrics import Handler
from shared.web import request_id

from .console import is_console_path
from .domain.keys import Caller
from .metrics import API_METRICS
from .ratelimit import RATE_LIMITER

OPEN_PATHS = frozenset({"/health", "/metrics", "/openapi.json"})
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
    limit_headers = {"X-RateLimit-Limit": str(decision.limit), "X-RateLimit-Remaining": str(decision.remaining)}
    if not decision.allowed:
        request.app[API_METRICS].rate_limited.inc()
        raise RateLimited(
            f"Exceed {decision.limit} req/min",
            headers={**limit_headers, "Retry-After": str(decision.retry_after)},
        )
    request[CALLER] = Caller(principal, request_id(request))
    try:
        response = await handler(request)
    except DynConfigError as exc:
        exc.headers.update(limit_headers)
        raise
    response.headers.update(limit_headers)
    return response
