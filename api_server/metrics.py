"""The API server's Prometheus series (on top of those of every serving process)."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import Counter, Histogram

from shared.metrics import ServingMetrics


class ApiMetrics(ServingMetrics):
    def __init__(self, process: str) -> None:
        super().__init__(process)
        r = self.registry
        self.cache_lookups = Counter("dynconfig_cache_lookups", "Value cache lookups.", ["result"], registry=r)
        self.write_batch_bytes = Histogram(
            "dynconfig_write_batch_bytes",
            "Bytes of values per committed write batch (group commit; bounded by MAX_BATCH_BYTES).",
            registry=r,
            buckets=(0, 1024, 16384, 262144, 1048576, 4194304, 8388608, 16777216),
        )


API_METRICS = web.AppKey("api_metrics", ApiMetrics)
