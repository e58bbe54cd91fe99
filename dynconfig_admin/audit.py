"""``dynconfig-audit`` (``python -m dynconfig_admin.audit``): check the tamper-evident audit trail, ship it
as JSON lines, or adopt rows written without a seal.

    dynconfig-audit verify [--json] [--checkpoint SEQ:MAC …] [--checkpoints FILE]
    dynconfig-audit stream [--after SEQ] [--follow]
    dynconfig-audit adopt --reason TEXT [--through-id ID]

It needs ``POSTGRES_URL``, and for ``verify`` and ``adopt`` the keys that seal the chain
(``ENCRYPTION_KEYS``, and ``AUDIT_HMAC_KEY`` when set); nothing else (no Redis, no JWKS). It never
migrates: run ``dynconfig-migrate`` first (it refuses a schema its release does not work with).
``verify`` exits 0 when the trail is intact, 1 naming the first thing wrong (shared/audit/verify.py
says what it checks), 2 when it cannot run. Checkpoints are the tokens every api_server logs
(``audit checkpoint SEQ:MAC``): give some you kept (or a file of such log lines) and ``verify`` also
catches the whole table put back as it was before they were taken. After retention removed old rows
(api_server/retention.py), ``verify`` starts from the newest sealed prune record and says so; a
checkpoint older than it is counted as pruned. ``stream`` writes every sealed row, its MAC
included, one JSON object per line to stdout, in chain order, for a log store.

``adopt`` is for rows without a seal written by a release before the audit chain during a rolling
upgrade (``verify`` reports them): once no such process runs, it seals a record into the chain that
vouches for them (their id range, count and digest, and ``--reason``), so ``verify`` passes again
and says how many rows were adopted and why. It adopts nothing while the trail is broken otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import aiopg

from shared.audit import adopt as auditadopt
from shared.audit.chain import AuditChain, Row
from shared.audit.verify import Checkpoint, sealed_pages, verify
from shared.db import check_schema, command_connector, connect_pool
from shared.runtime.process import run_command
from shared.settings import Settings
from shared.version import version_line

PROG = "dynconfig-audit"
#: Of OPTIONAL_PARTS (shared/settings.py), what each subcommand reads: the chain's keys to check seals.
USES = {
    "verify": frozenset({"ENCRYPTION_KEYS", "AUDIT_HMAC_KEY"}),
    "adopt": frozenset({"ENCRYPTION_KEYS", "AUDIT_HMAC_KEY"}),
    "stream": frozenset[str](),
}


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
        "detail": e.detail,
        "linkSeq": row.link.seq if row.link is not None else None,
        "linkSeal": row.link.seal.hex() if row.link is not None else None,
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


def _token(text: str) -> Checkpoint:
    found = Checkpoint.find_all(text)
    if len(found) != 1:
        raise argparse.ArgumentTypeError(f"not a checkpoint as logged (SEQ:MAC, e.g. 1234:9f86d081884c): {text!r}")
    return found[0]


def _token_file(path: str) -> list[Checkpoint]:
    try:
        return Checkpoint.find_all(Path(path).read_text(errors="replace"))
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot read {path}: {exc.strerror}") from None


async def _adopt(pool: aiopg.Pool, chain: AuditChain, args: argparse.Namespace) -> int:
    report = await verify(pool, chain)
    finding = report.finding
    if not report.adoptions or (finding is not None and (finding.kind != "unsealed" or (finding.row_id or 0) <= 0)):
        why = finding.detail if finding is not None else "the genesis is not sealed yet (start an api_server first)"
        print(f"not adopting: {why}")
        return 1
    after = report.adoptions[-1].adoption.through_id
    through = args.through_id if args.through_id is not None else await auditadopt.last_unsealed_id(pool)
    if through is None or through <= after:
        print(f"nothing to adopt: no row without a seal after id {after}")
        return 0
    seq, adoption = await auditadopt.adopt(pool, chain, after, through, args.reason)
    if seq is None:
        print("not adopting: another adoption was sealed meanwhile; run adopt again")
        return 1
    print(f"adopted {adoption.count} rows without a seal (ids {after + 1}–{through}) at seq {seq}: {args.reason}")
    report = await verify(pool, chain)
    print(report.summary())
    return 0 if report.ok else 1


async def _run(settings: Settings, args: argparse.Namespace) -> int:
    # ``stream`` writes rows with their MACs as they are: it needs no key (USES).
    chain = AuditChain.from_settings(settings) if args.command != "stream" else None
    checkpoints = (
        [*args.checkpoint, *(cp for found in args.checkpoints for cp in found)] if args.command == "verify" else []
    )
    target = command_connector(settings, "audit")
    pool = await connect_pool(target, wait_seconds=settings.startup_timeout_seconds, maxsize=2)
    try:
        await check_schema(pool)
        if args.command == "verify" and chain is not None:
            report = await verify(pool, chain, checkpoints)
            print(json.dumps(report.as_json()) if args.json else report.summary())
            return 0 if report.ok else 1
        if args.command == "adopt" and chain is not None:
            return await _adopt(pool, chain, args)
        await _stream(pool, args.after, args.follow, args.interval)
        return 0
    finally:
        pool.close()
        await pool.wait_closed()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--version", action="version", version=version_line("dynconfig-audit"))
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("verify", help="check the whole trail; exit 1 naming the first thing wrong")
    check.add_argument("--json", action="store_true", help="print the report as one JSON object")
    check.add_argument(
        "--checkpoint", action="append", default=[], type=_token, metavar="SEQ:MAC", help="a logged checkpoint"
    )
    check.add_argument(
        "--checkpoints",
        action="append",
        default=[],
        type=_token_file,
        metavar="FILE",
        help="a file of checkpoints, one per line, or of log lines holding them",
    )
    ship = commands.add_parser("stream", help="write sealed rows as JSON lines to stdout, in chain order")
    ship.add_argument("--after", type=int, default=0, metavar="SEQ", help="start after this seq (default: the first)")
    ship.add_argument("--follow", action="store_true", help="keep going: write new rows as they are sealed")
    ship.add_argument("--interval", type=float, default=1.0, metavar="S", help="with --follow, look every S s")
    take = commands.add_parser("adopt", help="vouch for rows a release before the chain wrote without a seal")
    take.add_argument("--reason", required=True, help="why these rows carry no seal (kept in the chain)")
    take.add_argument(
        "--through-id", type=int, metavar="ID", help="adopt rows up to this id (default: every one so far)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    run_command("audit", lambda settings: _run(settings, args), unreachable_status=2, uses=USES[args.command])


if __name__ == "__main__":
    main()
