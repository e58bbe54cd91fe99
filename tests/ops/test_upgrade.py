"""Upgrades (SPEC §1): one version, the schemas a release works with, and one-off commands that read
only the settings they use and never migrate. The rolling upgrade itself, old and new code side by
side under load, is tests/ops/test_version_skew.py; the migration command is tests/ops/test_migrate.py."""

from __future__ import annotations

import base64
import configparser
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import psycopg2
import pytest
import yaml
from support import ADMIN, WatchRecorder, process_env

from dynconfig_admin.migrate import migrate
from shared.migrations import MIGRATIONS, Migration
from shared.settings import Settings, SettingsError
from shared.version import SCHEMA_MAX, SCHEMA_MIN, VERSION

ROOT = Path(__file__).resolve().parents[2]
LAST = MIGRATIONS[-1].version
PROCESSES = ("api_server", "notifier", "expiry_worker")

#: What the next release may do to the schema while this release's processes still run: add-only
#: changes (shared/migrations.py), here one of each kind, on the tables this release writes.
NEXT_RELEASE = Migration(
    LAST + 1,
    "test: what the next release may add",
    """
    CREATE TABLE test_next_release (id bigserial PRIMARY KEY, note text);
    ALTER TABLE keys ADD COLUMN test_next_note text;
    ALTER TABLE key_history ADD COLUMN test_next_flag boolean NOT NULL DEFAULT false;
    ALTER TABLE outbox ADD COLUMN test_next_extra integer;
    ALTER TABLE audit_log ADD COLUMN test_next_detail jsonb;
    CREATE INDEX test_next_keys_by_modified ON keys (last_modified);
    """,
)


def minimal_env(**settings: str) -> dict[str, str]:
    """An environment with none of DynConfig's settings but ``settings``."""
    env = {name: os.environ[name] for name in ("PATH", "HOME", "LANG") if name in os.environ}
    return {**env, "LOG_LEVEL": "WARNING", **settings}


