"""DynConfig beside etcd on this machine, same generators, same run (see bench/README.md).

    python -m bench.compare [--quick] [--only writes,txn,reads,propagation,scale] [--seconds 10] [--json FILE]
                            [--targets dynconfig,etcd] [--profile DIR]

Starts, on loopback and in a temporary directory: Postgres (fsync on), Redis, ``api_server`` and
``notifier`` as ``./dev/up`` would, and Debian's ``etcd`` (3.4, fsync on); then runs the Node.js
generators of ``bench/gen`` (installed with npm on first use) against each, in separate processes,
and prints one table (and JSON) with every figure beside etcd's and the CPU each process used, so a
reader can see when the generator is the limit. Everything it starts is stopped by pid at the end.
"""

from __future__ import annotations

import argparse
import json
import shutil
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from . import scale
from .measure import Meter, ensure_generators
from .stack import private_folder
from .systems import TXN_SIZES, Systems, http_load, preload, propagation, txn_load

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
        if "txn_per_s" in shape:
            cell = lambda r: (  # noqa: E731
                f"{r['txn_per_s']:,.0f} txn/s = {r['ops_per_s']:,.0f} puts/s, p50 {_ms(r['p50_ms'])}, "
                f"p99 {_ms(r['p99_ms'])}, {r['errors']:,} errors"
            )
        elif "ops" in shape:
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


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="shorter runs, propagation at 1,000 watchers only")
    parser.add_argument(
        "--only", default="writes,txn,reads,propagation", help="comma list of scenario groups (and: scale)"
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each read/write/txn run")
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
            if "txn" in groups:
                for ops in TXN_SIZES:
                    results.setdefault(f"txn of {ops} puts, 64 clients, distinct keys", {})[target] = txn_load(
                        systems, meter, target, ops, seconds
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
