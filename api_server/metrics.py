"""The API server's Prometheus series (on top of those of every serving process)."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import Counter, Gauge

from shared.metrics import ServingMetrics


class ApiMetrics(ServingMetrics):
    def __init__(self, process: str) -> None:
        super().__init__(process)
        r = self.registry
        self.cache_lookups = Counter("dynconfig_cache_lookups", "Value cache lookups.", ["result"], registry=r)
        self.rate_limited = Counter("dynconfig_rate_limited", "Requests refused with 429.", registry=r)
        # api_server/auditkeeper.py: the audit chain's head, every AUDIT_CHECKPOINT_SECONDS.
        self.audit_checkpoint_seq = Gauge(
            "dynconfig_audit_checkpoint_seq", "The audit chain's head seq at the last checkpoint.", registry=r
        )
        self.audit_checkpoint_mac48 = Gauge(
            "dynconfig_audit_checkpoint_mac48",
            "The first 48 bits of the head's MAC at the last checkpoint, as an integer (the token's MAC part).",
            registry=r,
        )


API_METRICS = web.AppKey("api_metrics", ApiMetrics)
