"""The tamper-evident audit trail (step 7): every audit row sealed with an HMAC chained over the row
before it, ``dynconfig-audit verify`` naming the first row altered, inserted, deleted or
reordered, and ``stream`` shipping rows as JSON lines.

Rows are written by real api_server apps into a private database; tampering is done with plain SQL
in a copy of it (``CREATE DATABASE … TEMPLATE``), and the verdict comes from the real command.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiopg
import psycopg2
import pytest
from support import ADMIN, drop_database, eventually, migrated_database, new_database, process_env

from devtools.services import PostgresServer
from shared.audit.chain import AuditChain
from shared.audit.verify import verify
from shared.settings import Settings, SettingsError

ROOT = Path(__file__).resolve().parents[2]
Token = Callable[..., str]


def audit_command(settings: Settings, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``python -m dynconfig_admin.audit ARGS`` with the api_server's environment for ``settings``."""
    return subprocess.run(
        [sys.executable, "-m", "dynconfig_admin.audit", *args],
        env=process_env(settings, **env),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def sql(url: str, statement: str, *args: Any) -> list[tuple[Any, ...]]:
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(statement, args)
        rows = cur.fetchall() if cur.description else []
    conn.close()
    return rows


async def write_traffic(make_client: Any, settings: Settings, token: Token, prefix: str, rounds: int = 3) -> None:
    """Every kind of audited operation, through a real api_server app: creates, patches, deletes,
    reads, denials, namespace ACL changes. Returns once the batched read records are stored."""
    client = await make_client(settings)
    admin = {"Authorization": f"Bearer {token(ADMIN)}"}
    stranger = {"Authorization": f"Bearer {token(f'{prefix}-stranger')}"}
    try:
        ns_acl = {"acls": {"read": ["*"], "write": []}}
        assert (await client.put(f"/namespaces/{prefix}", json=ns_acl, headers=admin)).status in (200, 201)
        for i in range(rounds):
            key = f"{prefix}.k{i}"
            body = {"value": i, "acls": {"read": [ADMIN], "write": [ADMIN]}}
            assert (await client.put(f"/keys/{key}", json=body, headers=admin)).status == 201
            assert (await client.get(f"/keys/{key}", headers=admin)).status == 200
            assert (await client.get(f"/keys/{key}", headers=stranger)).status == 403
            assert (await client.patch(f"/keys/{key}", json={"value": i + 1}, headers=admin)).status == 200
            assert (await client.delete(f"/keys/{key}", headers=admin)).status == 204
    finally:
        await client.close()  # flushes the batched read and denial records


@pytest.fixture
async def trail(
    pg_server: PostgresServer, make_client: Any, settings: Settings, token: Token, unique_prefix: str
) -> Any:
    """A private database holding a sealed trail of every kind of row (no connection left open, so it
    can serve as a template); yields its URL."""
    url = migrated_database(pg_server)
    await write_traffic(make_client, settings.replace(postgres_url=url), token, unique_prefix)
    yield url
    drop_database(pg_server, url)


def count(url: str) -> int:
    return int(sql(url, "SELECT count(*) FROM audit_log")[0][0])


# --- sealing -------------------------------------------------------------------------------------


async def test_every_kind_of_row_is_sealed_in_one_gapless_chain(trail: str, settings: Settings) -> None:
    rows = sql(trail, "SELECT seq, action, outcome, mac IS NOT NULL, mac_key FROM audit_log ORDER BY seq")
    kinds = {(action, outcome) for _, action, outcome, _, _ in rows}
    wanted = {"namespace.put", "create", "read", "patch", "delete"}
    assert {(action, "ok") for action in wanted} <= kinds, kinds
    assert ("read", "denied") in kinds, kinds
    assert [seq for seq, *_ in rows] == list(range(1, len(rows) + 1))
    assert all(sealed for *_, sealed, _ in rows)
    chain = AuditChain.from_settings(settings)
    assert {mac_key for *_, mac_key in rows} == {chain.active_id}
    assert sql(trail, "SELECT seq FROM audit_chain") == [(len(rows),)]

    done = audit_command(settings.replace(postgres_url=trail), "verify")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"audit chain intact: {len(rows)} rows verified" in done.stdout


async def test_concurrent_appenders_in_two_processes_keep_one_chain(
    private_db: str, make_client: Any, settings: Settings, token: Token, unique_prefix: str
) -> None:
    """Two api_server apps (each with its own committer and read-record writer) and many concurrent
    writes and reads: the chain's head lock orders them all, with no gap and no fork."""
    custom = settings.replace(postgres_url=private_db)
    a, b = await make_client(custom), await make_client(custom)
    admin = {"Authorization": f"Bearer {token(ADMIN)}"}

    async def work(client: Any, i: int) -> None:
        key = f"{unique_prefix}.c{i % 7}"
        await client.put(f"/keys/{key}", json={"value": i}, headers=admin)
        await client.get(f"/keys/{key}", headers=admin)

    await asyncio.gather(*(work(a if i % 2 else b, i) for i in range(200)))
    await a.close()
    await b.close()
    assert count(private_db) >= 400
    async with aiopg.create_pool(private_db, maxsize=2) as pool:
        report = await verify(pool, AuditChain.from_settings(settings))
    assert report.ok, report.finding
    assert report.checked == count(private_db)


# --- tampering -----------------------------------------------------------------------------------

# Renumbering goes through negative numbers: seq is unique, checked row by row.
MAKE_ROOM_AT_3 = "UPDATE audit_log SET seq = -seq - 1 WHERE seq >= 3; UPDATE audit_log SET seq = -seq WHERE seq < 0"
CLOSE_GAP_AT_3 = "UPDATE audit_log SET seq = -seq + 1 WHERE seq >= 4; UPDATE audit_log SET seq = -seq WHERE seq < 0"
SWAP_3_AND_4 = (
    "UPDATE audit_log SET seq = -seq WHERE seq IN (3, 4);"
    "UPDATE audit_log SET seq = CASE seq WHEN -3 THEN 4 ELSE 3 END WHERE seq IN (-3, -4)"
)
FORGE_AT_3 = (
    "INSERT INTO audit_log (at, actor, action, key, outcome, seq, mac, mac_key)"
    " SELECT now(), 'mallory', 'read', 'x', 'ok', 3, decode(repeat('ab', 32), 'hex'), mac_key"
    " FROM audit_log WHERE seq = 1"
)
UNSEALED = "INSERT INTO audit_log (at, actor, action, key, outcome) VALUES (now(), 'mallory', 'read', 'x', 'ok')"
DROP_LAST = "DELETE FROM audit_log WHERE seq = (SELECT max(seq) FROM audit_log)"

#: (what is done, the SQL, the kind verify must report, the seq it must name)
TAMPERING = [
    ("a row's actor rewritten", "UPDATE audit_log SET actor = 'mallory' WHERE seq = 3", "altered", 3),
    ("a row's time moved", "UPDATE audit_log SET at = at - interval '1 day' WHERE seq = 5", "altered", 5),
    ("an unsealed row added", UNSEALED, "unsealed", None),
    ("a forged row slipped in at seq 3, later rows renumbered", MAKE_ROOM_AT_3 + ";" + FORGE_AT_3, "inserted", 3),
    ("row 3 deleted", "DELETE FROM audit_log WHERE seq = 3", "deleted", 3),
    ("row 3 deleted, later rows renumbered", "DELETE FROM audit_log WHERE seq = 3;" + CLOSE_GAP_AT_3, "deleted", 3),
    ("rows 3 and 4 swapped", SWAP_3_AND_4, "reordered", 3),
    ("the last row deleted", DROP_LAST, "truncated", None),
    (
        "the last row deleted and the head moved back",
        DROP_LAST + "; UPDATE audit_chain SET seq = seq - 1",
        "altered",
        None,
    ),
]


async def test_verify_names_the_first_altered_inserted_deleted_or_reordered_row(
    trail: str, pg_server: PostgresServer, settings: Settings
) -> None:
    failures = []
    for what, statement, kind, seq in TAMPERING:
        copy = new_database(pg_server, template=trail.rsplit("/", 1)[1])
        try:
            sql(copy, statement)
            done = audit_command(settings.replace(postgres_url=copy), "verify", "--json")
            report = json.loads(done.stdout) if done.stdout.strip() else {}
            finding = report.get("finding") or {}
            if done.returncode != 1 or finding.get("kind") != kind or (seq is not None and finding.get("seq") != seq):
                failures.append(f"{what}: exit {done.returncode}, {report or done.stderr}")
        finally:
            drop_database(pg_server, copy)
    assert not failures, "\n".join(failures)


async def test_verify_prints_one_line_naming_the_row(trail: str, pg_server: PostgresServer, settings: Settings) -> None:
    copy = new_database(pg_server, template=trail.rsplit("/", 1)[1])
    try:
        (row_id,) = sql(copy, "UPDATE audit_log SET key = 'other' WHERE seq = 4 RETURNING id")[0]
        done = audit_command(settings.replace(postgres_url=copy), "verify")
    finally:
        drop_database(pg_server, copy)
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout.startswith(f"audit chain BROKEN (altered): seq 4 (id {row_id},"), done.stdout
    assert done.stdout.count("\n") == 1


# --- keys ----------------------------------------------------------------------------------------


def _hmac_keyring(*ids: str) -> str:
    return ",".join(f"{i}:{base64.b64encode(i.encode().ljust(32, b'.')).decode()}" for i in ids)


async def test_rotating_the_audit_key_keeps_the_trail_verifiable(
    private_db: str, make_client: Any, settings: Settings, token: Token, unique_prefix: str
) -> None:
    """Rows sealed by the key derived from ENCRYPTION_KEYS, then by AUDIT_HMAC_KEY a1, then by a2 (a1
    kept): all verify. Dropping a1 makes verify name the first row sealed with it."""
    base = settings.replace(postgres_url=private_db)
    await write_traffic(make_client, base, token, unique_prefix, rounds=1)
    for ids in (["a1"], ["a2", "a1"]):
        env = {**process_env(base), "AUDIT_HMAC_KEY": _hmac_keyring(*ids)}
        keyed = base.replace(audit_hmac_keys=Settings.from_env(env).audit_hmac_keys)
        await write_traffic(make_client, keyed, token, f"{unique_prefix}{ids[0]}", rounds=1)
    key_ids = [k for (k,) in sql(private_db, "SELECT DISTINCT mac_key FROM audit_log")]
    assert sorted(key_ids) == ["a1", "a2", AuditChain.from_settings(settings).active_id]

    ok = audit_command(base, "verify", AUDIT_HMAC_KEY=_hmac_keyring("a2", "a1"))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    (first_a1,) = sql(private_db, "SELECT min(seq) FROM audit_log WHERE mac_key = 'a1'")[0]
    dropped = audit_command(base, "verify", "--json", AUDIT_HMAC_KEY=_hmac_keyring("a2"))
    assert dropped.returncode == 1, dropped.stdout + dropped.stderr
    finding = json.loads(dropped.stdout)["finding"]
    assert (finding["kind"], finding["seq"]) == ("unknown-key", first_a1), finding


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("a1", "must be id:base64key"),
        ("a1:not-base64!", "not valid base64"),
        ("a1:" + base64.b64encode(b"short").decode(), "at least 32 bytes"),
        ("enc.k1:" + base64.b64encode(bytes(32)).decode(), "may not start with 'enc.'"),
    ],
)
def test_a_bad_audit_key_is_refused_naming_the_setting(settings: Settings, value: str, problem: str) -> None:
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({**process_env(settings), "AUDIT_HMAC_KEY": value})
    assert refused.value.name == "AUDIT_HMAC_KEY"
    assert problem in str(refused.value)


