"""The scale-of-data runs of ``bench.compare --only scale`` (bench/README.md, "Scale of data").

    python -m bench.compare --only scale [--scale-keys 1000000] [--json FILE]

Stores N keys (``--scale-keys``; ``bench.big.0`` …) and a namespace of N/10 more (``bench.list.000000`` …)
in both systems, then measures, beside etcd: reads at random over the N keys and writes of distinct
keys with all that stored (the 64-client generator of the read/write runs); page 1 and the last page
(page 1,000 at N = 1,000,000, 100 keys a page) of the namespace's listing, the last reached by
following the cursor; and a snapshot subscribe of the namespace (etcd has no snapshot: one range of
the prefix), with the server's memory before, at peak and after.

DynConfig is loaded straight into Postgres through the committer's own write path (:func:`load_dynconfig`),
etcd through its JSON gateway (``gen/scale.js``); both are timed.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import statistics
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiopg
import psycopg2

from devtools.devkeys import ensure_dev_keys, mint_token
from shared.audit.chain import AuditChain
from shared.changes.kinds import EventKind
from shared.changes.writes import NewState, change, write_changes
from shared.security.crypto import Keyring
from shared.settings import Settings
from shared.sql import changelog as changelog_sql
from shared.sql import keys as keys_sql
from shared.sql import namespaces as ns_sql
from shared.validation import encode_value

from . import measure
from .systems import CONCURRENCY, READ_KEYS, http_load

if TYPE_CHECKING:
    from .measure import Meter
    from .systems import Systems

BIG_PREFIX = "bench.big"
NAMESPACE = "bench.list"
WRITE_PREFIX = "bench.sw"
#: The listing's page size: the API's default ``limit``.
PAGE = 100
FETCHES = 50
SNAPSHOT_RUNS = 3
#: Keys per Postgres transaction when loading, and transactions in flight (one prepares while the
#: other holds the revision counter; the counter's row lock serialises their last statement anyway).
LOAD_BATCH = 5000
LOAD_WORKERS = 2
#: etcd's --max-txn-ops default: puts per /v3/kv/txn when loading etcd.
ETCD_TXN_OPS = 128
ACTOR = "admin-user"  # the benchmark's token
READER = "bench-reader"


@dataclass(frozen=True)
class KeySet:
    """``prefix.0`` … ``prefix.{count-1}``, the number zero-padded to ``pad`` digits."""

    prefix: str
    count: int
    pad: int = 0

    def name(self, i: int) -> str:
        return f"{self.prefix}.{i:0{self.pad}d}"

    def wire(self) -> dict[str, Any]:
        return {"prefix": self.prefix, "count": self.count, "pad": self.pad}


def value(i: int) -> dict[str, Any]:
    """The value stored under key number ``i`` of a set (gen/scale.js has the same)."""
    return {"n": i, "enabled": i % 2 == 0, "owner": f"team-{i % 50}"}


# --- loading --------------------------------------------------------------------------------------


def server_env(pid: int) -> dict[str, str]:
    """The environment a process of the benchmark was started with (its POSTGRES_URL, ENCRYPTION_KEYS)."""
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(entry.split("=", 1) for entry in raw.decode().split("\0") if "=" in entry)


async def load_dynconfig(dsn: str, keyring: Keyring, chain: AuditChain, sets: list[KeySet]) -> None:
    """Create every key of ``sets`` (as ``PUT`` by the admin would), ``LOAD_BATCH`` per transaction."""
    batches = iter(
        [(s, start, min(start + LOAD_BATCH, s.count)) for s in sets for start in range(0, s.count, LOAD_BATCH)]
    )
    async with aiopg.create_pool(dsn, minsize=LOAD_WORKERS, maxsize=LOAD_WORKERS) as pool:

        async def worker() -> None:
            for key_set, start, stop in batches:
                await _create(pool, keyring, chain, [(key_set.name(i), i) for i in range(start, stop)])

        await asyncio.gather(*(worker() for _ in range(LOAD_WORKERS)))


async def _create(pool: aiopg.Pool, keyring: Keyring, chain: AuditChain, numbered: list[tuple[str, int]]) -> None:
    """One transaction of new keys, written as the committer writes a batch of creating PUTs: claim and
    lock their rows, read the namespace ACLs and the clock, then ``write_changes`` (keys, history,
    outbox, audit sealed into the chain, revisions). No cache announcement: no replica has these keys cached."""
    keys = sorted(key for key, _ in numbered)
    sealed = {key: keyring.encrypt(encode_value(value(i)), aad=key) for key, i in numbered}
    async with pool.acquire() as conn, conn.cursor() as cur, cur.begin():
        states = list((await keys_sql.claim_many(cur, keys, [ACTOR] * len(keys))).values())
        ns_acls, now = await ns_sql.acls_above_and_clock(cur, keys)
        changes = [
            change(
                state,
                NewState(sealed[state.key], None, None, ACTOR),
                event=EventKind.UPDATE,
                action="create",
                actor=ACTOR,
                request_id=uuid.uuid4().hex,
                now=now,
                namespace_acls=ns_acls,
            )
            for state in states
        ]
        await write_changes(cur, changes, chain)


def vacuum(dsn: str) -> None:
    """``VACUUM (ANALYZE)`` the database: what autovacuum does within a minute or so of any load.

    Before loading, for the planner: on a fresh database ``relay_state`` was never analysed and is
    taken for ~1,800 rows, which makes the write statement's estimated cost cross ``jit_above_cost``
    from ~64 changes a batch (JIT then costs 0.2 s a batch at 64 changes, 1.7 s at 5,000). After, so
    that autovacuum does not run during the measurements, and index-only scans see a visibility map."""
    with closing(psycopg2.connect(dsn)) as conn:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("VACUUM (ANALYZE)")


def _head(dsn: str) -> int:
    with closing(psycopg2.connect(dsn)) as conn, conn.cursor() as cur:
        cur.execute(changelog_sql.HEAD)
        row = cur.fetchone()
    assert row is not None
    return int(row[0])


def metric(url: str, name: str, labels: str = "") -> float:
    """The value of one series on a process's ``/metrics`` (0 when absent)."""
    text = urllib.request.urlopen(f"{url}/metrics", timeout=10).read().decode()
    pattern = re.compile(rf"^{re.escape(name)}(?:\{{[^}}]*{re.escape(labels)}[^}}]*\}})? (\S+)$", re.MULTILINE)
    return sum(float(found) for found in pattern.findall(text))


