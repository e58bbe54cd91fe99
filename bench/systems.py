"""The systems under test of ``bench.compare`` (DynConfig and etcd on loopback) and the scenarios run
against them: HTTP load, transactions, the read preload, propagation to watchers."""

from __future__ import annotations

import json
import statistics
import subprocess
import urllib.request
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from devtools.devkeys import mint_token
from devtools.services import free_port, wait_healthy

from .measure import Meter, node, node_result, rss_kib
from .stack import start_process, start_stores, stop

CONCURRENCY = 64
READ_KEYS = 1000
NAMESPACE = "bench"
CLIENT = "bench-client"


# --- the systems under test -----------------------------------------------------------------------


class Systems:
    """DynConfig (Postgres, Redis, api_server, notifier) and etcd, running on loopback."""

    def __init__(self, base: Path, stack: ExitStack, api_processes: int = 1, etcd: bool = True) -> None:
        self.base = base
        stores = start_stores(base, stack, durable=True)
        pg, redis, keys = stores.pg, stores.redis, stores.keys
        self.admin_token = mint_token(keys.signing_key_path, keys.kid, "admin-user", ttl_seconds=7200)
        #: What the generators use: a plain user whom the namespace ACL of ``bench`` lets read and write
        #: (set below), as a service would be, so every request pays for its access checks.
        self.token = mint_token(keys.signing_key_path, keys.kid, CLIENT, ttl_seconds=7200)
        self.api_port, self.notifier_port = free_port(), free_port()
        # LOG_LEVEL INFO as deployed: the access log is on.
        env = stores.env(log_level="INFO", API_PORT=str(self.api_port), NOTIFIER_PORT=str(self.notifier_port))
        if api_processes > 1:
            env["REUSE_PORT"] = "true"  # the API processes share one port; the kernel spreads connections
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        names = [f"api_server.{i}" if i else "api_server" for i in range(api_processes)]
        for name, module, port in [
            *((n, "api_server", self.api_port) for n in names),
            ("notifier", "notifier", self.notifier_port),
        ]:
            self.procs[name] = start_process(stack, module, env, port, log=base / f"{name}.log")
        self._put_json(f"/namespaces/{NAMESPACE}", {"acls": {"read": [CLIENT], "write": [CLIENT]}})
        self.pids = {
            "api_server": [self.procs[name].pid for name in names],
            "notifier": [self.procs["notifier"].pid],
            "postgres": [_pid(pg.pid)],
            "redis": [_pid(redis.pid)],
        }
        self.etcd_port = 0
        if etcd:  # only when it is a target: a DynConfig-only run needs no etcd on the machine
            self._start_etcd(stack)

    def _start_etcd(self, stack: ExitStack) -> None:
        self.etcd_port, peer = free_port(), free_port()
        etcd = subprocess.Popen(
            [
                "etcd",
                "--name=bench",
                f"--data-dir={self.base / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{self.etcd_port}",
                f"--advertise-client-urls=http://127.0.0.1:{self.etcd_port}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=bench=http://127.0.0.1:{peer}",
                "--log-level=error",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        stack.callback(stop, etcd)
        self.procs["etcd"] = etcd
        wait_healthy(f"http://127.0.0.1:{self.etcd_port}", etcd)  # etcd serves /health too
        self.pids["etcd"] = [etcd.pid]

    def _put_json(self, path: str, body: dict[str, Any]) -> None:
        """PUT ``body`` to the API as the admin."""
        request = urllib.request.Request(
            f"{self.api}{path}",
            data=json.dumps(body).encode(),
            method="PUT",
            headers={"Authorization": f"Bearer {self.admin_token}", "Content-Type": "application/json"},
        )
        urllib.request.urlopen(request, timeout=30).close()

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def watch(self) -> str:
        return f"ws://127.0.0.1:{self.notifier_port}/watch"

    @property
    def etcd(self) -> str:
        return f"http://127.0.0.1:{self.etcd_port}"


def _pid(pid: int | None) -> int:
    if pid is None:
        raise RuntimeError("a server of the benchmark is not running")
    return pid


# --- scenarios ------------------------------------------------------------------------------------


def http_load(
    systems: Systems, meter: Meter, target: str, mode: str, seconds: float, prefix: str, keys: int = READ_KEYS
) -> dict[str, Any]:
    result, out = _http_load_run(systems, meter, target, mode, seconds, prefix, mode, keys=keys)
    return {**out, **result}


def _http_load_run(
    systems: Systems,
    meter: Meter,
    target: str,
    mode: str,
    seconds: float,
    prefix: str,
    profile_as: str,
    **extra: Any,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """One run of ``bench/gen/http_load.js`` against ``target`` (DynConfig profiled as ``profile_as``):
    the meter's figures (CPU) and the generator's output."""
    config = {
        "target": target,
        "mode": mode,
        "url": systems.etcd if target == "etcd" else systems.api,
        "token": systems.token,
        "prefix": prefix,
        "concurrency": CONCURRENCY,
        "seconds": seconds,
        **extra,
    }
    result: dict[str, Any] = {}
    with meter.measure(result, profile_as=None if target == "etcd" else profile_as):
        out = node_result(node("http_load.js", config), seconds + 60)
    return result, out


#: Puts per transaction of the txn runs; 128 is both DynConfig's limit (SPEC §4) and etcd's default
#: ``--max-txn-ops`` (129 puts → 400 "too many operations in txn request").
TXN_SIZES = (2, 16, 128)


def txn_load(systems: Systems, meter: Meter, target: str, ops: int, seconds: float) -> dict[str, Any]:
    """``CONCURRENCY`` clients sending transactions of ``ops`` puts on keys of their own (DynConfig
    ``POST /txn``, etcd ``/v3/kv/txn``) for ``seconds``: transactions/s, puts/s, p50/p99 of the
    successful transactions, errors."""
    result, out = _http_load_run(systems, meter, target, "txn", seconds, f"{NAMESPACE}.t{ops}", f"txn-{ops}", ops=ops)
    result.update(
        ops_per_txn=ops,
        txn_per_s=out["ops"],
        ops_per_s=out["ops"] * ops,
        p50_ms=out["p50_ms"],
        p99_ms=out["p99_ms"],
        errors=out["errors"],
        statuses=out["statuses"],
        error_sample=out["error_sample"],
        seconds=out["seconds"],
    )
    return result


def preload(systems: Systems, prefix: str, targets: list[str]) -> None:
    """``READ_KEYS`` keys (``prefix.0`` …) in each target, for the read runs."""
    for target in targets:
        config = {
            "target": target,
            "mode": "fill",
            "url": systems.etcd if target == "etcd" else systems.api,
            "token": systems.token,
            "prefix": prefix,
            "keys": READ_KEYS,
            "concurrency": 16,
            "seconds": 0,
        }
        node_result(node("http_load.js", config), 120)


def propagation(systems: Systems, meter: Meter, target: str, watchers: int, updates: int) -> dict[str, Any]:
    """W watchers on one key, a writer updating it every 100 ms with its send time in the value."""
    key = f"bench.p{watchers}.{target}"
    processes = 1 if watchers <= 2000 else 2
    share = [watchers // processes + (1 if i < watchers % processes else 0) for i in range(processes)]
    seconds_open = 10 + watchers / 500
    duration = seconds_open + updates * 0.1 + 5
    url = systems.etcd if target == "etcd" else systems.watch
    server_pid = systems.pids["etcd" if target == "etcd" else "notifier"][0]
    rss_before = rss_kib(server_pid)
    gens = [
        node(
            "watchers.js",
            {"target": target, "url": url, "token": systems.token, "key": key, "count": n, "seconds": duration},
        )
        for n in share
    ]
    assert all(g.stdout is not None for g in gens)
    ready = [json.loads(g.stdout.readline())["ready"] for g in gens if g.stdout is not None]
    rss_after = rss_kib(server_pid)
    result: dict[str, Any] = {
        "watchers": watchers,
        "open_seconds": round(max(ready), 2),
        "server_kib_per_connection": round((rss_after - rss_before) / watchers, 1),
    }
    with meter.measure(result, profile_as=None if target == "etcd" else f"propagation-{watchers}"):
        writer = node(
            "writer.js",
            {
                "target": target,
                "url": systems.etcd if target == "etcd" else systems.api,
                "token": systems.token,
                "key": key,
                "updates": updates,
                "interval": 100,
            },
        )
        sent = node_result(writer, updates * 3 + 60)
        outputs = [node_result(g, duration + 60) for g in gens]
    latencies = sorted(x for out in outputs for x in out["latencies_ms"])
    expected = watchers * sent["sent"]
    result.update(
        delivered_fraction=round(len(latencies) / expected, 4) if expected else 0.0,
        p50_ms=_pick(latencies, 0.5),
        p99_ms=_pick(latencies, 0.99),
        max_ms=latencies[-1] if latencies else None,
        mean_ms=round(statistics.fmean(latencies), 2) if latencies else None,
        write_errors=sent["errors"],
    )
    return result


def _pick(ordered: Sequence[float], q: float) -> float | None:
    return None if not ordered else ordered[min(len(ordered) - 1, int(len(ordered) * q))]
