"""The ``keyring`` check of ``/health`` (SPEC §1): can this process open the values in use?

A process whose ``ENCRYPTION_KEYS`` lacks the key that seals the values others write (a rollout in the
wrong order, a key dropped before ``reencrypt`` ran) would look healthy until a request needed one of
those values, and then fail it. So every process checks at start, and every ``KEYRING_CHECK_SECONDS``
whether or not a request needed a value, that

- every key id found on the current values of the keys changed most recently is in its keyring (the
  newest ``SAMPLE`` changes, found through the outbox's revision index: a cost that does not grow with
  the number of keys; when the outbox holds none, the first ``SAMPLE`` stored values);
- the newest value sealed by each of those ids really opens, so a wrong secret under the right id is
  caught too (a value that fails is retried on the next ones of its id, so one damaged row alone does
  not take every process out of rotation).

An extra old key in the keyring is fine. Until the first check has run, and while a check fails,
``status`` is not ``"ok"``: ``/health`` answers 503 naming the check, so such a process never becomes
ready. A value sealed by a missing key that no recent change touched is not seen here; ``reencrypt``
before dropping a key (deploy/README.md) keeps that from happening.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable

import aiopg
from aiohttp import web

from shared.db import CONNECTION_ERRORS, DB_POOL
from shared.runtime.supervisor import SUPERVISOR, Backoff, cancel_and_wait
from shared.security.crypto import HEAD_BYTES, DecryptionError, Keyring
from shared.settings import SETTINGS
from shared.sql import keyring as sql

log = logging.getLogger(__name__)

#: How many of the newest changes' values are looked at.
SAMPLE = 256
#: How many values of one key id are opened before the id counts as one this keyring cannot open.
TRIES = 3
#: How long start-up waits for the first check (it then goes on in the background).
FIRST_CHECK_WAIT_SECONDS = 5.0
NOT_CHECKED = "not checked yet"


class KeyringCheck:
    """Checks the keyring against the stored values; ``status`` is what ``/health`` shows."""

    def __init__(self, pool: aiopg.Pool, keyring: Keyring, period: float) -> None:
        self._pool = pool
        self._keyring = keyring
        self._period = period
        self.status = NOT_CHECKED
        self.attempted = asyncio.Event()  # the first check has run (or failed to reach Postgres)

    async def check(self) -> str:
        """Look at the values in use now; set and return ``status``."""
        async with self._pool.acquire() as conn, conn.cursor() as cur:
            heads = await sql.value_heads(cur, SAMPLE, HEAD_BYTES)
            by_id = _by_key_id(heads)
            to_open = [key for key_id, keys in by_id.items() if self._keyring.holds(key_id) for key in keys[:TRIES]]
            fetched = await sql.values(cur, to_open)
        tried = _by_key_id(fetched)  # by the id that sealed each now (it may have been rewritten since)
        opened = _by_key_id((key, blob) for key, blob in fetched if self._opens(key, blob))
        status = self._judge(by_id, tried.keys() - opened.keys(), len(heads))
        if status != self.status:
            if status == "ok":
                log.info("keyring check: the keyring opens the values in use")
            else:
                log.warning("keyring check: %s", status)
        self.status = status
        return status

    def _opens(self, key: str, blob: bytes) -> bool:
        try:
            self._keyring.decrypt(blob, aad=key)
        except DecryptionError:
            return False
        return True

    def _judge(self, by_id: dict[str, list[str]], unopened: set[str], sampled: int) -> str:
        """``"ok"``, or what is wrong: the ids in ``by_id`` (id -> keys) the keyring lacks, and those in
        ``unopened`` (none of the values tried opened: another secret under that id)."""
        problems = []
        for key_id, keys in sorted(by_id.items()):
            if not self._keyring.holds(key_id):
                problems.append(
                    f"cannot open values sealed with key {key_id!r} (not in ENCRYPTION_KEYS; "
                    f"{len(keys)} of the {sampled} newest values)"
                )
            elif key_id in unopened:
                problems.append(
                    f"cannot open values sealed with key {key_id!r} (they fail authentication: "
                    "ENCRYPTION_KEYS holds another secret under that id)"
                )
        return "; ".join(problems) or "ok"

    async def run(self) -> None:
        """Check now and every period, for ever (supervised); while Postgres cannot be reached, keep
        the last result and try again sooner."""
        backoff = Backoff()
        while True:
            try:
                await self.check()
                backoff.reset()
                delay = self._period
            except CONNECTION_ERRORS as exc:
                log.warning("keyring check: Postgres unavailable (%s); trying again", type(exc).__name__)
                delay = min(backoff.next(), self._period)
            finally:
                self.attempted.set()
            await asyncio.sleep(delay)


KEYRING_CHECK = web.AppKey("keyring_check", KeyringCheck)


def _by_key_id(values: Iterable[tuple[str, bytes]]) -> dict[str, list[str]]:
    """The keys of ``values`` (blobs or their heads), by the key id that sealed each, in order."""
    by_id: dict[str, list[str]] = {}
    for key, blob in values:
        try:
            by_id.setdefault(Keyring.key_id_of(blob), []).append(key)
        except (DecryptionError, UnicodeDecodeError):
            continue  # a damaged blob says nothing about the keyring
    return by_id


async def keyring_check_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx (after the pool): the check's loop under the process's supervisor; the process
    serves once the first check has run (or ``FIRST_CHECK_WAIT_SECONDS`` passed)."""
    check = KeyringCheck(app[DB_POOL], Keyring(app[SETTINGS].encryption_keys), app[SETTINGS].keyring_check_seconds)
    app[KEYRING_CHECK] = check
    task = app[SUPERVISOR].spawn("keyring-check", check.run)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(check.attempted.wait(), FIRST_CHECK_WAIT_SECONDS)
    try:
        yield
    finally:
        await cancel_and_wait(task)
