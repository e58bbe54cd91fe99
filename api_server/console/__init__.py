"""The operators' web console at ``/ui/``: static files served by api_server, no build step.

The page is plain HTML, CSS and ES modules (``static/``, ``app.js`` the entry). It holds the JWT the operator pastes in
memory only, and calls the same HTTP API and ``/watch`` as any client, so it never sees more than its
user may. Every asset comes from here (no CDN: it works in an air-gapped cluster), under a strict
Content-Security-Policy: scripts and styles from this origin only, no inline code, no framing.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path

from aiohttp import web

from shared.errors import NotFound

PREFIX = "/ui"
STATIC = Path(__file__).resolve().parent / "static"

#: Sent with every console response. ``connect-src 'self'`` admits the API and the same-origin
#: ``/watch`` WebSocket (ws/wss on this host), nothing else.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

ASSETS = web.AppKey("console_assets", dict)


def is_console_path(path: str) -> bool:
    """Paths the console serves without a token (the page itself asks for one)."""
    return path == PREFIX or path.startswith(PREFIX + "/")


def asset_names() -> list[str]:
    """The names ``/ui/{name}`` serves (for /openapi.json)."""
    return sorted(path.name for path in STATIC.iterdir() if path.is_file())


def _load() -> dict[str, tuple[bytes, str]]:
    """Every file under ``static/``, read once at start-up: name -> (body, content type)."""
    assets = {}
    for name in asset_names():
        kind = mimetypes.guess_type(name)[0] or "application/octet-stream"
        if kind.startswith("text/") or kind in ("application/javascript", "text/javascript"):
            kind += "; charset=utf-8"
        assets[name] = ((STATIC / name).read_bytes(), kind)
    return assets


async def asset(request: web.Request) -> web.Response:
    """``/ui/`` (the page) and ``/ui/{name}`` (its files); anything else under /ui is a JSON 404."""
    name = request.match_info.get("name") or "index.html"
    found = request.app[ASSETS].get(name)
    if found is None:
        raise NotFound(f"No console file {name!r}")
    body, kind = found
    return web.Response(body=body, headers={**SECURITY_HEADERS, "Content-Type": kind})


async def to_slash(request: web.Request) -> web.Response:
    raise web.HTTPPermanentRedirect(PREFIX + "/")


def setup(app: web.Application) -> None:
    """Add the console's routes to the API's app."""
    mimetypes.add_type("text/javascript", ".js")
    app[ASSETS] = _load()
    app.router.add_get(PREFIX, to_slash)
    app.router.add_get(PREFIX + "/", asset)
    app.router.add_get(PREFIX + "/{name}", asset)
