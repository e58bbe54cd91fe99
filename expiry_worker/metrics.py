"""The expiry worker's Prometheus series (on top of those of every process)."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import Counter, Histogram

from shared.runtime.metrics import Metrics


class ExpiryMetrics(Metrics):
    def __init__(self, process: str) -> None:
        super().__init__(process)
        r = self.registry
        self.expiries = Counter("dynconfig_expiries", "Keys soft-deleted by expiry.", registry=r)
        self.expiry_delay = Histogram(
            "dynconfig_expiry_delay_seconds",
            "From a key's deadline to its expiry being committed.",
            registry=r,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0),
        )


EXPIRY_METRICS = web.AppKey("expiry_metrics", ExpiryMetrics)
