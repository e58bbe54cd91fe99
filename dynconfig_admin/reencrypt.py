"""``dynconfig-reencrypt`` (``python -m dynconfig_admin.reencrypt``): re-seal every stored value with the
active key of ENCRYPTION_KEYS.

Rotate by putting a new key first in ENCRYPTION_KEYS (old ids stay listed, so old values still
decrypt), rolling the processes, running this, and only then dropping the old key from the list.
Safe to run while the service serves, and to run twice. It needs ``POSTGRES_URL``,
``ENCRYPTION_KEYS`` and Redis (to drop cached copies), not the JWKS; it never migrates.
"""

from __future__ import annotations

import argparse
import logging

import aiopg
import redis.asyncio as aioredis

from api_server.cache import cache_key
from shared.db import check_schema, command_connector, connect_pool
from shared.redis import REDIS_ERRORS
from shared.runtime.process import run_command
from shared.security.crypto import Keyring
from shared.settings import Settings
from shared.sql import reencrypt as sql
from shared.version import version_line

log = logging.getLogger(__name__)
BATCH = 500
#: Of OPTIONAL_PARTS (shared/settings.py), what this command reads.
USES = frozenset({"ENCRYPTION_KEYS", "REDIS_URL"})


async def reencrypt(pool: aiopg.Pool, keyring: Keyring) -> tuple[int, list[str]]:
    """Re-seal all values not sealed by the active key; return (rows changed, current keys touched)."""
    active = keyring.active_id.encode()
    changed = 0
    touched: list[str] = []
    while True:
        async with pool.acquire() as conn, conn.cursor() as cur, cur.begin():
            current = await sql.lock_keys_to_reseal(cur, active, BATCH)
            for key, blob in current:
                await sql.update_key(cur, key, keyring.reseal(blob, aad=key))
                touched.append(key)
        changed += len(current)
        if len(current) < BATCH:
            break
    while True:
        async with pool.acquire() as conn, conn.cursor() as cur, cur.begin():
            past = await sql.lock_history_to_reseal(cur, active, BATCH)
            for key, version, blob in past:
                await sql.update_history(cur, key, version, keyring.reseal(blob, aad=key))
        changed += len(past)
        if len(past) < BATCH:
            break
    return changed, touched


async def _run(settings: Settings) -> int:
    keyring = Keyring(settings.encryption_keys)
    pool = await connect_pool(command_connector(settings, "reencrypt"), wait_seconds=settings.startup_timeout_seconds)
    try:
        await check_schema(pool)
        changed, touched = await reencrypt(pool, keyring)
    finally:
        pool.close()
        await pool.wait_closed()
    # Cached entries still hold the old ciphertext at the same version: drop them.
    client = aioredis.from_url(settings.redis_url, socket_connect_timeout=1.0, socket_timeout=2.0)
    try:
        for start in range(0, len(touched), BATCH):
            await client.delete(*(cache_key(key) for key in touched[start : start + BATCH]))
    except REDIS_ERRORS as exc:
        log.warning("could not clear cached values (%s); they expire within CACHE_TTL_SECONDS", exc)
    finally:
        await client.aclose()
    print(f"re-encrypted {changed} stored values with key {keyring.active_id!r}")
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="dynconfig-reencrypt", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--version", action="version", version=version_line("dynconfig-reencrypt"))
    parser.parse_args(argv)
    run_command("reencrypt", _run, unreachable_status=1, uses=USES)


if __name__ == "__main__":
    main()
