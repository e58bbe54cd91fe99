"""``dynconfig-backup`` (``python -m dynconfig_admin.backup``): a backup of the database with PostgreSQL's own
tools, and the way back (deploy/README.md, "Backup and restore").

    dynconfig-backup dump FILE [--bindir DIR]
    dynconfig-backup restore FILE [--bindir DIR] [--skip-revisions N]
    dynconfig-backup mark-restored [--skip-revisions N]

It reads ``POSTGRES_URL`` only, and runs ``pg_dump``/``pg_restore`` of the server's major version or
newer (``--bindir``, else PATH, else the newest of Debian's /usr/lib/postgresql/*/bin).

``dump`` writes FILE (mode 0600) with ``pg_dump --format=custom`` from a snapshot it exports, and
FILE.json, the manifest, read in that same snapshot: the revision and the audit checkpoint the backup
holds, its schema version and counts, FILE's SHA-256, and the ids of the keys needed to read it. Ids
only: a backup never holds a key, and must never be stored beside one.

``restore`` checks FILE against its manifest, refuses a database that has any table, restores with
``pg_restore --single-transaction``, checks the result against the manifest, then does what
``mark-restored`` does.

``mark-restored`` alone is for a database restored by other means (a CloudNativePG recovery or
point-in-time restore, a manual ``pg_restore``), before any process starts on it. The database the
backup came from went on handing out revisions after the backup's head, and clients and the Redis
cache remember states as of them. So new changes skip ``N`` revisions (default a billion, the figure
commonly given to etcd's ``etcdutl snapshot restore --bump-revision``; it must exceed the changes made
after the backup): no revision is ever handed out twice, a client resuming from a skipped one is told ``reset``
and given a snapshot (shared/sql/changelog.py, ``resume_point``), and each api_server's cache fence starts
above every skipped revision, so no state Redis holds from the discarded changes is served
(api_server/fence.py) and Redis needs no flush.

Exit status: 0 done; 1 refused or failed (the line says why); 2 cannot run (a setting, Postgres
unreachable, a tool missing).
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import psycopg2
import psycopg2.extensions

from dynconfig_admin.backup_manifest import MANIFEST_FORMAT, Manifest, read_manifest
from shared.settings import SettingsError, parse_postgres_url
from shared.sql import backup as sql
from shared.version import version_line

PROG = "dynconfig-backup"
#: Revisions skipped after a restore unless told otherwise (see the module docstring).
SKIP_REVISIONS = 1_000_000_000
_APPLICATION = "dynconfig-backup"


class Refused(Exception):
    """The command will not, or could not, do what was asked (exit 1)."""


class CannotRun(Exception):
    """A setting, a tool or Postgres is missing (exit 2)."""


# --- Postgres and its tools ------------------------------------------------------------------------


class Database:
    """``POSTGRES_URL`` as this command uses it: a psycopg2 connection, and the conninfo and
    environment that hand it to pg_dump/pg_restore without putting the password on a command line."""

    def __init__(self, url: str) -> None:
        params = psycopg2.extensions.parse_dsn(url)
        self._password = params.pop("password", None)
        self.name = params.get("dbname", "")
        self.conninfo = psycopg2.extensions.make_dsn(**{**params, "application_name": _APPLICATION})

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "PGPASSWORD"}
        return {**env, "PGPASSWORD": self._password} if self._password else env

    def connect(self) -> Any:
        try:
            return psycopg2.connect(self.conninfo, password=self._password, connect_timeout=10)
        except psycopg2.OperationalError as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "connection failed"
            raise CannotRun(f"Postgres unreachable at POSTGRES_URL: {reason}") from None


def tool(name: str, bindir: str | None) -> str:
    """The path of PostgreSQL client program ``name``."""
    if bindir:
        path = Path(bindir) / name
        if not os.access(path, os.X_OK):
            raise CannotRun(f"--bindir {bindir}: no {name} there")
        return str(path)
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]))
    if versions:
        return versions[-1]
    raise CannotRun(
        f"{name} not found: install the PostgreSQL client tools (the server's major version or newer), or pass --bindir"
    )


def run_tool(cmd: list[str], db: Database, **kwargs: Any) -> None:
    done = subprocess.run(
        cmd, env=db.env(), stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False, **kwargs
    )
    if done.returncode != 0:
        detail = done.stderr.strip().splitlines()
        raise Refused(f"{Path(cmd[0]).name} failed with status {done.returncode}: {detail[-1] if detail else ''}")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def manifest_path(file: Path) -> Path:
    return file.with_name(file.name + ".json")


# --- the commands ----------------------------------------------------------------------------------


def dump(db: Database, file: Path, bindir: str | None) -> Manifest:
    """FILE and FILE.json from one snapshot (see the module docstring)."""
    pg_dump = tool("pg_dump", bindir)
    partial = file.with_name(file.name + ".partial")
    conn = db.connect()
    done = False
    try:
        conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
        with conn.cursor() as cur:
            snapshot = sql.export_snapshot(cur)
            taken_at = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
            facts = read_manifest(cur, taken_at, db.name)
            # The transaction stays open, so the snapshot does, until pg_dump has read everything.
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as out:
                cmd = [pg_dump, "--format=custom", f"--snapshot={snapshot}", "--no-password", "--dbname", db.conninfo]
                run_tool(cmd, db, stdout=out)
                out.flush()
                os.fsync(out.fileno())
        conn.rollback()
        done = True
    finally:
        conn.close()
        if not done:
            partial.unlink(missing_ok=True)
    os.replace(partial, file)
    manifest = dataclasses.replace(facts, file=file.name, bytes=file.stat().st_size, sha256=sha256_of(file))
    text = json.dumps(manifest.as_json(), indent=2) + "\n"
    target = manifest_path(file)
    target.with_name(target.name + ".partial").write_text(text)
    os.replace(target.with_name(target.name + ".partial"), target)
    return manifest


def restore(db: Database, file: Path, bindir: str | None, skip: int) -> tuple[Manifest, int, int]:
    """Restore FILE into the empty database; return its manifest and the revisions skipped (first, last)."""
    pg_restore = tool("pg_restore", bindir)
    try:
        manifest = Manifest.from_json(json.loads(manifest_path(file).read_text()))
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise Refused(f"no readable manifest {manifest_path(file)} beside {file}: {exc}") from None
    if manifest.format != MANIFEST_FORMAT:
        raise Refused(f"{manifest_path(file)}: manifest format {manifest.format}, this release reads {MANIFEST_FORMAT}")
    if sha256_of(file) != manifest.sha256:
        raise Refused(f"{file} is not the file its manifest describes (SHA-256 differs): damaged or replaced")
    conn = db.connect()
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            tables = sql.table_count(cur)
        if tables:
            raise Refused(
                f"database {db.name!r} has {tables} tables: restore into a new, empty database "
                "(createdb -O <user> <name>) and point POSTGRES_URL at it"
            )
        cmd = [
            pg_restore,
            "--exit-on-error",
            "--single-transaction",
            "--no-owner",
            "--no-privileges",
            "--no-password",
            "--dbname",
            db.conninfo,
            str(file),
        ]
        run_tool(cmd, db)
        with conn.cursor() as cur:
            found = read_manifest(cur, manifest.taken_at, manifest.database)
        if found.content() != manifest.content():
            raise Refused(
                f"the restored database does not hold what the manifest says: {found.content()} "
                f"(schema, revision, pruned, keys, versions, audit rows, checkpoint), expected "
                f"{manifest.content()}"
            )
    finally:
        conn.close()
    first, last = mark_restored(db, skip)
    return manifest, first, last


def mark_restored(db: Database, skip: int) -> tuple[int, int]:
    """Skip ``skip`` revisions; return the first and last skipped."""
    conn = db.connect()
    try:
        with conn, conn.cursor() as cur:
            others = sql.other_sessions(cur)
            if others:
                print(
                    f"{PROG}: warning: {others} other sessions are connected to {db.name!r}; stop every "
                    "DynConfig process before a restore, or its notifiers keep what they sent",
                    file=sys.stderr,
                )
            head, moved = sql.skip_revisions(cur, skip)
    finally:
        conn.close()
    return head + 1, moved


# --- the command line ------------------------------------------------------------------------------


def _report_keys(manifest: Manifest) -> str:
    return (
        "keys it needs (ids only: keep the keys in your secret store, never beside the backup): "
        f"ENCRYPTION_KEYS {', '.join(manifest.encryption_key_ids) or 'none'}; "
        f"AUDIT_HMAC_KEY {', '.join(manifest.audit_key_ids) or 'none'} (enc.* ids are derived from ENCRYPTION_KEYS)"
    )


def _skipped(first: int, last: int) -> str:
    return (
        f"revisions {first}–{last} skipped: new changes start at {last + 1}; a client resuming from one of them "
        "gets reset and a snapshot"
    )


def _run(args: argparse.Namespace, db: Database) -> None:
    if args.command == "mark-restored":
        print(_skipped(*mark_restored(db, args.skip_revisions)))
        return
    file = Path(args.file)
    if args.command == "dump":
        m = dump(db, file, args.bindir)
        print(
            f"backup of {m.database!r} at revision {m.revision}, audit checkpoint {m.audit_checkpoint}: {file} "
            f"({m.bytes} bytes, sha256 {m.sha256[:16]}…; {m.keys} keys, {m.versions} versions, {m.audit_rows} "
            f"audit rows), manifest {manifest_path(file)}"
        )
        print(_report_keys(m))
        return
    m, first, last = restore(db, file, args.bindir, args.skip_revisions)
    print(
        f"restored {file} (taken {m.taken_at} at revision {m.revision}) into {db.name!r}: {m.keys} keys, "
        f"{m.versions} versions, {m.audit_rows} audit rows"
    )
    print(_skipped(first, last))
    print(_report_keys(m))
    seq = m.audit_checkpoint.split(":")[0]
    print(
        f"next: start the processes, then check the trail: dynconfig-audit verify --checkpoint {m.audit_checkpoint} "
        f"(checkpoints logged before the restore with a seq above {seq} belong to the discarded changes: verify "
        "reports them as rolled-back)"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--version", action="version", version=version_line(PROG))
    commands = parser.add_subparsers(dest="command", required=True)
    take = commands.add_parser("dump", help="write FILE (pg_dump --format=custom) and its manifest FILE.json")
    back = commands.add_parser("restore", help="restore FILE into POSTGRES_URL, an empty database, and mark it")
    mark = commands.add_parser("mark-restored", help="skip the revisions a restored database may have handed out")
    for sub in (take, back):
        sub.add_argument("file", metavar="FILE")
        sub.add_argument("--bindir", metavar="DIR", help="where pg_dump and pg_restore are")
    for sub in (back, mark):
        sub.add_argument(
            "--skip-revisions",
            type=int,
            default=SKIP_REVISIONS,
            metavar="N",
            help=f"revisions to skip, more than were made after the backup (default {SKIP_REVISIONS})",
        )
    args = parser.parse_args(argv)
    if getattr(args, "skip_revisions", 1) < 1:
        parser.error("--skip-revisions must be at least 1")
    return args


def main(argv: list[str] | None = None) -> NoReturn:
    args = parse_args(argv)
    try:
        db = Database(parse_postgres_url(os.environ.get("POSTGRES_URL", "").strip() or _missing()))
        _run(args, db)
    except SettingsError as exc:
        print(f"{PROG}: invalid setting {exc}", file=sys.stderr)
        sys.exit(2)
    except CannotRun as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        sys.exit(2)
    except Refused as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        sys.exit(1)
    except psycopg2.Error as exc:
        print(
            f"{PROG}: Postgres: {str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}",
            file=sys.stderr,
        )
        sys.exit(1)
    sys.exit(0)


def _missing() -> NoReturn:
    raise SettingsError("POSTGRES_URL", "is required but not set")


if __name__ == "__main__":
    main()
