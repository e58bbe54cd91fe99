"""Retention under load: table sizes stay flat once retention kicks in, and the audit chain verifies.

    python -m bench.retention [--minutes 10] [--retention 120] [--reads 100] [--writes 20] [--keys 200]

Starts its own Postgres and Redis (devtools.services) and real ``api_server`` and ``notifier``
processes on free loopback ports, with audit records and past versions kept ``--retention`` seconds
(``AUDIT_RETENTION_SECONDS``, ``HISTORY_RETENTION_SECONDS``; the pruner looks every 10 s) and the
change log 60 s (``CHANGELOG_RETENTION_SECONDS``, its minimum). Then for ``--minutes`` it sends a
steady load — ``--writes`` PUTs and ``--reads`` GETs a second over ``--keys`` keys, each read audited —
and every ``--sample`` seconds prints the rows and ``pg_total_relation_size`` of ``audit_log``,
``key_history`` and ``outbox``. At the end it runs ``dynconfig-audit verify`` (must pass),
and prints the bytes per row of each table as it stands and once packed (``VACUUM FULL``, which the
benchmark may do: it owns the database). Everything it starts is stopped by pid when it ends.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import subprocess
import sys
import time
from contextlib import ExitStack

import aiohttp
import psycopg2

from devtools.devkeys import mint_token
from devtools.services import free_port

from .stack import ROOT, start_process, stores

TABLES = ("audit_log", "key_history", "outbox")
#: (rows, bytes with indexes and TOAST) by table.
Sizes = dict[str, tuple[int, int]]


def sizes(url: str) -> Sizes:
    """(rows, bytes with indexes and TOAST) of each table."""
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        found = {}
        for table in TABLES:
            cur.execute(f"SELECT count(*), pg_total_relation_size('{table}') FROM {table}")
            rows, size = cur.fetchone()
            found[table] = (int(rows), int(size))
    conn.close()
    return found


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f}"


async def load(api: str, token: str, keys: int, reads: float, writes: float, until: float) -> dict[str, int]:
    """A steady load until ``until`` (monotonic): a PUT every 1/``writes`` s and a GET every 1/``reads``
    s, each on a random key; how many of each answered 2xx, and how many did not."""
    auth = {"Authorization": f"Bearer {token}"}
    counts = {"writes": 0, "reads": 0, "errors": 0}
    names = [f"bench.retention.k{i}" for i in range(keys)]
    async with aiohttp.ClientSession(headers=auth) as session:
        for key in names:  # every key exists before reads start
            async with session.put(f"{api}/keys/{key}", json={"value": 0}) as resp:
                assert resp.status in (200, 201), await resp.text()

        async def steady(rate: float, kind: str) -> None:
            step, due, i = 1 / rate, time.monotonic(), 0
            pending: set[asyncio.Task[None]] = set()

            async def one(key: str, n: int) -> None:
                if kind == "writes":
                    request = session.put(f"{api}/keys/{key}", json={"value": {"n": n, "pad": "x" * 64}})
                else:
                    request = session.get(f"{api}/keys/{key}")
                async with request as resp:
                    await resp.read()
                    counts[kind if resp.status < 300 else "errors"] += 1

            while due < until:
                i += 1
                task = asyncio.create_task(one(random.choice(names), i))
                pending.add(task)
                task.add_done_callback(pending.discard)
                due += step
                await asyncio.sleep(max(0.0, due - time.monotonic()))
            await asyncio.gather(*pending)

        await asyncio.gather(steady(writes, "writes"), steady(reads, "reads"))
    return counts


async def sample(url: str, every: float, until: float, started: float) -> list[tuple[float, Sizes]]:
    """The sizes now and every ``every`` seconds until ``until``, printed as they come."""
    rows: list[tuple[float, Sizes]] = []
    header = " | ".join(f"{t} rows | {t} MiB" for t in TABLES)
    print(f"| t (s) | {header} |", flush=True)
    print("|---:|" + "---:|" * (2 * len(TABLES)), flush=True)
    while True:
        now = time.monotonic()
        found = await asyncio.to_thread(sizes, url)
        rows.append((now - started, found))
        cells = " | ".join(f"{found[t][0]:,} | {_mib(found[t][1])}" for t in TABLES)
        print(f"| {now - started:.0f} | {cells} |", flush=True)
        if now + every > until + 1:
            return rows
        await asyncio.sleep(every - (time.monotonic() - now))


def per_row(url: str) -> None:
    """Bytes per row of each table as it stands, then packed (``VACUUM FULL``)."""
    before = sizes(url)
    conn = psycopg2.connect(url)
    conn.autocommit = True  # VACUUM runs outside a transaction
    try:
        with conn.cursor() as cur:
            for table in TABLES:
                cur.execute(f"VACUUM FULL {table}")
    finally:
        conn.close()
    after = sizes(url)
    for table in TABLES:
        (rows, size), (_, packed) = before[table], after[table]
        if rows:
            print(f"{table:12} {rows:>9,} rows  {size / rows:6.0f} B/row as it stands, {packed / rows:6.0f} packed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="how long the load runs")
    parser.add_argument("--retention", type=int, default=120, help="audit and history retention, seconds")
    parser.add_argument("--reads", type=float, default=100.0, help="GETs a second (one audit row each)")
    parser.add_argument("--writes", type=float, default=20.0, help="PUTs a second")
    parser.add_argument("--keys", type=int, default=200)
    parser.add_argument("--sample", type=float, default=30.0, help="seconds between size samples")
    args = parser.parse_args()
    with stores() as local, ExitStack() as running:
        pg, keys = local.pg, local.keys
        ports = {"api_server": free_port(), "notifier": free_port()}
        env = local.env(
            API_PORT=str(ports["api_server"]),
            NOTIFIER_PORT=str(ports["notifier"]),
            AUDIT_RETENTION_SECONDS=str(args.retention),
            HISTORY_RETENTION_SECONDS=str(args.retention),
            RETENTION_INTERVAL_SECONDS="10",
            CHANGELOG_RETENTION_SECONDS="60",
        )
        for module, port in ports.items():
            start_process(running, module, env, port)
        token = mint_token(keys.signing_key_path, keys.kid, "admin-user", ttl_seconds=int(args.minutes * 60) + 3600)
        print(
            f"retention {args.retention} s (audit, history), change log 60 s; load {args.writes:g} writes/s and "
            f"{args.reads:g} reads/s over {args.keys} keys for {args.minutes:g} min",
            flush=True,
        )

        async def run() -> dict[str, int]:
            started = time.monotonic()
            until = started + args.minutes * 60
            api = f"http://127.0.0.1:{ports['api_server']}"
            counts, _ = await asyncio.gather(
                load(api, token, args.keys, args.reads, args.writes, until), sample(pg.url, args.sample, until, started)
            )
            return counts

        counts = asyncio.run(run())
        print(f"answered: {counts['writes']:,} writes, {counts['reads']:,} reads, {counts['errors']:,} errors")
        done = subprocess.run(
            [sys.executable, "-m", "dynconfig_admin.audit", "verify"], env=env, cwd=ROOT, capture_output=True, text=True
        )
        print(f"verify (exit {done.returncode}): {done.stdout.strip() or done.stderr.strip()}")
        per_row(pg.url)
        if done.returncode != 0 or counts["errors"]:
            raise SystemExit(1)


if __name__ == "__main__":
    main()
