"""The notifier's Prometheus series (on top of those of every serving process)."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import Counter, Gauge, Histogram

from shared.runtime.metrics import ServingMetrics

_LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class NotifierMetrics(ServingMetrics):
    def __init__(self, process: str) -> None:
        super().__init__(process)
        r = self.registry
        self.connections = Gauge("dynconfig_ws_connections", "Open WebSocket watch connections.", registry=r)
        self.live_writes = Counter(
            "dynconfig_watch_live_writes_total",
            "Socket writes of live events: the events one pass of the hub fans out go out in one write per"
            " connection, so under bursts this grows slower than dynconfig_events_delivered_total.",
            registry=r,
        )
        self.events_delivered = Counter(
            "dynconfig_events_delivered_total", "Change events written to watch connections.", registry=r
        )
        self.propagation_lag = Histogram(
            "dynconfig_propagation_lag_seconds",
            "From a change's commit to its push to watchers (per event, at fan-out).",
            registry=r,
            buckets=_LAG_BUCKETS,
        )
        self.fanout_write = Histogram(
            "dynconfig_fanout_write_seconds",
            "Time the hub takes to write one pass of events to every entitled socket (one write each):"
            " near the interval between changes, the notifier is saturated and events queue up.",
            registry=r,
            buckets=_LAG_BUCKETS,
        )
        self.relay_lag = Histogram(
            "dynconfig_relay_lag_seconds",
            "From a change's commit to its publication by the relay.",
            registry=r,
            buckets=_LAG_BUCKETS,
        )
        self.outbox_backlog = Gauge(
            "dynconfig_outbox_backlog", "Committed changes the relay has not published yet.", registry=r
        )
        self.relay_leader = Gauge("dynconfig_relay_leader", "1 on the replica that currently relays.", registry=r)
        self.slow_consumers = Counter(
            "dynconfig_ws_slow_consumer_closes_total",
            "Watch connections closed (4008) for falling behind.",
            registry=r,
        )
        self.backfilled = Counter(
            "dynconfig_events_backfilled_total", "Events the hub read from Postgres instead of Redis.", registry=r
        )
        self.hub_revision = Gauge("dynconfig_hub_revision", "Last revision this hub fanned out.", registry=r)


NOTIFIER_METRICS = web.AppKey("notifier_metrics", NotifierMetrics)
