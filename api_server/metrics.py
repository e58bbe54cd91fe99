"""The API server's Prometheus series (on top of those of every serving process)."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import Counter, Gauge, Histogram

from shared.runtime.metrics import ServingMetrics


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
        # api_server/auditkeeper.py: the audit chain's head, every AUDIT_CHECKPOINT_SECONDS.
        self.audit_checkpoint_seq = Gauge(
            "dynconfig_audit_checkpoint_seq", "The audit chain's head seq at the last checkpoint.", registry=r
        )
        self.audit_checkpoint_mac48 = Gauge(
            "dynconfig_audit_checkpoint_mac48",
            "The first 48 bits of the head's MAC at the last checkpoint, as an integer (the token's MAC part).",
            registry=r,
        )
        # api_server/retention.py: the one api_server pruning at a time, and what it removed.
        self.retention_leader = Gauge(
            "dynconfig_retention_leader", "1 while this api_server is the one removing rows past retention.", registry=r
        )
        self.retention_removed = Counter(
            "dynconfig_retention_removed", "Rows removed past retention, by table.", ["table"], registry=r
        )
        self.audit_prune_blocked = Gauge(
            "dynconfig_audit_prune_blocked",
            "1 while the oldest audit rows do not verify, so none is pruned (run dynconfig-audit verify).",
            registry=r,
        )


API_METRICS = web.AppKey("api_metrics", ApiMetrics)
