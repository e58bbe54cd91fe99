"""Reading the change log: events after a revision, snapshots, and who may see an event.

Events are read here and encoded by :mod:`shared.events` only, for every consumer (notifier live
stream and replay, the HTTP poll fallback, snapshots).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiopg

from .acl import Acl, Audience, Principal, audience
from .crypto import Keyring
from .events import EventKind, change_event
from .sql import changelog as sql
from .timeutil import utcnow


@dataclass(frozen=True)
class ChangeEvent:
    """One relayed change, with its (encrypted) value and the key's current ACL."""

    revision: int
    key: str
    version: int
    event: EventKind
    at: datetime
    value_enc: bytes | None
    acl: Acl | None
    creator: str
    #: Who could read this version when it was written (None: written before that was recorded).
    version_readers: Audience | None = None

    def __post_init__(self) -> None:
        # Rows and pub/sub messages (shared.wire) carry the kind as text: hold it as the enum.
        object.__setattr__(self, "event", EventKind(self.event))

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> ChangeEvent:
        revision, key, version, event, at, value_enc, acl_read, acl_write, creator, read_entries, read_owner = row
        acl = Acl.from_columns(acl_read, acl_write)
        blob = bytes(value_enc) if value_enc is not None and event == EventKind.UPDATE else None
        return cls(revision, key, version, event, at, blob, acl, creator, stored_audience(read_entries, read_owner))

    def wire(self, keyring: Keyring) -> dict[str, Any]:
        """The event as clients see it (value decrypted)."""
        value = json.loads(keyring.decrypt(self.value_enc, aad=self.key)) if self.value_enc is not None else None
        return change_event(
            event=self.event, key=self.key, version=self.version, at=self.at, revision=self.revision, value=value
        )

    def readers(self, namespace_acls: Mapping[str, Acl]) -> Readers:
        """Who may see this event (admins aside): readers of the key today and, when known, readers
        of this version when it was written (SPEC §5); a reader must be in both."""
        today = audience("read", key=self.key, key_acl=self.acl, creator=self.creator, namespace_acls=namespace_acls)
        return (today,) if self.version_readers is None else (today, self.version_readers)


#: Audiences a reader must be admitted by, every one of them.
Readers = tuple[Audience, ...]


def stored_audience(read_entries: Sequence[str] | None, read_owner: str | None) -> Audience | None:
    """The readers of a version as stored in ``key_history`` (both NULL: not recorded)."""
    if read_owner is not None:
        return Audience(owner=read_owner)
    return Audience(tuple(read_entries)) if read_entries is not None else None


def may_read_event(who: Principal, readers: Readers) -> bool:
    """May ``who`` see an event whose key and version have ``readers``?"""
    return who.is_admin or all(rule.admits(who.username) for rule in readers)


def like_patterns(patterns: Iterable[str]) -> list[str] | None:
    """Watch patterns as SQL LIKE patterns; None when one of them is ``*`` (everything)."""
    out = []
    for pattern in patterns:
        if pattern == "*":
            return None
        escaped = sql.like_escape(pattern)
        out.append(escaped[:-1] + "%" if escaped.endswith("*") else escaped)
    return out


async def head(cur: aiopg.Cursor) -> tuple[int, int]:
    """(last assigned revision, newest revision pruned from the log)."""
    await cur.execute(sql.HEAD)
    row = await cur.fetchone()
    return (int(row[0]), int(row[1])) if row else (0, 0)


@dataclass(frozen=True)
class ResumePoint:
    """Where a client resuming after a revision stands (:func:`resume_point`)."""

    head: int
    pruned: int
    #: The revision is one of this log's (or its head, or where it was pruned).
    known: bool
    since: int

    @property
    def start_over(self) -> bool:
        """The log no longer holds every change after the revision (pruned), or never held the revision:
        past the head, or among the revisions a restore skipped (``sql.RESUME_POINT``), both revisions of
        the database a backup came from, whose changes the client saw and this log does not have."""
        return self.since < self.pruned or not self.known


async def resume_point(cur: aiopg.Cursor, since: int) -> ResumePoint:
    """Where a client resuming after revision ``since`` stands: must it start over?"""
    await cur.execute(sql.RESUME_POINT, {"since": since})
    row = await cur.fetchone()
    if row is None:
        return ResumePoint(0, 0, since == 0, since)
    return ResumePoint(int(row[0]), int(row[1]), bool(row[2]) and since <= int(row[0]), since)


async def events_after(
    cur: aiopg.Cursor, after: int, *, through: int | None = None, patterns: list[str] | None = None, limit: int = 500
) -> list[ChangeEvent]:
    """Relayed events with ``after < revision <= through`` for keys matching LIKE ``patterns``."""
    await cur.execute(
        sql.EVENTS_AFTER,
        {
            "after": after,
            "through": through if through is not None else 2**62,
            "all": patterns is None,
            "patterns": patterns or [],
            "limit": limit,
        },
    )
    return [ChangeEvent.from_row(row) for row in await cur.fetchall()]


#: Keys are printable ASCII (SPEC §3): a prefix's range ends before "\x7f", an exact key's before the
#: key followed by "\x01" (Postgres text cannot hold NUL).
_AFTER_PREFIX = "\x7f"
_AFTER_KEY = "\x01"


def key_ranges(patterns: Iterable[str]) -> tuple[list[str], list[str]]:
    """Watch patterns as disjoint byte ranges [low, high) of keys, in order: ``app.*`` → ``app.`` up to
    ``app.\x7f``, an exact key → that key alone, ``*`` → everything. Overlapping ones are merged."""
    ranges = sorted(
        (pattern[:-1], pattern[:-1] + _AFTER_PREFIX) if pattern.endswith("*") else (pattern, pattern + _AFTER_KEY)
        for pattern in patterns
    )
    merged: list[tuple[str, str]] = []
    for low, high in ranges:
        if merged and low <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], high))
        else:
            merged.append((low, high))
    return [low for low, _ in merged], [high for _, high in merged]


async def snapshot_pages(
    pool: aiopg.Pool, patterns: Iterable[str], through: int, page: int = 1000
) -> AsyncIterator[list[ChangeEvent]]:
    """The state at revision ``through``: the newest version (relayed by then) of every live key
    matching the watch ``patterns``, as ``update`` events in revision order, a page at a time.

    One query reads the snapshot's index, (revision, key), through the key ranges of the patterns;
    then each page's events are read on their own, so neither the memory nor a pooled connection is
    held for the values of the whole snapshot while the caller sends them. Revisions up to
    ``through`` never change, so the pages need no shared transaction; a key written or deleted
    meanwhile is still served as it was at ``through`` (its history row), one that passed its deadline
    meanwhile is left out."""
    lows, highs = key_ranges(patterns)
    now = utcnow()
    async with pool.acquire() as conn, conn.cursor() as cur:
        await cur.execute(sql.SNAPSHOT_INDEX, {"lows": lows, "highs": highs, "through": through, "now": now})
        index = await cur.fetchall()
    for start in range(0, len(index), page):
        keys = [key for _, key in index[start : start + page]]
        async with pool.acquire() as conn, conn.cursor() as cur:
            await cur.execute(sql.SNAPSHOT_PAGE, {"keys": keys, "through": through, "now": now})
            rows = await cur.fetchall()
        yield [ChangeEvent.from_row(row) for row in rows]
