"""Prometheus metrics with a registry per app (two apps in one process never collide)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Metrics:
    """The series every process exports; each process adds its own in its ``metrics.py``."""

    def __init__(self, process: str) -> None:
        self.registry = CollectorRegistry()
        self.process = process
        self.requests = Histogram(
            "dynconfig_http_request_duration_seconds",
            "HTTP request latency by route template and status code.",
            ["process", "method", "route", "status"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
        )
        self.background_errors = Counter(
            "dynconfig_background_errors",
            "Unexpected failures of a background loop (each is logged and the loop restarted).",
            ["loop"],
            registry=self.registry,
        )


METRICS = web.AppKey("metrics", Metrics)


class ServingMetrics(Metrics):
    """Series of the processes that serve clients, with a Redis link and an audit writer (the API
    server and the notifier)."""

    def __init__(self, process: str) -> None:
        super().__init__(process)
        r = self.registry
        self.audit_dropped = Counter(
            "dynconfig_audit_dropped",
            "Read/denial audit records dropped (buffer full, or refused by Postgres even in safe form).",
            registry=r,
        )
        self.audit_repaired = Counter(
            "dynconfig_audit_records_repaired",
            "Audit records stored in a safe form (control characters escaped, text bounded).",
            registry=r,
        )
        self.audit_flush_errors = Counter(
            "dynconfig_audit_flush_errors", "Failed rounds of the audit writer (retried with backoff).", registry=r
        )
        self.redis_up = Gauge("dynconfig_redis_up", "1 when Redis answered the last call.", registry=r)
        self.rate_limited = Counter(
            "dynconfig_rate_limited", "Requests refused with 429 (REST, /watch handshakes and messages).", registry=r
        )


def route_template(request: web.Request) -> str:
    """The matched route's template (bounded cardinality), never the raw path."""
    info = request.match_info
    if info.http_exception is not None or info.route.resource is None:
        return "unmatched"
    return info.route.resource.canonical


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Time every request; label by method, route template and status."""
    start = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        metrics = request.app[METRICS]
        metrics.requests.labels(metrics.process, request.method, route_template(request), str(status)).observe(
            time.perf_counter() - start
        )


async def metrics_handler(request: web.Request) -> web.Response:
    """``GET /metrics`` in the Prometheus text format."""
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
