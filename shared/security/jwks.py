"""cleanup_ctx pieces for auth: the process's HTTP session and the JWKS verifier with its refresh loop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from shared.runtime.supervisor import SUPERVISOR, cancel_and_wait
from shared.security.auth import VERIFIER, JwksCache, JwksError, TokenVerifier
from shared.settings import SETTINGS

HTTP_SESSION = web.AppKey("http_session", aiohttp.ClientSession)


log = logging.getLogger(__name__)


async def http_session_ctx(app: web.Application) -> AsyncIterator[None]:
    """One ClientSession per process."""
    async with aiohttp.ClientSession() as session:
        app[HTTP_SESSION] = session
        yield


async def verifier_ctx(app: web.Application) -> AsyncIterator[None]:
    """Load the JWKS (retrying in the background if it is not reachable yet) and refresh it periodically."""
    settings = app[SETTINGS]
    jwks = JwksCache(settings.jwks_url, app[HTTP_SESSION])
    app[VERIFIER] = TokenVerifier(
        jwks, admins=settings.admin_users, issuer=settings.jwt_issuer, audience=settings.jwt_audience
    )

    delay = settings.jwks_refresh_seconds

    async def refresh_loop() -> None:
        nonlocal delay
        while True:
            await asyncio.sleep(delay)
            try:
                await jwks.refresh()
                delay = settings.jwks_refresh_seconds
            except JwksError as exc:
                log.warning("%s", exc)
                delay = 5.0

    try:
        await jwks.refresh()
    except JwksError as exc:
        log.error("%s; tokens are refused until it loads", exc)
    delay = settings.jwks_refresh_seconds if jwks.loaded else 5.0
    task = app[SUPERVISOR].spawn("jwks-refresh", refresh_loop)
    try:
        yield
    finally:
        await cancel_and_wait(task)