def wait_relayed(systems: Systems, dsn: str, timeout: float = 1800.0) -> float:
    """Until the notifier's hub has taken in every committed change; the seconds it took."""
    started, head = time.monotonic(), _head(dsn)
    notifier = f"http://127.0.0.1:{systems.notifier_port}"
    while metric(notifier, "dynconfig_hub_revision") < head:
        if time.monotonic() - started > timeout:
            raise RuntimeError("the notifier did not catch up with the load")
        time.sleep(1.0)
    return time.monotonic() - started


def _own_cpu() -> float:
    usage = os.times()
    return usage.user + usage.system


def load(systems: Systems, meter: Meter, sets: list[KeySet]) -> dict[str, Any]:
    """Both systems loaded with ``sets``; the time each took (DynConfig: the load, then vacuum and relay)."""
    env = server_env(systems.procs["api_server"].pid)
    settings = Settings.from_env(env)
    dsn, keyring, chain = settings.postgres_url, Keyring(settings.encryption_keys), AuditChain.from_settings(settings)
    keys = sum(s.count for s in sets)
    dynconfig: dict[str, Any] = {"kind": "load", "keys": keys}
    vacuum(dsn)
    started, own = time.monotonic(), _own_cpu()
    with meter.measure(dynconfig):  # the loader runs in this process: "generator" stays 0
        asyncio.run(load_dynconfig(dsn, keyring, chain, sets))
    loaded = time.monotonic() - started
    dynconfig["loader_cpu_percent"] = round(100 * (_own_cpu() - own) / loaded)
    vacuum(dsn)
    vacuumed = time.monotonic() - started - loaded
    relayed = wait_relayed(systems, dsn)
    dynconfig.update(
        {
            "seconds": round(loaded, 1),
            "keys_per_s": round(keys / loaded),
            "vacuum_seconds": round(vacuumed, 1),
            "relay_wait_seconds": round(relayed, 1),
            "method": f"committer write path from the bench process, {LOAD_BATCH} keys a transaction",
        }
    )
    config = {
        "mode": "load",
        "target": "etcd",
        "url": systems.etcd,
        "sets": [s.wire() for s in sets],
        "batch": ETCD_TXN_OPS,
        "concurrency": 16,
    }
    etcd: dict[str, Any] = {"kind": "load"}
    with meter.measure(etcd):
        out = measure.node_result(measure.node("scale.js", config), 3600)
    if out["errors"]:
        raise RuntimeError(f"etcd refused {out['errors']} load transactions")
    etcd.update(
        {
            "keys": out["keys"],
            "seconds": round(out["seconds"], 1),
            "keys_per_s": round(out["keys"] / out["seconds"]),
            "method": f"/v3/kv/txn of {ETCD_TXN_OPS} puts, 16 at once",
        }
    )
    return {"dynconfig": dynconfig, "etcd": etcd}