def run(module: str, *args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def keyring(settings: Settings) -> str:
    return ",".join(f"{kid}:{base64.b64encode(key).decode()}" for kid, key in settings.encryption_keys)


def sql(url: str, statement: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(statement, params)
        rows = cur.fetchall() if cur.description else []
    conn.close()
    return rows


# --- one version --------------------------------------------------------------------------------


def test_the_version_is_written_once_and_the_schema_range_holds_this_release() -> None:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    assert cfg["metadata"]["version"] == "attr: shared.version.VERSION"
    assert "dynconfig-migrate = dynconfig_admin.migrate:main" in cfg["options.entry_points"]["console_scripts"]
    assert SCHEMA_MIN <= LAST <= SCHEMA_MAX
    # The release's images in deploy/ are this version (an overlay pins its own with ``images:``).
    for path in (ROOT / "deploy" / "k8s" / "base").glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            for container in (doc or {}).get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
                if container["image"].startswith("dynconfig:"):
                    assert container["image"] == f"dynconfig:{VERSION}", f"{path.name}: {container['image']}"
    first_release = re.search(r"^## (\S+)", (ROOT / "CHANGELOG.md").read_text(), re.M)
    assert first_release is not None and first_release[1] == VERSION, "CHANGELOG.md's top section is not this version"


@pytest.mark.parametrize(
    "module",
    [
        *PROCESSES,
        "dynconfig_admin.migrate",
        "dynconfig_admin.audit",
        "dynconfig_admin.reencrypt",
        "dynconfig_client",
        "devtools.token",
        "devtools.up",
    ],
)
def test_every_command_says_its_version(module: str) -> None:
    done = run(module, "--version", env=minimal_env())  # no settings: --version needs none
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(rf"\S+ {re.escape(VERSION)}( \(database schema {SCHEMA_MIN}–{SCHEMA_MAX}\))?\n", done.stdout)


def test_no_runtime_module_imports_the_one_off_commands() -> None:
    # The commands (dynconfig_admin) use the runtime packages, never the other way round.
    code = (
        "import importlib, pkgutil, sys\n"
        f"for package in {(*PROCESSES, 'shared')!r}:\n"
        "    root = importlib.import_module(package)\n"
        "    for found in pkgutil.walk_packages(root.__path__, package + '.'):\n"
        "        if not found.name.endswith('__main__'):\n"
        "            importlib.import_module(found.name)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'dynconfig_admin'))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=minimal_env(), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout


# --- the schema range -----------------------------------------------------------------------------


@pytest.fixture
def at_8(empty_db: str) -> str:
    """A database as the release before this one left it (schema 8)."""
    migrate(empty_db, MIGRATIONS[:8])
    return empty_db


@pytest.mark.parametrize("process", PROCESSES)
def test_a_process_refuses_a_schema_older_than_its_release_needs(process: str, at_8: str, settings: Settings) -> None:
    done = run(process, env=process_env(settings, POSTGRES_URL=at_8), timeout=30)
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"{process}: cannot start: database schema is version 8, this release ({VERSION}) needs "
        f"{SCHEMA_MIN}–{SCHEMA_MAX}; run dynconfig-migrate first"
    ]
    assert sql(at_8, "SELECT max(version) FROM schema_migrations") == [(8,)], "the process migrated"


@pytest.mark.parametrize("process", PROCESSES)
def test_a_process_refuses_a_schema_newer_than_its_release_works_with(
    process: str, private_db: str, settings: Settings
) -> None:
    sql(private_db, "INSERT INTO schema_migrations (version, description) VALUES (%s, 'a contract')", SCHEMA_MAX + 1)
    done = run(process, env=process_env(settings, POSTGRES_URL=private_db), timeout=30)
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"{process}: cannot start: database schema is version {SCHEMA_MAX + 1}, newer than this release "
        f"({VERSION}) works with ({SCHEMA_MIN}–{SCHEMA_MAX}); deploy a newer release"
    ]


async def test_this_release_serves_on_the_next_releases_schema(
    private_db: str, spawn: Callable[..., Any], settings: Settings, token: Callable[..., str], unique_prefix: str
) -> None:
    """Expand, then contract: the next release's add-only migration runs before its pods roll out,
    while this release's pods still serve. Every path that writes (PUT with a TTL, PATCH, DELETE,
    expiry, namespace ACLs, audit) and every path that reads (GET, history, listing, watch replay
    and live events) works on it, and ``dynconfig-migrate`` of this release leaves it alone."""
    migrate(private_db, [*MIGRATIONS, NEXT_RELEASE])
    api = spawn("api_server", POSTGRES_URL=private_db)
    notifier = spawn("notifier", POSTGRES_URL=private_db)
    expiry = spawn("expiry_worker", POSTGRES_URL=private_db)
    admin = {"Authorization": f"Bearer {token(ADMIN)}"}
    key, short = f"{unique_prefix}.k", f"{unique_prefix}.short"
    async with aiohttp.ClientSession() as session:
        for proc in (api, notifier, expiry):
            async with session.get(f"{proc.url}/health") as resp:
                body = await resp.json()
            assert resp.status == 200 and body["version"] == VERSION, body
            assert body["checks"]["schema"] == NEXT_RELEASE.version, body
        ws_url = f"{notifier.url.replace('http', 'ws')}/watch"
        watcher = await WatchRecorder.open(session, ws_url, token(ADMIN), [f"{unique_prefix}.*"])
        try:
            ns = {"acls": {"read": ["*"], "write": [ADMIN]}}
            async with session.put(f"{api.url}/namespaces/{unique_prefix}", json=ns, headers=admin) as resp:
                assert resp.status in (200, 201), await resp.text()
            async with session.put(f"{api.url}/keys/{key}", json={"value": 1}, headers=admin) as resp:
                assert resp.status == 201, await resp.text()
            async with session.patch(f"{api.url}/keys/{key}", json={"value": 2}, headers=admin) as resp:
                assert resp.status == 200, await resp.text()
            async with session.get(f"{api.url}/keys/{key}", headers=admin) as resp:
                assert (await resp.json())["value"] == 2
            async with session.get(f"{api.url}/keys/{key}/history", headers=admin) as resp:
                assert [v["version"] for v in (await resp.json())["versions"]] == [2, 1]
            async with session.get(f"{api.url}/keys", params={"namespace": unique_prefix}, headers=admin) as resp:
                assert (await resp.json())["keys"] == [key]
            async with session.put(f"{api.url}/keys/{short}", json={"value": 0, "ttl": 1}, headers=admin) as resp:
                assert resp.status == 201, await resp.text()
            async with session.delete(f"{api.url}/keys/{key}", headers=admin) as resp:
                assert resp.status == 204
            wanted = [(key, "update", 1), (key, "update", 2), (short, "update", 1), (key, "delete", 3)]
            wanted.append((short, "expired", 2))
            assert await watcher.holds(lambda: len(watcher.events) >= len(wanted), 10), watcher.events
            assert sorted((e["key"], e["event"], e["version"]) for e in watcher.events) == sorted(wanted)
            revisions = [e["revision"] for e in watcher.events]
            assert revisions == sorted(set(revisions))
        finally:
            await watcher.close()
        replay = await WatchRecorder.open(session, ws_url, token(ADMIN), [f"{unique_prefix}.*"], since_version=0)
        try:
            assert await replay.holds(lambda: len(replay.events) >= len(wanted), 10), replay.events
            assert [e["revision"] for e in replay.events] == revisions
        finally:
            await replay.close()
    done = run("dynconfig_admin.audit", "verify", env=process_env(settings, POSTGRES_URL=private_db))
    assert done.returncode == 0, done.stdout + done.stderr
    again = run("dynconfig_admin.migrate", env=minimal_env(POSTGRES_URL=private_db))
    assert again.returncode == 0 and "nothing to apply" in again.stdout, again.stdout + again.stderr
    assert sql(private_db, "SELECT max(version) FROM schema_migrations") == [(NEXT_RELEASE.version,)]


# --- one-off commands: only the settings they use, never a migration ---------------------------------


@pytest.fixture
async def trail(private_db: str, make_client: Any, settings: Settings, token: Callable[..., str]) -> str:
    """A migrated private database with a few audited writes."""
    client = await make_client(settings.replace(postgres_url=private_db))
    try:
        admin = {"Authorization": f"Bearer {token(ADMIN)}"}
        for i in range(3):
            assert (await client.put(f"/keys/audit.k{i}", json={"value": i}, headers=admin)).status == 201
    finally:
        await client.close()
    return private_db


def test_audit_verify_needs_neither_redis_nor_the_jwks(trail: str, settings: Settings) -> None:
    env = minimal_env(POSTGRES_URL=trail, ENCRYPTION_KEYS=keyring(settings))
    done = run("dynconfig_admin.audit", "verify", "--json", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["ok"] is True


def test_audit_stream_needs_postgres_alone(trail: str) -> None:
    done = run("dynconfig_admin.audit", "stream", env=minimal_env(POSTGRES_URL=trail))
    assert done.returncode == 0, done.stderr
    assert sum(json.loads(line)["action"] == "create" for line in done.stdout.splitlines()) == 3


@pytest.mark.parametrize(("value", "problem"), [(None, "is required"), ("k1:" + "A" * 24, "must be 32 bytes")])
def test_audit_verify_still_stops_with_one_line_on_a_setting_it_uses(
    trail: str, value: str | None, problem: str
) -> None:
    env = minimal_env(POSTGRES_URL=trail, **({} if value is None else {"ENCRYPTION_KEYS": value}))
    done = run("dynconfig_admin.audit", "verify", env=env)
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("audit: invalid setting ENCRYPTION_KEYS") and problem in line, line


def test_audit_verify_never_migrates(empty_db: str, settings: Settings) -> None:
    done = run(
        "dynconfig_admin.audit", "verify", env=minimal_env(POSTGRES_URL=empty_db, ENCRYPTION_KEYS=keyring(settings))
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.strip().splitlines() == [
        f"audit: database has no DynConfig schema, this release ({VERSION}) needs {SCHEMA_MIN}–{SCHEMA_MAX}; "
        "run dynconfig-migrate first"
    ]
    assert sql(empty_db, "SELECT to_regclass('schema_migrations'), to_regclass('audit_log')") == [(None, None)]


def test_reencrypt_needs_no_jwks(trail: str, settings: Settings) -> None:
    env = minimal_env(POSTGRES_URL=trail, ENCRYPTION_KEYS=keyring(settings), REDIS_URL=settings.redis_url)
    done = run("dynconfig_admin.reencrypt", env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("re-encrypted "), done.stdout


def test_settings_read_only_the_parts_a_command_uses() -> None:
    env = {"POSTGRES_URL": "postgresql://u@db:5432/d", "REDIS_URL": "ftp://nonsense", "JWKS_URL": "nope"}
    settings = Settings.from_env(env, uses=frozenset())
    assert (settings.redis_url, settings.jwks_url, settings.encryption_keys) == ("", "", ())
    with pytest.raises(SettingsError, match="REDIS_URL"):
        Settings.from_env(env, uses=frozenset({"REDIS_URL"}))
    with pytest.raises(SettingsError, match="JWKS_URL"):
        Settings.from_env({**env, "REDIS_URL": "redis://r:6379/0"})  # a process uses everything
