"""Every route of the API, in one place."""

from __future__ import annotations

from aiohttp import web

from shared.metrics import metrics_handler

from . import console
from .handlers import audit, health, keys, namespaces
from .openapi import openapi_handler


def setup_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/health", health.health)
    r.add_get("/metrics", metrics_handler)
    r.add_get("/openapi.json", openapi_handler)
    r.add_get("/keys", keys.list_keys)
    # Registered before /keys/{key} so that ".../history" reaches it; other methods answer 400.
    r.add_route("*", "/keys/{key:.+}/history", keys.key_history)
    r.add_post("/keys/{key:.+}/rollback", keys.rollback_key)
    r.add_put("/keys/{key:.+}", keys.put_key)
    r.add_patch("/keys/{key:.+}", keys.patch_key)
    r.add_get("/keys/{key:.+}", keys.get_key)
    r.add_delete("/keys/{key:.+}", keys.delete_key)
    r.add_put("/namespaces/{ns:.+}", namespaces.put_namespace)
    r.add_get("/namespaces/{ns:.+}", namespaces.get_namespace)
    r.add_delete("/namespaces/{ns:.+}", namespaces.delete_namespace)
    r.add_get("/audit", audit.list_audit)
    r.add_get("/audit/verify", audit.verify_audit)
    console.setup(app)
