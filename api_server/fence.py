"""The fence of the value cache: what Postgres says has changed, followed by every api_server, so
that no cached state older than a change this process has heard of is ever served, whatever Redis
holds (SPEC §7: a Redis that restarts from an older snapshot, or fails over to a replica that missed
the last writes, must not bring an old version back). The reasoning is in api_server/cache.py.

Every write statement NOTIFYs, at COMMIT, the keys it changed and their revisions
(``shared.sql.changelog.NOTIFY_CHANGES``); notices arrive in commit order, which is revision order,
and revisions have no gaps. The follower keeps:

- ``heard``: every change up to this revision is known here;
- for each key changed after the ``floor``, the revision of its newest change;
- the ``floor``: the ``heard`` of about ``WINDOW_SECONDS`` ago, moved up every ``FLOOR_STEP_SECONDS``,
  so memory holds a window of changes, not all of them (and at most ``MAX_TRACKED`` keys).

A state cached ``as_of`` a revision (it was the key's current state then) is current now if
``as_of >= floor`` and no change of the key after ``as_of`` has been heard. A notice that skips
revisions (a writer that sends none, such as the previous release's during a rolling upgrade), a
reconnect, and every ``POLL_SECONDS`` regardless, the follower reads what it missed from the outbox
(``CHANGES_AFTER``) on its own connection; if the outbox no longer holds it, the floor jumps to the
head. Until it has caught up, and when its last catch-up is older than ``STALE_SECONDS`` (a
connection that hangs), it trusts nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque

import aiopg

from shared.db import Hearing, Target, listen
from shared.sql import changelog as sql

log = logging.getLogger(__name__)

POLL_SECONDS = 1.0
STALE_SECONDS = 5.0
WINDOW_SECONDS = 30.0
FLOOR_STEP_SECONDS = 5.0
#: Past this many keys remembered, the floor jumps to ``heard`` (the cache is read again once).
MAX_TRACKED = 500_000
#: A catch-up reads at most this many changes; further behind, the floor jumps to the head instead.
CATCH_UP_LIMIT = 10_000


class CacheFence:
    """Follows the changes (see the module docstring); :meth:`admits` decides on a cached state."""

    def __init__(self) -> None:
        self._conn: aiopg.Connection | None = None
        self._caught_up_at = -1e9  # time.monotonic() of the last catch-up on the current connection
        self._started = False  # caught up once: later catch-ups read what was missed
        self.heard = 0
        self.floor = 0
        self._latest: dict[str, int] = {}  # key -> revision of its newest change heard, above the floor
        self._ahead: dict[int, int] = {}  # ranges heard past a gap: first revision -> last
        self._gap = asyncio.Event()
        self._hearing = Hearing()
        self._marks: deque[tuple[float, int]] = deque()  # (time, heard then), for moving the floor

    @property
    def trusted(self) -> bool:
        """Following: connected, caught up recently, and no revision missing below what it heard."""
        conn = self._conn
        return (
            conn is not None
            and not conn.closed
            and not self._ahead
            and time.monotonic() - self._caught_up_at < STALE_SECONDS
        )

    def admits(self, key: str, as_of: int) -> bool:
        """May a state of ``key`` known current at revision ``as_of`` be served now? Takes in the
        notices that have reached this process first."""
        self._take_notices()
        return self.trusted and as_of >= self.floor and self._latest.get(key, 0) <= as_of

    async def wait_heard(self, revision: int, within: float) -> None:
        """Until this follower has heard every change up to ``revision`` (at most ``within`` s; at once
        when it is not connected: then this process serves no hits, and other followers hear alone)."""

        def heard() -> bool:
            self._take_notices()
            return self._conn is None or self.heard >= revision

        await self._hearing.until(heard, within, f"revision {revision} by the cache fence (heard {self.heard})")

    async def run(self, listener: Target) -> None:
        """Follow the changes for ever (supervised; reconnects)."""
        await listen(listener, [sql.CHANGES_CHANNEL], self._serve)

    async def _serve(self, conn: aiopg.Connection) -> None:
        self._conn = conn
        try:
            async with conn.cursor() as cur:
                while True:
                    await self._catch_up(cur)
                    await self._follow(conn)
        finally:
            self._conn = None
            self._caught_up_at = -1e9
            self._wake()

    async def _follow(self, conn: aiopg.Connection) -> None:
        """Take notices until the next catch-up is due: after ``POLL_SECONDS``, or at once when a
        notice skipped revisions (whoever took it in)."""
        deadline = time.monotonic() + POLL_SECONDS
        while not self._ahead and (left := deadline - time.monotonic()) > 0:
            notice = asyncio.ensure_future(conn.notifies.get())
            gap = asyncio.ensure_future(self._gap.wait())
            try:
                await asyncio.wait((notice, gap), timeout=left, return_when=asyncio.FIRST_COMPLETED)
            finally:
                notice.cancel()
                gap.cancel()
            if notice.done() and not notice.cancelled():
                self._note(notice.result().payload)
            self._take_notices()
            self._wake()
        self._move_floor()

    async def _catch_up(self, cur: aiopg.Cursor) -> None:
        """Read what the notices did not bring, from the outbox: every change after ``heard``."""
        after = self.heard
        head, changes = await sql.changes_after(cur, after, CATCH_UP_LIMIT)
        if head < after:
            log.warning(
                "cache fence: the head went back from %d to %d (a database restored without `dynconfig-backup "
                "mark-restored`?): mark it, then restart the api_servers (deploy/README.md, 'Backup and restore')",
                after,
                head,
            )
        if not self._started or len(changes) != head - after:  # first start, pruned, or too far behind
            if self._started:
                log.info("cache fence: %d changes behind, not all in the outbox: cache read again", head - after)
            self._raise_floor(head)
        else:
            for revision, key in changes:
                self._record(key, revision)
        self._started = True
        self._heard_through(after + 1, head)
        self._take_notices()
        self._caught_up_at = time.monotonic()
        self._wake()

    def _take_notices(self) -> None:
        conn = self._conn
        if conn is None:
            return
        while not conn.notifies.empty():
            self._note(conn.notifies.get_nowait().payload)

    def _note(self, payload: str) -> None:
        words = payload.split(" ")
        revisions = [int(text) for text in words[::2]]
        for revision, key in zip(revisions, words[1::2], strict=True):
            self._record(key, revision)
        self._heard_through(min(revisions), max(revisions))

    def _record(self, key: str, revision: int) -> None:
        if revision > self.floor and revision > self._latest.get(key, 0):
            self._latest[key] = revision

    def _heard_through(self, first: int, last: int) -> None:
        """Revisions ``first`` to ``last`` are known: move ``heard`` on, or keep them past a gap."""
        if first > self.heard + 1:
            self._ahead[first] = max(last, self._ahead.get(first, 0))
            self._gap.set()
            return
        self.heard = max(self.heard, last)
        for start in sorted(self._ahead):  # ranges that join on now
            if start > self.heard + 1:
                break
            self.heard = max(self.heard, self._ahead.pop(start))
        if not self._ahead:
            self._gap.clear()

    def _raise_floor(self, revision: int) -> None:
        """Forget changes up to ``revision``: states cached as of an older one are read again."""
        self.floor = max(self.floor, revision)
        self._latest = {key: rev for key, rev in self._latest.items() if rev > self.floor}

    def _move_floor(self) -> None:
        now = time.monotonic()
        if not self._marks or now - self._marks[-1][0] >= FLOOR_STEP_SECONDS:
            self._marks.append((now, self.heard))
        floor = None
        while self._marks and now - self._marks[0][0] >= WINDOW_SECONDS:
            floor = self._marks.popleft()[1]
        if len(self._latest) > MAX_TRACKED:
            log.warning("cache fence: more than %d keys changed within the window; floor raised", MAX_TRACKED)
            floor = self.heard
        if floor is not None and floor > self.floor:
            self._raise_floor(floor)

    def _wake(self) -> None:
        """Wake the writers waiting in :meth:`wait_heard`."""
        self._hearing.wake()
