"""``python -m api_server.audit``: check the tamper-evident audit trail, or ship it as JSON lines.

    python -m api_server.audit verify            # exit 0: intact; 1: the first bad row is named
    python -m api_server.audit stream [--after SEQ] [--follow]

Run it with the api_server's environment (``POSTGRES_URL``, ``ENCRYPTION_KEYS``, ``AUDIT_HMAC_KEY``).
``verify`` walks every sealed row in chain order (shared/auditchain.py) and reports the first one
altered, inserted, deleted or reordered, or rows cut off the end. ``stream`` writes every sealed row,
its MAC included, one JSON object per line to stdout, in chain order: ship them to a log store and the
copy there anchors the trail (a later ``stream --after`` continues where the last line left off).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

import aiopg

from shared.auditchain import AuditChain, Row, sealed_pages, verify
from shared.db import connect_pool, migrate
from shared.serve import run_command
from shared.settings import Settings

PROG = "python -m api_server.audit"


def line(row: Row) -> dict[str, Any]:
    """One row as a JSON line of ``stream``: the fields of ``GET /audit`` plus its place in the chain."""
    e = row.entry
    return {
        "seq": row.seq,
        "id": row.id,
        "at": e.at.isoformat(timespec="microseconds"),
        "actor": e.actor,
        "action": e.action,
        "key": e.key,
        "version": e.version,
        "outcome": e.outcome,
        "requestId": e.request_id,
        "mac": row.mac.hex() if row.mac is not None else None,
        "macKey": row.mac_key,
    }


async def _stream(pool: aiopg.Pool, after: int, follow: bool, interval: float) -> None:
    while True:
        async for rows in sealed_pages(pool, after):
            for row in rows:
                print(json.dumps(line(row), separators=(",", ":")), flush=False)
            if rows:
                after = rows[-1].seq or after
        sys.stdout.flush()
        if not follow:
            return
        await asyncio.sleep(interval)


async def _run(settings: Settings, args: argparse.Namespace) -> int:
    chain = AuditChain.from_settings(settings)
    pool = await connect_pool(settings.postgres_url, wait_seconds=settings.startup_timeout_seconds, maxsize=2)
    try:
        await migrate(pool)
        if args.command == "verify":
            report = await verify(pool, chain.keys)
            print(json.dumps(report.as_json()) if args.json else report.summary())
            return 0 if report.ok else 1
        await _stream(pool, args.after, args.follow, args.interval)
        return 0
    finally:
        pool.close()
        await pool.wait_closed()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0] if __doc__ else None)
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser(
        "verify", help="check every sealed row and the chain's head; exit 1 on the first bad row"
    )
    check.add_argument("--json", action="store_true", help="print the report as one JSON object")
    ship = commands.add_parser("stream", help="write sealed rows as JSON lines to stdout, in chain order")
    ship.add_argument("--after", type=int, default=0, metavar="SEQ", help="start after this seq (default: the first)")
    ship.add_argument("--follow", action="store_true", help="keep going: write new rows as they are sealed")
    ship.add_argument("--interval", type=float, default=1.0, metavar="S", help="with --follow, look every S s")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    run_command("audit", lambda settings: _run(settings, args), unreachable_status=2)


if __name__ == "__main__":
    main()
