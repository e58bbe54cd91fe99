"""What every DynConfig process's web app shares: JSON bodies and errors, request ids, health."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import psycopg2.errors
from aiohttp import hdrs, web
from aiohttp.typedefs import Middleware

from shared.audit.chain import AUDIT_CHAIN, AuditChain
from shared.db import CONNECTION_ERRORS, DB_POOL, POSTGRES_UNREACHABLE, ping, schema_version
from shared.errors import BadRequest, DynConfigError, PayloadTooLarge, ServiceUnavailable
from shared.runtime.metrics import METRICS, Metrics, metrics_middleware, route_template
from shared.runtime.supervisor import SUPERVISOR, Supervisor
from shared.security.keyring_check import KEYRING_CHECK
from shared.settings import PROCESS, SETTINGS, Settings
from shared.version import VERSION

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
REQUEST_ID = web.RequestKey("request_id", str)
_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
#: The ``Server`` header of every answer: the product only. aiohttp's default names the Python and
#: aiohttp versions, which tells a scanner which advisories to try.
SERVER_HEADER = "DynConfig"


async def name_the_server(_request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: every answer the app gives (handlers, errors, WebSocket handshakes)
    says ``Server: DynConfig``. (Requests refused by aiohttp's parser never reach an app:
    ``shared.runtime.process`` answers those with the same header.)"""
    response.headers[hdrs.SERVER] = SERVER_HEADER


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A compact JSON response."""
    return web.Response(
        text=json.dumps(body, separators=(",", ":"), ensure_ascii=False),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def error_response(status: int, phrase: str, message: str, **extra: Any) -> web.Response:
    """The SPEC §4 error shape."""
    return json_response({"error": phrase, "message": message, **extra}, status=status)


async def read_json(request: web.Request) -> Any:
    """The decoded JSON body, or 400 (malformed) / 413 (over ``client_max_size``)."""
    try:
        raw = await request.read()
    except web.RequestPayloadError:
        raise BadRequest("The request body could not be decoded (check its Content-Encoding)") from None
    if not raw.strip():
        raise BadRequest("A JSON request body is required")
    try:
        return json.loads(raw, parse_constant=_reject_constant, parse_float=_finite_float)
    except RecursionError:
        raise BadRequest("Malformed JSON body: nested too deeply") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequest(f"Malformed JSON body: {exc}") from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    number = float(text)
    if math.isinf(number):
        raise ValueError(f"number {text[:20]} is out of range")
    return number


def request_id(request: web.Request) -> str:
    """The request's id: the client's ``X-Request-Id`` when it is sane, else a fresh one."""
    rid = request.get(REQUEST_ID)
    if rid is None:
        supplied = request.headers.get("X-Request-Id", "")
        rid = supplied if _CLIENT_REQUEST_ID.match(supplied) else uuid.uuid4().hex
        request[REQUEST_ID] = rid
    return str(rid)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Map every failure to the JSON error shape; log unexpected ones (without request bodies)."""
    rid = request_id(request)
    try:
        response = await handler(request)
    except DynConfigError as exc:
        response = json_response(exc.body(), status=exc.status, headers=exc.headers)
    except POSTGRES_UNREACHABLE as exc:
        # Postgres down, frozen or too slow (a connection lost, no answer in time, a statement cancelled
        # by statement_timeout): 503 and try again, never 500 (SPEC §7). Expected: one line, no traceback.
        log.warning(
            "Postgres unavailable in %s %s (request %s): %s",
            request.method,
            route_template(request),
            rid,
            type(exc).__name__,
        )
        slow = isinstance(exc, TimeoutError | psycopg2.errors.QueryCanceled)
        unavailable = ServiceUnavailable(
            f"The database {'did not answer in time' if slow else 'is unavailable'}; try again"
        )
        response = json_response(unavailable.body(), status=unavailable.status, headers=unavailable.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        phrase = PayloadTooLarge.phrase if exc.status == 413 else exc.reason
        response = error_response(exc.status, phrase, _http_message(request, exc))
        for name in ("Allow", "Retry-After"):
            if name in exc.headers:
                response.headers[name] = exc.headers[name]
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unhandled error in %s %s (request %s)", request.method, route_template(request), rid)
        response = error_response(500, "Internal Server Error", f"Unexpected server error (request id {rid})")
    response.headers["X-Request-Id"] = rid
    return response


def _http_message(request: web.Request, exc: web.HTTPException) -> str:
    if exc.status == 404:
        return f"No route for {request.method} {request.path}"
    if exc.status == 405:
        return f"Method {request.method} is not allowed on {request.path}"
    if exc.status == 413:
        return f"Request body is larger than the server accepts ({request.client_max_size} bytes)"
    text = exc.text or ""
    return text if text and not text.startswith(f"{exc.status}:") else exc.reason


def process_app(
    process: str, settings: Settings, metrics: Metrics, middlewares: Sequence[Middleware] = (), **kwargs: Any
) -> web.Application:
    """A DynConfig process's application: the shared middlewares (metrics, JSON errors, then
    ``middlewares``), its settings, name, metrics, the seal of its audit rows, the supervisor of
    its background loops, and a ``Server`` header without versions."""
    app = web.Application(middlewares=[metrics_middleware, error_middleware, *middlewares], **kwargs)
    app[SETTINGS] = settings
    app[PROCESS] = process
    app[METRICS] = metrics
    app[AUDIT_CHAIN] = AuditChain.from_settings(settings)
    app[SUPERVISOR] = Supervisor(metrics.background_errors)
    app.on_response_prepare.append(name_the_server)
    return app


async def base_checks(app: web.Application) -> dict[str, Any]:
    """The ``/health`` checks every process has: Postgres answers, no background loop is failing, the
    keyring opens the values in use (shared/security/keyring_check.py)."""
    postgres = await postgres_check(app[DB_POOL])
    return {
        "postgres": postgres,
        "schema": await schema_check(app[DB_POOL]) if postgres == "ok" else "unavailable",
        "background": app[SUPERVISOR].status,
        "keyring": app[KEYRING_CHECK].status,
    }


#: How long ``/health`` waits for Postgres (a pooled connection, then ``SELECT 1``): within the probes'
#: 3 s timeout, so a frozen database or an exhausted pool makes the pod unready, not the probe time out.
POSTGRES_CHECK_SECONDS = 2.0


async def schema_check(pool: Any) -> int | str:
    """The database's schema version (reported only: the range was checked at start), for /health;
    asked only once :func:`postgres_check` passed, so the two stay within the probe's timeout."""
    try:
        async with asyncio.timeout(POSTGRES_CHECK_SECONDS):
            return await schema_version(pool)
    except CONNECTION_ERRORS:
        return "unavailable"


async def postgres_check(pool: Any) -> str:
    """``"ok"`` when Postgres answers ``SELECT 1`` within 2 s, else ``"unavailable"`` (for /health)."""
    try:
        async with asyncio.timeout(POSTGRES_CHECK_SECONDS), pool.acquire() as conn, conn.cursor() as cur:
            await ping(cur)
    except CONNECTION_ERRORS:
        return "unavailable"
    return "ok"


#: Checks that make a process unhealthy (503: not ready, out of the Service's endpoints until it
#: passes; liveness is ``/health/live``'s) when they are not "ok"; the others (Redis, the relay role)
#: are reported only: the process works without them.
REQUIRED_CHECKS = ("postgres", "audit", "background", "keyring")


async def live(request: web.Request) -> web.Response:
    """``GET /health/live``, the liveness probe of every process (SPEC §1): 200 whenever the event loop
    answers. It looks at nothing else: Postgres, Redis and the JWKS are ``/health``'s (readiness), so a
    database blip takes pods out of rotation but never has Kubernetes restart them all."""
    return json_response({"status": "alive"})


def health_response(checks: dict[str, Any]) -> web.Response:
    """200 ``{"status": "healthy", "version", "checks"}`` unless a required check failed: then 503 in
    the error shape."""
    failing = [name for name in REQUIRED_CHECKS if name in checks and checks[name] != "ok"]
    if failing:
        message = "Failing checks: " + ", ".join(f"{name} {checks[name]}" for name in failing)
        body = {"status": "unhealthy", "error": "Service Unavailable", "message": message}
        return json_response({**body, "version": VERSION, "checks": checks}, status=503)
    return json_response({"status": "healthy", "version": VERSION, "checks": checks})


#: How long a peer gets to answer our close frame at shutdown before its connection is simply cut.
CLOSE_TIMEOUT_SECONDS = 2.0


async def close_websockets(sockets: Iterable[web.WebSocketResponse], *, code: int, reason: bytes) -> None:
    """Close every socket at once (on shutdown: 1001, going away), so their handlers end instead of
    holding the shutdown up. Each close is bounded (a peer that never reads, or never answers the close
    frame, would otherwise hold it for aiohttp's 10 s); one that fails does not stop the others."""

    async def close(ws: web.WebSocketResponse) -> None:
        await asyncio.wait_for(ws.close(code=code, message=reason), CLOSE_TIMEOUT_SECONDS)

    await asyncio.gather(*(close(ws) for ws in list(sockets)), return_exceptions=True)
