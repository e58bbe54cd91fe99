"""Backup and restore (deploy/README.md, "Backup and restore"): ``dynconfig-backup`` takes a backup
with ``pg_dump`` and restores it with ``pg_restore`` into a fresh database, and real processes started
on it serve the state of the backup, and only that, whatever Redis and the clients remember of the
changes made after it.

The story, on a private source database: keys with several versions, a delete, a TTL, a namespace ACL
and a key's own ACL, reads and a denial (audit rows); ``R_before`` is noted; the backup is taken (its
head is ``H``); more is written, cached in the session's Redis and audited (the last change at
``R_after > H``, a checkpoint of the audit chain after it). The backup is restored into a fresh
database, and a real api_server and notifier are started on it with the same Redis, unflushed.

Then: every key, version, history entry, namespace ACL and audit row of the backup is there, exactly;
``verify`` is intact against the backup's checkpoint and reports the later one as ``rolled-back``;
no state written after the backup is served from the cache, before or after new writes; and once
new writes have carried the head past ``R_after``, a watcher or a poller resuming from ``R_after``
(a revision of the discarded changes) is told ``reset`` and given a snapshot, while one resuming from
``R_before`` gets every change after it up to the backup, then the new ones, with no gap.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import psycopg2
import pytest
from support import ADMIN, WatchRecorder, process_env

from devtools.services import free_port
from dynconfig_admin.backup import SKIP_REVISIONS
from shared.audit.chain import Head
from shared.audit.verify import Checkpoint
from shared.settings import Settings
from shared.sql import changelog as changelog_sql

ROOT = Path(__file__).resolve().parents[2]
Token = Callable[..., str]
Json = dict[str, Any]

# The rows a backup must bring back exactly, read straight from a database (ordered, comparable).
TABLES = {
    "keys": "SELECT key, version, value_enc, ttl, expires_at, acl_read, acl_write, creator, deleted, revision"
    " FROM keys ORDER BY key",
    "key_history": "SELECT key, version, event, value_enc, actor, at, revision, read_entries, read_owner"
    " FROM key_history ORDER BY key, version",
    "namespaces": "SELECT namespace, acl_read, acl_write, updated_by FROM namespaces ORDER BY namespace",
    "audit_log": "SELECT id, seq, at, actor, action, key, version, outcome, request_id, mac, mac_key"
    " FROM audit_log ORDER BY id",
    "outbox": "SELECT revision, key, version, event FROM outbox ORDER BY revision, key",
}


def rows(url: str, statement: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(statement, args)
            return [tuple(bytes(v) if isinstance(v, memoryview) else v for v in row) for row in cur.fetchall()]
    finally:
        conn.close()


def snapshot(url: str) -> dict[str, list[tuple[Any, ...]]]:
    return {table: rows(url, statement) for table, statement in TABLES.items()}


def read_json(path: Path) -> Json:
    document: Json = json.loads(path.read_text())
    return document


def audit_head(url: str) -> Head:
    (row,) = rows(url, "SELECT seq, mac, sealed_seq, sealed_mac, seal, seal_key, adopted_through FROM audit_chain")
    return Head.from_db(row)


def command(settings: Settings, module: str, *args: str, postgres_url: str | None) -> subprocess.CompletedProcess[str]:
    """``python -m MODULE ARGS`` with a process's environment, pointed at ``postgres_url`` (None: unset)."""
    env = process_env(settings, POSTGRES_URL=postgres_url or "")
    if postgres_url is None:
        del env["POSTGRES_URL"]
    return subprocess.run(
        [sys.executable, "-m", module, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )


def damage(path: Path) -> None:
    with open(path, "ab") as f:
        f.write(b"\0")


class Rest:
    """Calls to a real api_server over HTTP, each as some user."""

    def __init__(self, session: aiohttp.ClientSession, url: str, token: Token) -> None:
        self.session, self.url, self.token = session, url, token

    async def call(self, method: str, path: str, user: str = ADMIN, **kwargs: Any) -> tuple[int, Json]:
        headers = {"Authorization": f"Bearer {self.token(user)}"}
        async with self.session.request(method, self.url + path, headers=headers, **kwargs) as resp:
            text = await resp.text()
            return resp.status, json.loads(text) if text else {}

    async def ok(self, method: str, path: str, user: str = ADMIN, **kwargs: Any) -> Json:
        status, body = await self.call(method, path, user, **kwargs)
        assert status in (200, 201, 204), f"{method} {path} as {user}: {status} {body}"
        return body


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def test_a_backup_restored_into_a_fresh_database_serves_its_state_and_only_its_state(
    settings: Settings,
    private_db: str,
    empty_db: str,
    make_client: Any,
    spawn: Any,
    http: aiohttp.ClientSession,
    token: Token,
    unique_prefix: str,
    tmp_path: Path,
) -> None:
    p = unique_prefix
    ns, reader, writer, stranger = f"{p}.team", f"{p}-reader", f"{p}-writer", f"{p}-stranger"
    a, b, t, c = f"{ns}.a", f"{p}.b", f"{p}.t", f"{p}.c"
    source = settings.replace(postgres_url=private_db)

    # --- before the backup: every kind of state, and audit rows of reads and a denial --------------
    client = await make_client(source)

    async def put(key: str, body: Json, user: str = ADMIN) -> Json:
        resp = await client.put(f"/keys/{key}", json=body, headers={"Authorization": f"Bearer {token(user)}"})
        assert resp.status in (200, 201), await resp.text()
        answer: Json = await resp.json()
        return answer

    async def get(path: str, user: str = ADMIN) -> tuple[int, Json]:
        resp = await client.get(path, headers={"Authorization": f"Bearer {token(user)}"})
        return resp.status, await resp.json()

    resp = await client.put(
        f"/namespaces/{ns}",
        json={"acls": {"read": [reader], "write": [writer]}},
        headers={"Authorization": f"Bearer {token()}"},
    )
    assert resp.status in (200, 201), await resp.text()
    await put(a, {"value": {"v": 1}}, writer)
    r_before = (await put(a, {"value": {"v": 2}}, writer))["revision"]
    await put(a, {"value": {"v": 3}}, writer)
    await put(b, {"value": "gone soon"})
    resp = await client.delete(f"/keys/{b}", headers={"Authorization": f"Bearer {token()}"})
    assert resp.status == 204, await resp.text()
    await put(t, {"value": "short-lived", "ttl": 3600})
    await put(c, {"value": [1, 2, 3], "acls": {"read": ["*"], "write": [ADMIN]}})
    assert (await get(f"/keys/{a}", reader))[0] == 200
    assert (await get(f"/keys/{a}", stranger))[0] == 403
    assert (await get(f"/keys/{c}", stranger))[0] == 200
    before: dict[str, tuple[int, Json]] = {}
    for key in (a, b, t, c):
        status, body = await get(f"/keys/{key}")
        before[key] = (status, {k: v for k, v in body.items() if k not in ("ttl", "revision")})
        before[f"{key}/history"] = await get(f"/keys/{key}/history")
    before["ns"] = await get(f"/namespaces/{ns}")
    await client.close()  # flushes the batched audit records of the reads: nothing writes any more

    backup = tmp_path / "dynconfig.dump"
    saved = snapshot(private_db)
    head = rows(private_db, "SELECT head FROM relay_state")[0][0]
    backup_checkpoint = Checkpoint.of(audit_head(private_db))
    assert r_before < head and saved["audit_log"], (r_before, head)

    # --- the backup, with the real tool --------------------------------------------------------------
    done = command(settings, "dynconfig_admin.backup", "dump", str(backup), postgres_url=private_db)
    assert done.returncode == 0, done.stdout + done.stderr
    manifest = read_json(backup.with_name(backup.name + ".json"))
    assert manifest["revision"] == head and manifest["auditCheckpoint"] == backup_checkpoint.token, manifest
    assert manifest["encryptionKeyIds"] == [kid for kid, _ in settings.encryption_keys], manifest
    assert backup.stat().st_size > 0 and str(head) in done.stdout, done.stdout

    # --- after the backup: changes the restore discards, cached in the same Redis ---------------------
    client = await make_client(source)
    lost = {"v": "written after the backup"}
    await put(a, {"value": lost}, writer)
    assert (await get(f"/keys/{a}", reader))[1]["value"] == lost  # cached now, as of its revision
    await put(c, {"value": "changed after the backup"})
    await put(f"{p}.n", {"value": "created after the backup"})
    resp = await client.put(
        f"/namespaces/{ns}",
        json={"acls": {"read": ["*"], "write": [writer]}},
        headers={"Authorization": f"Bearer {token()}"},
    )
    assert resp.status in (200, 201), await resp.text()
    r_after = (await put(a, {"value": lost}, writer))["revision"]
    assert (await get(f"/keys/{a}"))[1]["version"] == 5
    await client.close()
    later_checkpoint = Checkpoint.of(audit_head(private_db))
    assert r_after > head and later_checkpoint.seq > backup_checkpoint.seq

    # --- the restore into a fresh database, with the real tool -----------------------------------------
    done = command(settings, "dynconfig_admin.backup", "restore", str(backup), postgres_url=empty_db)
    assert done.returncode == 0, done.stdout + done.stderr
    api = spawn("api_server", POSTGRES_URL=empty_db)
    notifier = spawn("notifier", POSTGRES_URL=empty_db)
    rest = Rest(http, api.url, token)

    # Every key, version, history entry and namespace ACL of the backup, as the API serves them; and
    # nothing written after it, though Redis still holds those states (read twice: a miss, then a hit).
    for _ in range(2):
        for key in (a, b, t, c):
            status, body = await rest.call("GET", f"/keys/{key}")
            assert (status, {k: v for k, v in body.items() if k not in ("ttl", "revision")}) == before[key], (
                f"{key} after the restore: {status} {body}, in the backup: {before[key]}"
            )
            assert await rest.call("GET", f"/keys/{key}/history") == before[f"{key}/history"], key
        assert (await rest.call("GET", f"/keys/{p}.n"))[0] == 404
    assert await rest.call("GET", f"/namespaces/{ns}") == before["ns"]
    assert (await rest.call("GET", f"/keys/{a}", reader))[0] == 200
    assert (await rest.call("GET", f"/keys/{a}", stranger))[0] == 403
    status, body = await rest.call("GET", f"/keys/{t}")
    assert 3500 < body["ttl"] <= 3600, body

    # Every row of the backup, byte for byte (seals included); no row written after it.
    restored = snapshot(empty_db)
    for table in ("keys", "key_history", "namespaces", "outbox"):
        assert restored[table] == saved[table], table
    assert restored["audit_log"][: len(saved["audit_log"])] == saved["audit_log"]
    assert all(row[2] > saved["audit_log"][-1][2] for row in restored["audit_log"][len(saved["audit_log"]) :])
    records = (await rest.ok("GET", "/audit", params={"limit": "1000"}))["records"]
    assert {row[0] for row in saved["audit_log"]} <= {r["id"] for r in records}

    # The trail verifies, against the backup's checkpoint too; a checkpoint taken after the backup is
    # what it is: the chain was put back to an earlier state.
    done = command(
        settings, "dynconfig_admin.audit", "verify", "--checkpoint", backup_checkpoint.token, postgres_url=empty_db
    )
    assert done.returncode == 0 and "audit chain intact" in done.stdout, done.stdout + done.stderr
    done = command(
        settings, "dynconfig_admin.audit", "verify", "--checkpoint", later_checkpoint.token, postgres_url=empty_db
    )
    assert done.returncode == 1 and "rolled-back" in done.stdout, done.stdout + done.stderr

    # A poller from a revision of the discarded changes is told to start over, at once, from the head
    # the restored database resumes from; resuming from that head later is no reset.
    body = await rest.ok("GET", "/keys", params={"since_version": str(r_after), "namespace": p})
    assert body.get("reset") is True and body["events"] == [], body
    resumed_from = body["revision"]

    # --- new writes on the restored database ---------------------------------------------------------
    # The first writes ``a`` again: its version 4 again, a state Redis holds from before the restore
    # (with a newer version); the answer must be what a reader gets. Then enough writes to carry the
    # head past ``R_after``, were revisions handed out again from the backup's head.
    fresh = {"v": "written after the restore"}
    first = await rest.ok("PUT", f"/keys/{a}", writer, json={"value": fresh})
    assert first["version"] == 4, first
    for _ in range(2):
        status, body = await rest.call("GET", f"/keys/{a}", reader)
        assert (status, body.get("value"), body.get("version")) == (200, fresh, 4), body
    w = f"{p}.w"
    for i in range(r_after - head + 1):
        last = await rest.ok("PUT", f"/keys/{w}", json={"value": i})
    assert last["revision"] > r_after, (last, r_after)
    written = [("update", a, 4)] + [("update", w, version) for version in range(1, r_after - head + 2)]

    # A watcher or a poller resuming from R_after: reset, then a snapshot of the restored state.
    watch_url = f"{notifier.url}/watch"
    stale = await WatchRecorder.open(http, watch_url, token(), [f"{p}.*"], since_version=r_after)
    state = {a: (4, fresh), c: (1, [1, 2, 3]), t: (1, "short-lived"), w: (r_after - head + 1, r_after - head)}
    assert await stale.holds(lambda: len(stale.events) >= len(state), 10), stale.messages
    assert stale.messages[0]["event"] == "reset", stale.messages
    assert stale.messages[0]["revision"] >= last["revision"], stale.messages
    assert {e["key"]: (e["version"], e["value"]) for e in stale.events} == state, stale.messages
    assert all(e["event"] == "update" for e in stale.events), stale.messages
    await stale.close()
    body = await rest.ok("GET", "/keys", params={"since_version": str(r_after), "namespace": p})
    assert body.get("reset") is True and body["events"] == [], body
    body = await rest.ok("GET", "/keys", params={"since_version": str(resumed_from), "namespace": p, "limit": "1000"})
    assert "reset" not in body and [(e["key"], e["version"]) for e in body["events"]] == [
        (key, version) for _, key, version in written
    ], body

    # A watcher or a poller resuming from R_before: every change after it up to the backup, then the
    # new ones, in order, no reset, no gap.
    replayed = [(event, key, version) for revision, key, version, event in saved["outbox"] if revision > r_before]
    expected = replayed + written
    resumed = await WatchRecorder.open(http, watch_url, token(), [f"{p}.*"], since_version=r_before)
    assert await resumed.holds(lambda: len(resumed.events) >= len(expected), 10), resumed.messages
    await asyncio.sleep(0.3)  # nothing more may come
    assert [(e["event"], e["key"], e["version"]) for e in resumed.messages] == expected, resumed.messages
    revisions = [e["revision"] for e in resumed.events]
    assert revisions == sorted(set(revisions)), revisions
    assert max(revisions[: len(replayed)]) <= head < min(revisions[len(replayed) :]), (revisions, head)
    await resumed.close()
    polled = await rest.ok("GET", "/keys", params={"since_version": str(r_before), "namespace": p, "limit": "1000"})
    assert "reset" not in polled and [(e["event"], e["key"], e["version"]) for e in polled["events"]] == expected
    assert api.popen.poll() is None and notifier.popen.poll() is None


async def test_a_notifier_that_runs_across_a_marked_restore_resets_its_watchers(
    settings: Settings,
    private_db: str,
    make_client: Any,
    make_notifier: Any,
    http: aiohttp.ClientSession,
    token: Token,
    unique_prefix: str,
) -> None:
    # A notifier that never sees the head go back (Postgres came back restored and already marked,
    # SKIP_REVISIONS ahead) still finds that the log no longer holds what it sent, and resets.
    p = unique_prefix
    key, gone = f"{p}.k", f"{p}.gone"
    source = settings.replace(postgres_url=private_db)
    client = await make_client(source)
    notifier = await make_notifier(source)
    admin = {"Authorization": f"Bearer {token()}"}

    async def put(name: str, value: Any) -> int:
        resp = await client.put(f"/keys/{name}", json={"value": value}, headers=admin)
        assert resp.status in (200, 201), await resp.text()
        revision: int = (await resp.json())["revision"]
        return revision

    head = await put(key, "kept")
    watcher = await WatchRecorder.open(http, notifier.make_url("/watch"), token(), [f"{p}.*"])
    await put(key, "discarded")
    await put(gone, "discarded")
    assert await watcher.holds(lambda: len(watcher.events) >= 2, 10), watcher.messages

    # The database as a restore of a backup taken at ``head`` leaves it, marked at once.
    conn = psycopg2.connect(private_db)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT head FROM relay_state FOR UPDATE")
            cur.execute("DELETE FROM outbox WHERE revision > %s", (head,))
            cur.execute("DELETE FROM key_history WHERE revision > %s", (head,))
            cur.execute("DELETE FROM keys WHERE key = %s", (gone,))
            cur.execute(
                "UPDATE keys k SET version = h.version, value_enc = h.value_enc, revision = h.revision,"
                " last_modified = h.at FROM key_history h WHERE k.key = %s AND h.key = k.key AND h.version = 1",
                (key,),
            )
            cur.execute("UPDATE relay_state SET head = %s", (head,))
            cur.execute(changelog_sql.SKIP_REVISIONS, {"skip": SKIP_REVISIONS})
    finally:
        conn.close()

    assert await watcher.holds(lambda: any(m["event"] == "reset" for m in watcher.messages), 10), (
        f"the watcher got {watcher.messages[2:]} in 10 s after a restore under its notifier"
    )
    reset_at = next(i for i, m in enumerate(watcher.messages) if m["event"] == "reset")
    assert await watcher.holds(lambda: len(watcher.messages) > reset_at + 1, 10), watcher.messages
    snapshot_events = watcher.messages[reset_at + 1 :]
    assert [(e["event"], e["key"], e["version"], e["value"]) for e in snapshot_events] == [
        ("update", key, 1, "kept")
    ], watcher.messages
    after = await put(key, "after the restore")
    assert after > head + SKIP_REVISIONS, after
    assert await watcher.holds(lambda: watcher.events[-1]["revision"] == after, 10), watcher.messages
    await watcher.close()


async def test_the_command_refuses_what_would_do_harm_and_says_why_in_one_line(
    settings: Settings, private_db: str, empty_db: str, make_client: Any, tmp_path: Path
) -> None:
    await (await make_client(settings.replace(postgres_url=private_db))).close()  # a database in use
    backup = tmp_path / "b.dump"
    done = command(settings, "dynconfig_admin.backup", "dump", str(backup), postgres_url=private_db)
    assert done.returncode == 0, done.stderr
    assert backup.stat().st_mode & 0o077 == 0, oct(backup.stat().st_mode)  # never readable by others

    # Never over a database that has tables.
    done = command(settings, "dynconfig_admin.backup", "restore", str(backup), postgres_url=private_db)
    assert done.returncode == 1 and "restore into a new, empty database" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr

    # Never a file its manifest does not describe; nothing is restored.
    damage(backup)
    done = command(settings, "dynconfig_admin.backup", "restore", str(backup), postgres_url=empty_db)
    assert done.returncode == 1 and "SHA-256 differs" in done.stderr, done.stderr
    assert rows(empty_db, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == [(0,)]

    # Settings and Postgres: one line, status 2.
    done = command(settings, "dynconfig_admin.backup", "mark-restored", postgres_url=None)
    assert done.returncode == 2 and done.stderr.strip() == (
        "dynconfig-backup: invalid setting POSTGRES_URL: is required but not set"
    ), done.stderr
    done = command(
        settings, "dynconfig_admin.backup", "mark-restored", postgres_url=f"postgresql://x@127.0.0.1:{free_port()}/x"
    )
    assert done.returncode == 2 and "Postgres unreachable at POSTGRES_URL" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr

    # mark-restored with a session still connected: done, with a warning that names the risk.
    (before,) = rows(private_db, "SELECT head FROM relay_state")[0]
    other = psycopg2.connect(private_db)
    try:
        done = command(
            settings, "dynconfig_admin.backup", "mark-restored", "--skip-revisions", "5", postgres_url=private_db
        )
    finally:
        other.close()
    assert done.returncode == 0, done.stderr
    assert "other sessions are connected" in done.stderr, done.stderr
    assert f"revisions {before + 1}–{before + 5} skipped" in done.stdout, done.stdout
    assert rows(private_db, "SELECT head FROM relay_state") == [(before + 5,)]
