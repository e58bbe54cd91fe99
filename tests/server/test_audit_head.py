"""The audit chain's head (step 9, SPEC §8): sealed, so rows cut off the end are found even after the
head is moved back onto the last row left, and even once later writes have moved it on; checkpoints
of it leave the database (a log line and a metric of every api_server) and catch the whole table put
back as it was; ``AUDIT_HMAC_KEY`` once in force leaves derived keys no say; and a previous release
beside this one (which moves the head without sealing it) is reported for what it is.

Tampering is done in plain SQL, as someone who can write the database but holds no key would (or, for
``AUDIT_HMAC_KEY``, holds only ``ENCRYPTION_KEYS``), and the verdict comes from the real command.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import psycopg2
import pytest
import test_audit_chain
from support import ADMIN, drop_database, eventually, new_database, process_env
from test_audit_chain import audit_command, sql, write_traffic

from devtools.services import PostgresServer
from shared.audit.chain import Entry, derived_keys, seal
from shared.settings import Settings, SettingsError

Token = Callable[..., str]
trail = test_audit_chain.trail  # the fixture: a private database holding a sealed trail of every kind of row
CHECKPOINT_LINE = re.compile(r"audit checkpoint (\d+):([0-9a-f]{12})\b")


def report(done: Any) -> dict[str, Any]:
    return json.loads(done.stdout) if done.stdout.strip() else {"stderr": done.stderr}


def cut_to(url: str, n: int) -> None:
    """Delete every row after seq ``n`` and move the head back onto row ``n`` (SPEC §8's attack)."""
    sql(
        url,
        "DELETE FROM audit_log WHERE seq > %s;"
        " UPDATE audit_chain SET seq = %s, mac = (SELECT mac FROM audit_log WHERE seq = %s)",
        n,
        n,
        n,
    )


def head_seq(url: str) -> int:
    return int(sql(url, "SELECT seq FROM audit_chain")[0][0])


# --- the head is sealed ---------------------------------------------------------------------------


async def test_cutting_the_newest_rows_and_moving_the_head_back_is_caught(
    trail: str, pg_server: PostgresServer, settings: Settings
) -> None:
    for cut in (1, 5):
        copy = new_database(pg_server, template=trail.rsplit("/", 1)[1])
        try:
            cut_to(copy, head_seq(copy) - cut)
            done = audit_command(settings.replace(postgres_url=copy), "verify", "--json")
        finally:
            drop_database(pg_server, copy)
        assert done.returncode == 1, f"{cut} rows cut: {done.stdout}{done.stderr}"
        assert report(done)["finding"]["kind"] == "truncated", done.stdout


async def test_the_cut_stays_on_record_after_later_writes(
    private_db: str, make_client: Any, settings: Settings, token: Token, unique_prefix: str
) -> None:
    """Once rows were cut, the next batch records the head it found: writing on does not hide it."""
    custom = settings.replace(postgres_url=private_db)
    await write_traffic(make_client, custom, token, unique_prefix, rounds=2)
    n = head_seq(private_db) - 3
    cut_to(private_db, n)
    await write_traffic(make_client, custom, token, f"{unique_prefix}-later", rounds=1)

    done = audit_command(custom, "verify", "--json")
    assert done.returncode == 1, done.stdout + done.stderr
    finding = report(done)["finding"]
    assert finding["kind"] == "truncated" and finding["seq"] == n + 1, finding
    assert "cut off" in finding["detail"], finding


# --- checkpoints leave the database ---------------------------------------------------------------


async def test_every_api_server_sends_checkpoints_out_that_catch_the_table_put_back(
    private_db: str, spawn: Any, settings: Settings, token: Token, unique_prefix: str, tmp_path: Path
) -> None:
    """A real api_server logs ``audit checkpoint SEQ:MAC`` every AUDIT_CHECKPOINT_SECONDS and exports
    the same as gauges. The audit log is then put back, head and all, as it was before later rows:
    nothing in the database shows it, but ``verify --checkpoint`` (or a file of log lines) does."""
    custom = settings.replace(postgres_url=private_db)
    api = spawn("api_server", POSTGRES_URL=private_db, AUDIT_CHECKPOINT_SECONDS="1")
    admin = {"Authorization": f"Bearer {token(ADMIN)}"}
    async with aiohttp.ClientSession(api.url, headers=admin) as http:
        for i in range(3):
            async with http.put(f"/keys/{unique_prefix}.k{i}", json={"value": i}) as resp:
                assert resp.status == 201
        await asyncio.sleep(0.5)  # the batched read records of the PUTs' own checks, if any
        saved_seq = head_seq(private_db)
        with psycopg2.connect(private_db) as conn, conn.cursor() as cur:
            cur.execute("SELECT * FROM audit_chain")
            saved = dict(zip([c.name for c in cur.description], cur.fetchone(), strict=True))
        conn.close()
        for _ in range(20):  # reads only: the rows put back below are all there is to roll back
            async with http.get(f"/keys/{unique_prefix}.k0") as resp:
                assert resp.status == 200

        seen: list[tuple[int, str]] = []

        def checkpointed() -> bool:
            nonlocal seen
            seen = [(int(s), m) for s, m in CHECKPOINT_LINE.findall(api.log())]
            return any(seq > saved_seq + 10 for seq, _ in seen)

        await eventually(checkpointed, 15, lambda: f"a checkpoint after the reads: {api.log()}", interval=0.2)
        assert seen and max(seq for seq, _ in seen) > saved_seq + 10, f"no checkpoint after the reads: {api.log()}"
        async with http.get("/metrics") as resp:
            metrics = await resp.text()
    gauges = dict(re.findall(r"^(dynconfig_audit_checkpoint_(?:seq|mac48)) (\S+)$", metrics, re.M))
    exported = f"{int(float(gauges['dynconfig_audit_checkpoint_seq']))}:"
    exported += f"{int(float(gauges['dynconfig_audit_checkpoint_mac48'])):012x}"
    assert exported in {f"{s}:{m}" for s, m in CHECKPOINT_LINE.findall(api.log())}, (exported, seen)

    api.popen.send_signal(signal.SIGTERM)
    api.popen.wait(15)
    latest = max(seen)
    assert latest[0] <= head_seq(private_db)
    columns, values = ", ".join(saved), ", ".join(["%s"] * len(saved))
    restore = f"DELETE FROM audit_log WHERE seq > %s; UPDATE audit_chain SET ({columns}) = ROW({values})"
    sql(private_db, restore, saved_seq, *saved.values())

    assert audit_command(custom, "verify").returncode == 0  # consistent, as a restored backup would be
    token_text = f"{latest[0]}:{latest[1]}"
    done = audit_command(custom, "verify", "--json", "--checkpoint", token_text)
    assert done.returncode == 1, done.stdout + done.stderr
    assert report(done)["finding"]["kind"] == "rolled-back", done.stdout
    logged = tmp_path / "checkpoints.log"
    logged.write_text(api.log())
    assert audit_command(custom, "verify", "--checkpoints", str(logged)).returncode == 1
    early = min(seq for seq, _ in seen)
    kept = [f"{s}:{m}" for s, m in seen if s == early][:1]
    assert audit_command(custom, "verify", "--checkpoint", *kept).returncode == 0  # from before: still there


@pytest.mark.parametrize("value", ["0", "soon", "-5"])
def test_a_bad_checkpoint_period_is_refused_naming_the_setting(settings: Settings, value: str) -> None:
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({**process_env(settings), "AUDIT_CHECKPOINT_SECONDS": value})
    assert refused.value.name == "AUDIT_CHECKPOINT_SECONDS"


# --- AUDIT_HMAC_KEY, once in force, is the only key -----------------------------------------------


def _hmac_keyring(*ids: str) -> str:
    return ",".join(f"{i}:{base64.b64encode(i.encode().ljust(32, b'.')).decode()}" for i in ids)


def reseal_suffix(url: str, first: int, key_id: str, key: bytes) -> None:
    """Re-seal every row from seq ``first`` on with ``key`` (what someone holding it could do), then
    move the head onto the new last MAC."""
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT mac FROM audit_log WHERE seq = %s", (first - 1,))
        prev = bytes(cur.fetchone()[0])
        cur.execute(
            "SELECT seq, at, actor, action, key, version, outcome, request_id FROM audit_log"
            " WHERE seq >= %s ORDER BY seq",
            (first,),
        )
        for seq, *fields in cur.fetchall():
            prev = seal(key, prev, seq, Entry(*fields))
            cur.execute("UPDATE audit_log SET mac = %s, mac_key = %s WHERE seq = %s", (prev, key_id, seq))
        cur.execute("SELECT column_name FROM information_schema.columns WHERE table_name = 'audit_log'")
        if "link_seal" in {name for (name,) in cur.fetchall()}:  # rows re-sealed as plain ones
            cur.execute(
                "UPDATE audit_log SET detail = NULL, link_seq = NULL, link_seal = NULL WHERE seq >= %s", (first,)
            )
        cur.execute("UPDATE audit_chain SET seq = (SELECT max(seq) FROM audit_log), mac = %s", (prev,))
    conn.close()


async def test_rows_resealed_with_a_derived_key_after_audit_hmac_key_took_over_fail(
    private_db: str, make_client: Any, settings: Settings, token: Token, unique_prefix: str
) -> None:
    base = settings.replace(postgres_url=private_db)
    await write_traffic(make_client, base, token, unique_prefix, rounds=1)  # derived keys: still valid
    keyed = base.replace(
        audit_hmac_keys=Settings.from_env({**process_env(base), "AUDIT_HMAC_KEY": _hmac_keyring("a1")}).audit_hmac_keys
    )
    await write_traffic(make_client, keyed, token, f"{unique_prefix}a1", rounds=1)
    ok = audit_command(base, "verify", AUDIT_HMAC_KEY=_hmac_keyring("a1"))
    assert ok.returncode == 0, ok.stdout + ok.stderr

    ((first_a1,),) = sql(private_db, "SELECT min(seq) FROM audit_log WHERE mac_key = 'a1'")
    key_id, key = derived_keys(settings.encryption_keys)[0]
    reseal_suffix(private_db, first_a1 + 2, key_id, key)
    done = audit_command(base, "verify", "--json", AUDIT_HMAC_KEY=_hmac_keyring("a1"))
    assert done.returncode == 1, done.stdout + done.stderr
    finding = report(done)["finding"]
    assert (finding["kind"], finding["seq"]) == ("derived-key", first_a1 + 2), finding


async def test_a_trail_sealed_only_with_derived_keys_fails_where_audit_hmac_key_is_configured(
    trail: str, pg_server: PostgresServer, settings: Settings
) -> None:
    """Everything re-sealed with a derived key, head included (or never sealed with AUDIT_HMAC_KEY):
    a verifier holding AUDIT_HMAC_KEY requires the head to be sealed with it."""
    done = audit_command(settings.replace(postgres_url=trail), "verify", "--json", AUDIT_HMAC_KEY=_hmac_keyring("a1"))
    assert done.returncode == 1, done.stdout + done.stderr
    assert report(done)["finding"]["kind"] == "derived-key", done.stdout


# --- a previous release beside this one -----------------------------------------------------------

#: How the previous release writes a change (``git show main:shared/sql/writes.py``, step 8, as rendered):
#: key, history, outbox and audit row in one statement, the audit row sealed as today and the chain's
#: head moved, but not sealed.
PREVIOUS_RELEASE_WRITE = """
SELECT pg_notify('dynconfig_outbox', '');

WITH input AS (
    SELECT * FROM unnest(
        %(key)s::text[], %(version)s::bigint[], %(value_enc)s::bytea[], %(ttl)s::integer[],
        %(expires_at)s::timestamptz[], %(acl_read)s::jsonb[], %(acl_write)s::jsonb[], %(creator)s::text[],
        %(deleted)s::boolean[], %(created_at)s::timestamptz[], %(now)s::timestamptz[], %(event)s::text[],
        %(actor)s::text[], %(action)s::text[], %(request_id)s::text[], %(read_entries)s::jsonb[],
        %(read_owner)s::text[], %(seq)s::bigint[], %(mac)s::bytea[], %(mac_key)s::text[]
    ) WITH ORDINALITY AS input(key, version, value_enc, ttl, expires_at, acl_read, acl_write, creator, deleted,
                               created_at, now, event, actor, action, request_id, read_entries, read_owner, seq,
                               mac, mac_key, n)
), counter AS (
    UPDATE relay_state SET head = head + (SELECT count(*) FROM input) RETURNING head
), c AS (
    SELECT input.*, counter.head - (SELECT count(*) FROM input) + input.n AS revision FROM input CROSS JOIN counter
), changed AS (
    UPDATE keys k
       SET version = last.version, value_enc = last.value_enc, ttl = last.ttl, expires_at = last.expires_at,
           acl_read = CASE WHEN last.acl_read IS NULL THEN NULL
                      ELSE ARRAY(SELECT jsonb_array_elements_text(last.acl_read)) END,
           acl_write = CASE WHEN last.acl_write IS NULL THEN NULL
                       ELSE ARRAY(SELECT jsonb_array_elements_text(last.acl_write)) END,
           creator = last.creator, deleted = last.deleted, created_at = last.created_at, last_modified = last.now,
           revision = last.revision
      FROM (SELECT DISTINCT ON (key) * FROM c ORDER BY key, n DESC) AS last
     WHERE k.key = last.key
), history AS (
    INSERT INTO key_history (key, version, event, value_enc, actor, at, read_entries, read_owner, revision)
    SELECT key, version, event, value_enc, actor, now,
           CASE WHEN c.read_entries IS NULL THEN NULL ELSE ARRAY(SELECT jsonb_array_elements_text(c.read_entries)) END,
           read_owner, revision
      FROM c ORDER BY n
), outbox AS (
    INSERT INTO outbox (key, version, event, at, revision) SELECT key, version, event, now, revision FROM c ORDER BY n
), audit AS (
    INSERT INTO audit_log (at, actor, action, key, version, outcome, request_id, seq, mac, mac_key)
    SELECT now, actor, action, key, version, 'ok', request_id, seq, mac, mac_key FROM c ORDER BY n
), chain AS (
    UPDATE audit_chain SET seq = %(head_seq)s, mac = %(head_mac)s
)
SELECT key, version FROM c ORDER BY n
"""
PREVIOUS_RELEASE_HEAD = "SELECT seq, mac FROM audit_chain FOR UPDATE"


def previous_release_writes(url: str, settings: Settings, key: str) -> None:
    """A pod of the previous release patches ``key`` (its value unchanged), as its committer does:
    the chain's head locked, the audit row sealed after it, one statement."""
    key_id, mac_key = derived_keys(settings.encryption_keys)[0]
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(PREVIOUS_RELEASE_HEAD)
        seq, prev = cur.fetchone()
        cur.execute("SELECT version, value_enc, creator, created_at, now() FROM keys WHERE key = %s FOR UPDATE", (key,))
        version, value_enc, creator, created_at, now = cur.fetchone()
        mac = seal(mac_key, bytes(prev), seq + 1, Entry(now, "old-pod", "patch", key, version + 1, "ok", "old-rid"))
        change = {
            "key": key, "version": version + 1, "value_enc": value_enc, "ttl": None, "expires_at": None,
            "acl_read": None, "acl_write": None, "creator": creator, "deleted": False, "created_at": created_at,
            "now": now, "event": "update", "actor": "old-pod", "action": "patch", "request_id": "old-rid",
            "read_entries": None, "read_owner": creator, "seq": seq + 1, "mac": mac, "mac_key": key_id,
        }  # fmt: skip
        cur.execute(
            PREVIOUS_RELEASE_WRITE, {**{k: [v] for k, v in change.items()}, "head_seq": seq + 1, "head_mac": mac}
        )
    conn.close()


async def test_a_previous_release_beside_this_one_is_reported_not_taken_for_tampering(
    private_db: str, make_client: Any, settings: Settings, token: Token, unique_prefix: str
) -> None:
    custom = settings.replace(postgres_url=private_db)
    key = f"{unique_prefix}.shared"
    client = await make_client(custom)
    try:
        admin = {"Authorization": f"Bearer {token(ADMIN)}"}
        assert (await client.put(f"/keys/{key}", json={"value": 1}, headers=admin)).status == 201
    finally:
        await client.close()
    before = head_seq(private_db)
    for _ in range(3):
        previous_release_writes(private_db, settings, key)

    done = audit_command(custom, "verify", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    body = report(done)
    assert body["unsealedHead"] == {"fromSeq": before + 1, "throughSeq": before + 3}, body
    assert "appended by a process that does not seal it (the previous release" in body["summary"], body

    await write_traffic(make_client, custom, token, f"{unique_prefix}-new", rounds=1)  # seals it again
    previous_release_writes(private_db, settings, key)  # and old and new keep interleaving
    await write_traffic(make_client, custom, token, f"{unique_prefix}-newer", rounds=1)
    done = audit_command(custom, "verify", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    assert report(done)["unsealedHead"] is None, done.stdout
    versions = sql(private_db, "SELECT version FROM key_history WHERE key = %s ORDER BY version", key)
    assert versions == [(1,), (2,), (3,), (4,), (5,)]  # every version audited, by either release

    # A cut of the newest rows is still caught while old pods write beside new ones.
    cut_to(private_db, head_seq(private_db) - 2)
    previous_release_writes(private_db, settings, key)
    cut = audit_command(custom, "verify", "--json")
    assert cut.returncode == 1 and report(cut)["finding"]["kind"] == "truncated", cut.stdout
