"""DynConfig beside etcd on this machine, same generators, same run (see bench/README.md).

    python -m bench.compare [--quick] [--only writes,reads,propagation,scale] [--seconds 10] [--json FILE]
                            [--profile DIR]

Starts, on loopback and in a temporary directory: Postgres (fsync on), Redis, ``api_server`` and
``notifier`` as ``./dev/up`` would, and Debian's ``etcd`` (3.4, fsync on); then runs the Node.js
generators of ``bench/gen`` (installed with npm on first use) against each, in separate processes,
and prints one table (and JSON) with every figure beside etcd's and the CPU each process used, so a
reader can see when the generator is the limit. Everything it starts is stopped by pid at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from devtools.devkeys import mint_token
from devtools.services import free_port, wait_healthy

from . import scale
from .stack import private_folder, start_process, start_stores, stop

GEN = Path(__file__).resolve().parent / "gen"
TICKS = os.sysconf("SC_CLK_TCK")
CONCURRENCY = 64
READ_KEYS = 1000
#: Every DynConfig key of the benchmark lives under this namespace, which CLIENT may read and write.
NAMESPACE = "bench"
CLIENT = "bench-client"
PYTHON_PROCESSES = ("api_server", "notifier")
#: py-spy from this virtualenv (``pip install py-spy``) or the PATH; only ``--profile`` needs it.
PY_SPY = shutil.which("py-spy", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))


# --- processes and their CPU ----------------------------------------------------------------------


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of ``pid`` and every process below it, in seconds."""
    tree, total, todo = _children(), 0.0, [pid]
    while todo:
        current = todo.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / TICKS
        except (OSError, IndexError, ValueError):
            continue
        todo.extend(tree.get(current, []))
    return total


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Meter:
    """CPU use of named process trees (and of the generators) over one scenario, as % of one core;
    with ``profile_dir``, also a py-spy profile of every Python server process over each DynConfig scenario
    (collapsed stacks, ``<scenario>.<process>.txt``)."""

    def __init__(self, pids: dict[str, list[int]], profile_dir: Path | None = None) -> None:
        self.pids = pids
        self.profile_dir = profile_dir

    @contextmanager
    def measure(self, result: dict[str, Any], profile_as: str | None = None) -> Iterator[None]:
        before = {name: sum(map(cpu_seconds, pids)) for name, pids in self.pids.items()}
        generators = _own_children_cpu()
        started = time.monotonic()
        with self._profiled(profile_as):
            yield
        wall = time.monotonic() - started
        cpu = {
            name: round(100 * (sum(map(cpu_seconds, pids)) - before[name]) / wall) for name, pids in self.pids.items()
        }
        cpu["generator"] = round(100 * (_own_children_cpu() - generators) / wall)
        result["cpu_percent"] = cpu

    @contextmanager
    def _profiled(self, scenario: str | None) -> Iterator[None]:
        if self.profile_dir is None or scenario is None:
            yield
            return
        if PY_SPY is None:
            raise SystemExit("bench: --profile needs py-spy (pip install py-spy)")
        self.profile_dir.mkdir(parents=True, exist_ok=True)
        spies = [
            subprocess.Popen(
                [
                    PY_SPY,
                    "record",
                    "--nonblocking",
                    "--format",
                    "raw",
                    "--rate",
                    "100",
                    "--pid",
                    str(pid),
                    "--output",
                    str(self.profile_dir / f"{scenario}.{name}{f'.{i}' if i else ''}.txt"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for name, pids in self.pids.items()
            if name in PYTHON_PROCESSES
            for i, pid in enumerate(pids)
        ]
        try:
            yield
        finally:
            for spy in spies:
                spy.send_signal(signal.SIGINT)  # py-spy writes its profile on SIGINT
            for spy in spies:
                spy.wait(60)


def _own_children_cpu() -> float:
    usage = os.times()
    return usage.children_user + usage.children_system


def node(script: str, config: dict[str, Any]) -> subprocess.Popen[str]:
    """A generator; its configuration (with a token) goes in the environment, not on the command line."""
    env = {**os.environ, "BENCH_CONFIG": json.dumps(config)}
    return subprocess.Popen(["node", str(GEN / script)], stdout=subprocess.PIPE, text=True, cwd=GEN, env=env)


def node_result(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    out, _ = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"generator failed ({proc.returncode}): {out[-500:]}")
    return json.loads(out.strip().splitlines()[-1])


def ensure_generators() -> None:
    if not (GEN / "node_modules" / "ws").exists():
        print("bench: installing the Node.js generators (npm ci)", file=sys.stderr)
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=GEN, check=True)


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
    config = {
        "target": target,
        "mode": mode,
        "url": systems.etcd if target == "etcd" else systems.api,
        "token": systems.token,
        "prefix": prefix,
        "keys": keys,
        "concurrency": CONCURRENCY,
        "seconds": seconds,
    }
    result: dict[str, Any] = {}
    with meter.measure(result, profile_as=None if target == "etcd" else mode):
        result.update(node_result(node("http_load.js", config), seconds + 60))
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


# --- the table ------------------------------------------------------------------------------------


def table(results: dict[str, Any]) -> str:
    rows = [
        "| figure | DynConfig | etcd | CPU % (api / notifier / postgres / redis / etcd / generator) |",
        "|---|---|---|---|",
    ]

    def cpu(r: dict[str, Any]) -> str:
        c = r.get("cpu_percent", {})
        return " / ".join(
            str(c.get(n, "-")) for n in ("api_server", "notifier", "postgres", "redis", "etcd", "generator")
        )

    for name, pair in results.items():
        dyn, etcd = pair.get("dynconfig", {}), pair.get("etcd", {})
        shape = dyn or etcd
        if "ops" in shape:
            cell = lambda r: f"{r['ops']:,.0f}/s, p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms"  # noqa: E731
        elif "kind" in shape:
            cell = scale.cell
        else:
            cell = lambda r: (  # noqa: E731
                f"p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, max {r['max_ms']:.0f} ms, "
                f"{100 * r['delivered_fraction']:.1f}% delivered, {r['server_kib_per_connection']} KiB/conn, "
                f"open {r['open_seconds']} s"
            )
        shown = [cell(r) if r else "-" for r in (dyn, etcd)]
        rows.append(f"| {name} | {shown[0]} | {shown[1]} | {cpu(dyn)} ‖ {cpu(etcd)} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="shorter runs, propagation at 1,000 watchers only")
    parser.add_argument("--only", default="writes,reads,propagation", help="comma list of scenario groups (and: scale)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each read/write run")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--watchers", help="comma list of watcher counts for propagation (default 1000,10000)")
    parser.add_argument("--targets", default="dynconfig,etcd", help="comma list: dynconfig, etcd")
    parser.add_argument("--api-processes", type=int, default=1, help="api_server processes sharing the port")
    parser.add_argument("--profile", type=Path, help="py-spy profiles of the DynConfig runs into this folder")
    parser.add_argument("--scale-keys", type=int, default=1_000_000, help="keys stored for the scale group")
    args = parser.parse_args()
    groups = set(args.only.split(","))
    targets = args.targets.split(",")
    seconds = 5.0 if args.quick else args.seconds
    ensure_generators()
    base = private_folder()
    results: dict[str, Any] = {}
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, base, True)
        systems = Systems(base, stack, args.api_processes, etcd="etcd" in targets)
        meter = Meter(systems.pids, args.profile)
        for target in targets:
            if "writes" in groups:
                results.setdefault("writes, 64 clients, distinct keys", {})[target] = http_load(
                    systems, meter, target, "write", seconds, "bench.w"
                )
                results.setdefault("writes, 64 clients, one hot key", {})[target] = http_load(
                    systems, meter, target, "write-hot", seconds, "bench.h"
                )
        if "reads" in groups:
            preload(systems, "bench.r", targets)
            for target in targets:
                results.setdefault("reads, 64 clients, 1,000 keys", {})[target] = http_load(
                    systems, meter, target, "read", seconds, "bench.r"
                )
        if "propagation" in groups:
            counts = (
                [int(n) for n in args.watchers.split(",")] if args.watchers else [1000] if args.quick else [1000, 10000]
            )
            for watchers in counts:
                for target in targets:
                    results.setdefault(f"propagation, {watchers:,} watchers × 10 updates/s", {})[target] = propagation(
                        systems, meter, target, watchers, updates=50 if args.quick else 100
                    )
        if "scale" in groups:
            results.update(scale.run(systems, meter, args.scale_keys, seconds))
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
