"""Every namespace ACL, held in memory by each process that checks reads, kept current by NOTIFY.

The table is small (one row per namespace with an ACL), so a holder loads all of it. A change commits
with ``NOTIFY dynconfig_namespaces`` (api_server/domain/namespaces.py); every holder's listener reloads
when it hears one, and every ``RELOAD_SECONDS`` regardless. The writer's own process reloads before it
answers, so a read that starts after the answer sees the change there, and it answers only once its
own listener has heard the notice (:class:`shared.db.Hearing`): other processes were sent it at the
same COMMIT, so a read that starts on another replica after the answer finds it waiting there.

The copy is trusted only while the listener is connected, has loaded since it connected, and holds
no notice it has not loaded after: :meth:`NamespaceAcls.for_key` and :meth:`NamespaceAcls.all` read
Postgres instead meanwhile. So a read trusts the copy only if no change had reached this process when
the read began (the window left is the notice's own delivery, as for the value cache: README "How it
works"). A reload that started before another never replaces that one's result, so a slow reload
cannot bring back an ACL that a newer one has replaced.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import AsyncIterator

import aiopg
from aiohttp import web

from shared.db import DB_POOL, Hearing, Target, app_connector, listen, wait_notices
from shared.runtime.supervisor import SUPERVISOR, cancel_and_wait
from shared.security.acl import Acl
from shared.sql import namespaces as sql
from shared.validation import namespaces_of

RELOAD_SECONDS = 5.0
#: How long a writer waits for its own listener to hear its change before answering anyway.
HEARD_WAIT_SECONDS = 1.0


async def load_for_key(cur: aiopg.Cursor, key: str) -> dict[str, Acl]:
    """The ACLs of every namespace above ``key`` that has one, from Postgres."""
    return await sql.acls_of(cur, namespaces_of(key))


class NamespaceAcls:
    """This process's copy of the namespace ACLs (see the module docstring)."""

    def __init__(self, pool: aiopg.Pool) -> None:
        self._pool = pool
        #: The last copy loaded, whether or not it can be trusted now (the notifier fans out with it).
        self.last: dict[str, Acl] = {}
        self._loaded = False  # since the listener connected, and since the last notice it took
        self._conn: aiopg.Connection | None = None
        self._starts = itertools.count(1)
        self._installed = 0
        self._heard: set[str] = set()  # tokens of this process's writes its listener has taken in
        self._hearing = Hearing()

    @property
    def trusted(self) -> bool:
        conn = self._conn
        return self._loaded and conn is not None and conn.notifies.empty()

    async def reload(self, cur: aiopg.Cursor | None = None) -> dict[str, Acl]:
        """Load the table now (with ``cur``, else a pooled connection); the copy in force afterwards."""
        started = next(self._starts)
        if cur is None:
            async with self._pool.acquire() as conn, conn.cursor() as pooled:
                acls = await sql.all_acls(pooled)
        else:
            acls = await sql.all_acls(cur)
        if started > self._installed:
            self._installed, self.last = started, acls
        return self.last

    async def all(self, cur: aiopg.Cursor | None = None) -> dict[str, Acl]:
        """Every namespace ACL: the copy when trusted, else read from Postgres (with ``cur`` if given)."""
        if self.trusted:
            return self.last
        if cur is not None:
            return await sql.all_acls(cur)
        async with self._pool.acquire() as conn, conn.cursor() as pooled:
            return await sql.all_acls(pooled)

    async def for_key(self, key: str, cur: aiopg.Cursor | None = None, *, fresh: bool = False) -> dict[str, Acl]:
        """The ACLs of the namespaces above ``key``: from the copy when trusted (and not ``fresh``), else
        from Postgres."""
        if self.trusted and not fresh:
            acls = self.last
            return {ns: acls[ns] for ns in namespaces_of(key) if ns in acls}
        if cur is not None:
            return await load_for_key(cur, key)
        async with self._pool.acquire() as conn, conn.cursor() as pooled:
            return await load_for_key(pooled, key)

    @staticmethod
    def new_token() -> str:
        """A token for the NOTIFY of one write (its payload), to :meth:`wait_heard` for."""
        return uuid.uuid4().hex

    async def wait_heard(self, token: str, within: float = HEARD_WAIT_SECONDS) -> None:
        """Until this process's listener has heard the notice carrying ``token`` (at most ``within`` s;
        at once when it is not connected: then this process reads Postgres, not its copy)."""

        def heard() -> bool:
            return self._conn is None or token in self._heard

        await self._hearing.until(heard, within, "a namespace ACL change")
        self._heard.discard(token)

    async def run(self, listener: Target) -> None:
        """Listen for changes for ever (supervised)."""
        await listen(listener, [sql.CHANNEL], self._serve)

    async def _serve(self, conn: aiopg.Connection) -> None:
        self._conn = conn
        try:
            async with conn.cursor() as cur:
                while True:
                    await self.reload(cur)  # on the listener's own connection: a dead one is noticed
                    self._loaded = True
                    notices = await wait_notices(conn, RELOAD_SECONDS)  # drains the notices it takes
                    if notices:
                        self._loaded = False  # until the reload after them is in
                        if len(self._heard) > 10_000:  # tokens of writers that gave up waiting
                            self._heard.clear()
                        self._heard.update(notice.payload for notice in notices if notice.payload)
                        self._hearing.wake()
        finally:
            self._conn = None
            self._loaded = False
            self._hearing.wake()


NAMESPACE_ACLS = web.AppKey("namespace_acls", NamespaceAcls)


async def namespace_acls_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the process's copy of the namespace ACLs and its listener (needs ``pool_ctx``)."""
    acls = NamespaceAcls(app[DB_POOL])
    await acls.reload()
    app[NAMESPACE_ACLS] = acls
    listener = app_connector(app, "namespace-acls", dedicated=True)
    task = app[SUPERVISOR].spawn("namespace-acls", lambda: acls.run(listener))
    try:
        yield
    finally:
        await cancel_and_wait(task)
