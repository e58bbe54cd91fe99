"""Every route of the API, in one place."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from api_server import console
from api_server.handlers import audit, health, keys, namespaces, txn
from api_server.openapi import openapi_handler
from shared.runtime.metrics import metrics_handler
from shared.runtime.web import live

# Any character, newlines included, so that a malformed key or namespace reaches its validator (400)
# instead of falling through to "no route" (404).
KEY = r"{key:[\s\S]+}"
NAMESPACE = r"{ns:[\s\S]+}"


def only(*methods: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The handler of every other method on a sub-resource: 405 with ``Allow``. ``PUT /keys/a/history``
    is a PUT on the history of ``a``, which has none, not a write of a key named ``a/history``."""

    async def not_allowed(request: web.Request) -> web.StreamResponse:
        raise web.HTTPMethodNotAllowed(request.method, methods)

    return not_allowed


def setup_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/health", health.health)
    r.add_get("/health/live", live)
    r.add_get("/metrics", metrics_handler)
    r.add_get("/openapi.json", openapi_handler)
    r.add_get("/keys", keys.list_keys)
    # The sub-resources come before /keys/{key}, so that ".../history" and ".../rollback" reach them.
    r.add_get(f"/keys/{KEY}/history", keys.key_history)
    r.add_route("*", f"/keys/{KEY}/history", only("GET", "HEAD"))
    r.add_post(f"/keys/{KEY}/rollback", keys.rollback_key)
    r.add_route("*", f"/keys/{KEY}/rollback", only("POST"))
    r.add_put(f"/keys/{KEY}", keys.put_key)
    r.add_patch(f"/keys/{KEY}", keys.patch_key)
    r.add_get(f"/keys/{KEY}", keys.get_key)
    r.add_delete(f"/keys/{KEY}", keys.delete_key)
    r.add_post("/txn", txn.post_txn)
    r.add_get("/namespaces", namespaces.list_namespaces)
    r.add_put(f"/namespaces/{NAMESPACE}", namespaces.put_namespace)
    r.add_get(f"/namespaces/{NAMESPACE}", namespaces.get_namespace)
    r.add_delete(f"/namespaces/{NAMESPACE}", namespaces.delete_namespace)
    r.add_get("/audit", audit.list_audit)
    r.add_get("/audit/verify", audit.verify_audit)
    console.setup(app)