# --- memory ---------------------------------------------------------------------------------------


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return 0


@contextmanager
def memory(pid: int, result: dict[str, Any]) -> Iterator[None]:
    """RSS of ``pid`` before, at peak and 2 s after the block, in KiB: the peak is VmHWM after resetting
    it (``clear_refs``), or, where that is not allowed, the highest VmRSS sampled every 10 ms."""
    before = measure.rss_kib(pid)
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
        hwm = True
    except OSError:
        hwm = False
    samples = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.01):
            samples.append(measure.rss_kib(pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield
    finally:
        done.set()
        sampler.join()
    peak = max(max(samples), _status_kib(pid, "VmHWM") if hwm else 0)
    time.sleep(2.0)
    result.update(rss_before_kib=before, rss_peak_kib=peak, rss_after_kib=measure.rss_kib(pid))


# --- scenarios ------------------------------------------------------------------------------------


def cache_lookups(systems: Systems) -> dict[str, float]:
    """The api_server's value-cache hits and misses so far."""
    return {
        result: metric(systems.api, "dynconfig_cache_lookups_total", f'result="{result}"') for result in ("hit", "miss")
    }


def reads(systems: Systems, meter: Meter, target: str, seconds: float, keys: int) -> dict[str, Any]:
    """64 clients reading at random the first ``keys`` keys of the big set; DynConfig: with its cache's
    hit rate."""
    before = cache_lookups(systems) if target == "dynconfig" else {}
    result = http_load(systems, meter, target, "read", seconds, BIG_PREFIX, keys=keys)
    if before:
        after = cache_lookups(systems)
        hits, misses = after["hit"] - before["hit"], after["miss"] - before["miss"]
        result["cache_hit_fraction"] = round(hits / (hits + misses), 4) if hits + misses else None
    return result


def listing(
    systems: Systems, meter: Meter, target: str, namespace_keys: int, token: str | None = None
) -> dict[str, Any]:
    """Page 1 and the last page of the namespace, ``FETCHES`` times each, one request at a time (as the
    admin unless ``token`` is given)."""
    config = {
        "mode": "list",
        "target": target,
        "url": systems.etcd if target == "etcd" else systems.api,
        "token": token or systems.admin_token,
        "namespace": NAMESPACE,
        "page": PAGE,
        "to_page": namespace_keys // PAGE,
        "fetches": FETCHES,
    }
    result: dict[str, Any] = {}
    with meter.measure(result, profile_as=None if target == "etcd" else "scale-listing"):
        result.update(measure.node_result(measure.node("scale.js", config), 3600))
    return result


def subscribe_snapshot(systems: Systems, meter: Meter, target: str, namespace_keys: int) -> dict[str, Any]:
    """``SNAPSHOT_RUNS`` snapshot subscribes of the namespace in turn (etcd: a range of its prefix), with
    the server's memory; DynConfig: also the snapshot query alone, run from here."""
    config = {
        "mode": "snapshot",
        "target": target,
        "url": systems.etcd if target == "etcd" else systems.watch,
        "token": systems.admin_token,
        "namespace": NAMESPACE,
        "expect": namespace_keys,
        "runs": SNAPSHOT_RUNS,
    }
    result: dict[str, Any] = {"kind": "snapshot"}
    if target == "dynconfig":  # first: its backend must not exit inside a CPU window
        dsn = server_env(systems.procs["notifier"].pid)["POSTGRES_URL"]
        result["query_seconds"] = asyncio.run(_snapshot_query(dsn))
    server = systems.procs["etcd" if target == "etcd" else "notifier"].pid
    with memory(server, result), meter.measure(result, profile_as=None if target == "etcd" else "scale-snapshot"):
        out = measure.node_result(measure.node("scale.js", config), 3600)
    result.update(out, seconds=statistics.median(out["seconds"]), runs_seconds=out["seconds"])
    return result


def reader_token(systems: Systems) -> str:
    """A token for ``READER``, a non-admin whom a namespace ACL lets read the listed namespace (set
    here); an admin's listing counts with one ``count(*)``, anyone else's must check every key's ACL."""
    body = json.dumps({"acls": {"read": [READER], "write": []}}).encode()
    request = urllib.request.Request(
        f"{systems.api}/namespaces/{NAMESPACE}",
        data=body,
        method="PUT",
        headers={"Authorization": f"Bearer {systems.admin_token}", "Content-Type": "application/json"},
    )
    urllib.request.urlopen(request, timeout=30).close()
    keys = ensure_dev_keys(systems.base / "keys")  # the benchmark's own, made by Systems
    return mint_token(keys.signing_key_path, keys.kid, READER, ttl_seconds=7200)


async def _snapshot_query(dsn: str) -> float:
    """The notifier's snapshot reads (shared.sql.changelog.snapshot_pages) of the namespace, alone."""
    async with aiopg.create_pool(dsn, minsize=1, maxsize=1) as pool:
        async with pool.acquire() as conn, conn.cursor() as cur:
            through, _ = await changelog_sql.head(cur)
        started = time.monotonic()
        async for _ in changelog_sql.snapshot_pages(pool, [f"{NAMESPACE}.*"], through):
            pass
        return round(time.monotonic() - started, 2)


def run(systems: Systems, meter: Meter, keys: int, seconds: float) -> dict[str, Any]:
    """Every scale row of the table: load, reads, writes, listing, snapshot (DynConfig, then etcd)."""
    namespace_keys = keys // 10
    results: dict[str, Any] = {}
    sets = [KeySet(BIG_PREFIX, keys), KeySet(NAMESPACE, namespace_keys, pad=6)]
    results[f"scale: load {keys:,} + {namespace_keys:,} keys"] = load(systems, meter, sets)
    for target in ("dynconfig", "etcd"):
        results.setdefault(f"reads, {CONCURRENCY} clients, random over {keys:,} stored keys", {})[target] = reads(
            systems, meter, target, seconds, keys
        )
    hot = READ_KEYS  # the working set of the read run, in the same table
    for target in ("dynconfig", "etcd"):
        results.setdefault(f"reads, {CONCURRENCY} clients, {hot:,} of the {keys:,} keys", {})[target] = reads(
            systems, meter, target, seconds, hot
        )
    for target in ("dynconfig", "etcd"):
        results.setdefault(f"writes, {CONCURRENCY} clients, distinct keys, {keys:,} stored", {})[target] = http_load(
            systems, meter, target, "write", seconds, WRITE_PREFIX
        )
    pages = namespace_keys // PAGE
    outs = {target: listing(systems, meter, target, namespace_keys) for target in ("dynconfig", "etcd")}
    reader = listing(systems, meter, "dynconfig", namespace_keys, reader_token(systems))
    for number, which in ((1, "first"), (pages, "last")):
        row = results.setdefault(f"list page {number:,} of a {namespace_keys:,}-key namespace ({PAGE} a page)", {})
        for target, out in outs.items():
            row[target] = {"kind": "listing", **out[which], "cpu_percent": out["cpu_percent"]}
            if which == "last":
                row[target]["walk_seconds"] = out["walk_seconds"]
        row["dynconfig"]["non_admin"] = {**reader[which], "cpu_percent": reader["cpu_percent"]}
        if which == "last":
            row["dynconfig"]["non_admin"]["walk_seconds"] = reader["walk_seconds"]
    for target in ("dynconfig", "etcd"):
        results.setdefault(f"snapshot subscribe, {namespace_keys:,} keys", {})[target] = subscribe_snapshot(
            systems, meter, target, namespace_keys
        )
    return results


def cell(result: dict[str, Any]) -> str:
    """A scale row's table cell (``kind``: load, listing or snapshot)."""
    kind = result["kind"]
    if kind == "load":
        extra = (
            f" (+ vacuum {result['vacuum_seconds']:.0f} s, relay {result['relay_wait_seconds']:.0f} s)"
            if "vacuum_seconds" in result
            else ""
        )
        return f"{result['keys']:,} keys in {result['seconds']:.0f} s, {result['keys_per_s']:,}/s{extra}"
    if kind == "listing":
        walk = f", walk there {result['walk_seconds']:.1f} s" if "walk_seconds" in result else ""
        text = f"p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms{walk}"
        if "non_admin" in result:
            other = result["non_admin"]
            text = f"admin {text}; non-admin p50 {other['p50_ms']:.1f} ms, p99 {other['p99_ms']:.1f} ms"
        return text
    mib = {name: result[f"rss_{name}_kib"] / 1024 for name in ("before", "peak", "after")}
    query = f" (query {result['query_seconds']:.2f} s)" if "query_seconds" in result else ""
    return (
        f"{result['seconds']:.2f} s to the last frame{query}, server RSS {mib['before']:.0f} → "
        f"peak {mib['peak']:.0f} → {mib['after']:.0f} MiB"
    )
