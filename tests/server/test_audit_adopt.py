"""Rows without a seal, and writes without an audit row (step 9, SPEC §8).

Rows written before the chain began (or by a release without it during a rolling upgrade) carry no
seal: the chain vouches for them as a set (an *adoption*: id range, count, digest), so an unsealed row
added later passes for nothing, whatever its id, and ``GET /audit`` says which rows nothing vouches
for. ``dynconfig-audit adopt`` records, with a reason, rows an older release wrote. ``verify`` also
finds a version of a key written without its audit row.

The databases here start as a release before the chain left them (migrations 1–7 and its rows), then
``dynconfig-migrate`` brings them to this release's schema and a real api_server app seals the genesis.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import psycopg2
import pytest
from support import ADMIN, drop_database, new_database
from test_audit_chain import audit_command, sql, write_traffic

from devtools.services import PostgresServer
from dynconfig_admin.migrate import migrate
from shared.migrations import MIGRATIONS
from shared.settings import Settings

Token = Callable[..., str]
#: How a release before the chain wrote an audit row (no seq, no seal).
UNSEALED_ROW = "INSERT INTO audit_log (id, at, actor, action, key, outcome) VALUES (%s, now(), %s, 'read', 'x', 'ok')"
#: A version written as a release before the audit existed might have: no audit row for it.
LEGACY_VERSION = (
    "INSERT INTO key_history (key, version, event, actor, at) VALUES ('legacy.k', 1, 'update', 'old', now())"
)


def report(done: Any) -> dict[str, Any]:
    return json.loads(done.stdout) if done.stdout.strip() else {"stderr": done.stderr}


def pre_chain_database(pg_server: PostgresServer) -> str:
    """A database as the release before the audit chain left it: migrations 1–7, audit rows 1–3 and 5
    (id 4 was used by a transaction that rolled back), and a version with no audit row."""
    url = new_database(pg_server)
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(
            "CREATE TABLE schema_migrations (version integer PRIMARY KEY, description text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for migration in MIGRATIONS[:7]:
            cur.execute(migration.sql)
            cur.execute(
                "INSERT INTO schema_migrations (version, description) VALUES (%s, %s)",
                (migration.version, migration.description),
            )
        for row_id in (1, 2, 3, 5):
            cur.execute(UNSEALED_ROW, (row_id, "old-timer"))
        cur.execute("SELECT setval('audit_log_id_seq', 5)")
        cur.execute(LEGACY_VERSION)
    conn.close()
    return url


@pytest.fixture
async def upgraded(
    pg_server: PostgresServer, make_client: Any, settings: Settings, token: Token, unique_prefix: str
) -> Any:
    """A pre-chain database taken over by this release, with traffic of every kind; yields its URL."""
    url = pre_chain_database(pg_server)
    migrate(url)
    await write_traffic(make_client, settings.replace(postgres_url=url), token, unique_prefix, rounds=2)
    yield url
    drop_database(pg_server, url)


def copy_of(pg_server: PostgresServer, url: str) -> str:
    return new_database(pg_server, template=url.rsplit("/", 1)[1])


async def test_an_upgraded_trail_verifies_with_its_rows_from_before_the_chain_adopted(
    upgraded: str, settings: Settings
) -> None:
    done = audit_command(settings.replace(postgres_url=upgraded), "verify", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    body = report(done)
    assert body["unsealedBeforeChain"] == 4 and body["unauditedBeforeChain"] == 1, body
    (genesis,) = body["adopted"]
    assert (genesis["afterId"], genesis["throughId"], genesis["count"]) == (0, 5, 4), genesis


@pytest.mark.parametrize(
    ("what", "statement", "kind"),
    [
        ("id -1", UNSEALED_ROW % (-1, "'mallory'"), "unsealed"),
        ("the free id 4, among rows from before the chain", UNSEALED_ROW % (4, "'mallory'"), "inserted"),
        (
            "a new id",
            "INSERT INTO audit_log (at, actor, action, outcome) VALUES (now(), 'mallory', 'read', 'ok')",
            "unsealed",
        ),
        (
            "a new id, legacy_through moved past it",
            "INSERT INTO audit_log (id, at, actor, action, outcome) VALUES (100000, now(), 'mallory', 'read', 'ok');"
            " UPDATE audit_chain SET legacy_through = 100000",
            "unsealed",
        ),
        ("a row from before the chain altered", "UPDATE audit_log SET actor = 'mallory' WHERE id = 2", "altered"),
        ("a row from before the chain deleted", "DELETE FROM audit_log WHERE id = 3", "deleted"),
    ],
)
async def test_an_unsealed_row_passes_for_nothing_whatever_its_id(
    upgraded: str, pg_server: PostgresServer, settings: Settings, what: str, statement: str, kind: str
) -> None:
    copy = copy_of(pg_server, upgraded)
    try:
        sql(copy, statement)
        done = audit_command(settings.replace(postgres_url=copy), "verify", "--json")
    finally:
        drop_database(pg_server, copy)
    assert done.returncode == 1, f"{what}: {done.stdout}{done.stderr}"
    assert report(done)["finding"]["kind"] == kind, f"{what}: {done.stdout}"


async def test_get_audit_marks_what_vouches_for_each_record(
    upgraded: str, make_client: Any, settings: Settings, token: Token
) -> None:
    """``seal``: ``chain`` (sealed when written), ``adopted`` (no seal, vouched for by an adoption),
    ``none`` (nothing vouches for it) — a row inserted with id -1 among them, and one whose id the
    attacker made look adopted by moving the head's ``adopted_through`` (its seal then fails)."""
    sql(upgraded, UNSEALED_ROW, -1, "mallory")
    sql(upgraded, UNSEALED_ROW, 1_000_000, "mallory2")
    client = await make_client(settings.replace(postgres_url=upgraded))
    try:
        admin = {"Authorization": f"Bearer {token(ADMIN)}"}
        body = await (await client.get("/audit", params={"limit": "1000"}, headers=admin)).json()
        seals = {r["id"]: r["seal"] for r in body["records"]}
        assert all(seals[i] == "adopted" for i in (1, 2, 3, 5)), seals
        assert seals[-1] == "none" and seals[1_000_000] == "none", seals
        assert {s for i, s in seals.items() if i not in (1, 2, 3, 5, -1, 1_000_000)} == {"chain"}, seals

        sql(upgraded, "UPDATE audit_chain SET adopted_through = 2000000")
        body = await (await client.get("/audit", params={"actor": "mallory2"}, headers=admin)).json()
        assert [r["seal"] for r in body["records"]] == ["none"], body
    finally:
        await client.close()