def test_a_process_with_a_bad_audit_key_stops_with_one_line(settings: Settings) -> None:
    done = audit_command(settings, "verify", AUDIT_HMAC_KEY="nonsense")
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("audit: invalid setting AUDIT_HMAC_KEY: must be id:base64key"), line


# --- shipping ------------------------------------------------------------------------------------


async def test_stream_writes_every_sealed_row_as_a_json_line_in_chain_order(trail: str, settings: Settings) -> None:
    custom = settings.replace(postgres_url=trail)
    done = audit_command(custom, "stream")
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [line["seq"] for line in lines] == list(range(1, count(trail) + 1))
    fields = {"seq", "id", "at", "actor", "action", "key", "version", "outcome", "requestId", "mac", "macKey"}
    fields |= {"detail", "linkSeq", "linkSeal"}
    assert set(lines[0]) == fields
    assert all(len(bytes.fromhex(line["mac"])) == 32 for line in lines)
    stored = dict(sql(trail, "SELECT seq, encode(mac, 'hex') FROM audit_log"))
    assert all(stored[line["seq"]] == line["mac"] for line in lines)

    rest = audit_command(custom, "stream", "--after", "5")
    assert [json.loads(line)["seq"] for line in rest.stdout.splitlines()] == list(range(6, count(trail) + 1))


async def test_stream_follow_writes_rows_sealed_later(
    trail: str, make_client: Any, settings: Settings, token: Token, unique_prefix: str
) -> None:
    custom = settings.replace(postgres_url=trail)
    before = count(trail)
    follower = subprocess.Popen(  # noqa: ASYNC220 (read without blocking below)
        [
            sys.executable,
            "-m",
            "dynconfig_admin.audit",
            "stream",
            "--follow",
            "--interval",
            "0.2",
            "--after",
            str(before),
        ],
        env=process_env(custom),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        await write_traffic(make_client, custom, token, f"{unique_prefix}-later", rounds=1)
        after = count(trail)
        seen: list[int] = []
        assert follower.stdout is not None
        os.set_blocking(follower.stdout.fileno(), False)

        def streamed() -> bool:
            while len(seen) < after - before and (line := follower.stdout.readline()):
                seen.append(json.loads(line)["seq"])
            return len(seen) >= after - before

        await eventually(streamed, 10, lambda: f"{after - before} rows streamed; so far {seen}")
        assert seen == list(range(before + 1, after + 1))
    finally:
        follower.terminate()
        follower.wait(10)
        if follower.stdout is not None:
            follower.stdout.close()