# --- writes without an audit row ------------------------------------------------------------------


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO key_history (key, version, event, actor, at) VALUES ('x.y', 1, 'update', 'mallory', now())",
        "INSERT INTO key_history (key, version, event, actor, at) VALUES ('x.y', 7, 'update', 'mallory', '2001-01-01')",
    ],
    ids=["now", "backdated"],
)
async def test_a_version_written_without_its_audit_row_is_found(
    upgraded: str, pg_server: PostgresServer, settings: Settings, statement: str
) -> None:
    copy = copy_of(pg_server, upgraded)
    try:
        sql(copy, statement)
        done = audit_command(settings.replace(postgres_url=copy), "verify", "--json")
    finally:
        drop_database(pg_server, copy)
    assert done.returncode == 1, done.stdout + done.stderr
    finding = report(done)["finding"]
    assert finding["kind"] == "unaudited-write" and "'x.y'" in finding["detail"], finding


async def test_a_write_whose_audit_row_was_deleted_is_found(
    upgraded: str, pg_server: PostgresServer, settings: Settings
) -> None:
    """Deleting it is found by the chain already; an unsealed copy put back in its place, by adoption."""
    copy = copy_of(pg_server, upgraded)
    try:
        ((key, version),) = sql(copy, "SELECT key, version FROM key_history WHERE key <> 'legacy.k' LIMIT 1")
        sql(copy, "DELETE FROM audit_log WHERE key = %s AND version = %s", key, version)
        done = audit_command(settings.replace(postgres_url=copy), "verify", "--json")
    finally:
        drop_database(pg_server, copy)
    assert done.returncode == 1 and report(done)["finding"]["kind"] in ("deleted", "unaudited-write"), done.stdout


# --- adopting rows a release before the chain wrote during a rolling upgrade ----------------------


async def test_rows_a_release_before_the_chain_wrote_are_adopted_with_a_reason(
    upgraded: str, make_client: Any, settings: Settings, token: Token, unique_prefix: str
) -> None:
    custom = settings.replace(postgres_url=upgraded)
    for _ in range(3):  # pods of the release before the chain, still running during the upgrade
        sql(
            upgraded,
            "INSERT INTO audit_log (at, actor, action, key, outcome) VALUES (now(), 'old-pod', 'read', 'k', 'ok')",
        )
    await write_traffic(make_client, custom, token, f"{unique_prefix}-beside", rounds=1)
    ids = [i for (i,) in sql(upgraded, "SELECT id FROM audit_log WHERE actor = 'old-pod' ORDER BY id")]

    broken = audit_command(custom, "verify", "--json")
    assert broken.returncode == 1, broken.stdout + broken.stderr
    finding = report(broken)["finding"]
    assert finding["kind"] == "unsealed" and "dynconfig-audit adopt" in finding["detail"], finding

    reason = "pods of the release before the chain, during the upgrade"
    adopted = audit_command(custom, "adopt", "--reason", reason)
    assert adopted.returncode == 0, adopted.stdout + adopted.stderr
    assert f"adopted 3 rows without a seal (ids 6–{ids[-1]})" in adopted.stdout, adopted.stdout

    done = audit_command(custom, "verify", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    body = report(done)
    assert [(a["count"], a["reason"]) for a in body["adopted"]][-1] == (3, reason), body
    assert f"3 {reason}" in body["summary"], body
    assert audit_command(custom, "adopt", "--reason", "again").stdout.startswith("nothing to adopt")

    client = await make_client(custom)
    try:
        admin = {"Authorization": f"Bearer {token(ADMIN)}"}
        body = await (await client.get("/audit", params={"actor": "old-pod"}, headers=admin)).json()
        assert [r["seal"] for r in body["records"]] == ["adopted"] * 3, body
    finally:
        await client.close()


async def test_adopt_refuses_while_the_trail_is_broken_otherwise(
    upgraded: str, pg_server: PostgresServer, settings: Settings
) -> None:
    copy = copy_of(pg_server, upgraded)
    try:
        sql(copy, "UPDATE audit_log SET actor = 'mallory' WHERE seq = 4")
        sql(copy, "INSERT INTO audit_log (at, actor, action, outcome) VALUES (now(), 'old-pod', 'read', 'ok')")
        done = audit_command(settings.replace(postgres_url=copy), "adopt", "--reason", "cover it up")
        unsealed = sql(copy, "SELECT count(*) FROM audit_log WHERE action = 'audit.adopt'")
    finally:
        drop_database(pg_server, copy)
    assert done.returncode == 1 and done.stdout.startswith("not adopting"), done.stdout + done.stderr
    assert unsealed == [(1,)]  # the genesis only
