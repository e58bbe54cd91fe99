"""The ``keys`` table: the current state of every key."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import aiopg

from shared.changes.state import KeyState
from shared.security.acl import Acl

# Column order of every SELECT of a key row, as KeyState.from_row reads it.
KEY_COLUMNS = (
    "key, version, value_enc, ttl, expires_at, acl_read, acl_write, creator, deleted, created_at, last_modified, "
    "revision"
)

SELECT = f"SELECT {KEY_COLUMNS} FROM keys WHERE key = %(key)s"

# The rows, each with the head revision in the same snapshot: the revision as of which it is current
# (the value cache's ``as_of``, api_server/cache.py).
SELECT_MANY_WITH_HEAD = f"SELECT {KEY_COLUMNS}, (SELECT head FROM relay_state) FROM keys WHERE key = ANY(%(keys)s)"

# A batch's existing rows, locked in key order (every batch locks in the same order).
LOCK_MANY = f"SELECT {KEY_COLUMNS} FROM keys WHERE key = ANY(%(keys)s) ORDER BY key FOR UPDATE"

# The same without waiting: rows another transaction holds are left out (see EXISTING).
LOCK_MANY_FREE = LOCK_MANY + " SKIP LOCKED"

EXISTING = "SELECT key FROM keys WHERE key = ANY(%(keys)s)"

# Placeholders (version 0) a batch inserted for creates it then refused.
DROP_PLACEHOLDERS = "DELETE FROM keys WHERE key = ANY(%(keys)s) AND version = 0"

# Locks the rows of new keys a batch creates, inserting deleted placeholders (in key order); a row a
# concurrent writer inserted first is locked as it is. Read them with LOCK_MANY afterwards.
CLAIM_MANY = """
INSERT INTO keys (key, version, creator, deleted, created_at, last_modified)
SELECT k, 0, a, true, clock_timestamp(), clock_timestamp()
  FROM unnest(%(keys)s::text[], %(actors)s::text[]) AS u(k, a) ORDER BY k
ON CONFLICT (key) DO UPDATE SET version = keys.version WHERE false
"""

# Live keys in a namespace (or all). The keys of namespace ``ns`` are those that start with ``ns.`` or
# ``ns/``: in byte order ('.' 0x2E, '/' 0x2F, '0' 0x30) exactly the range [ns + '.', ns + '0'), which
# the index of migration 5 (COLLATE "C", byte order as Python compares strings) scans directly, so
# a page costs the same wherever the namespace sorts among all keys.
# A search narrows the range to a raw key prefix the same way, and may keep only the keys that hold
# %(contains)s (lower case) in their lower-cased name: a filter on the range's rows, so a page of a
# search reads up to the whole range (100,000 keys: bench/search.py).
_LIVE_IN_NAMESPACE = """
 WHERE NOT deleted AND (expires_at IS NULL OR expires_at > %(now)s)
   AND (%(all)s OR (key COLLATE "C" >= %(low)s AND key COLLATE "C" < %(high)s))
   AND (%(contains)s::text IS NULL OR strpos(lower(key), %(contains)s) > 0)
"""

# What a listing page reads of each key, as :class:`ListedKey` takes it (its access, then the rest).
_LISTED = f"""
SELECT key, acl_read, acl_write, creator, version, last_modified, ttl, expires_at
  FROM keys {_LIVE_IN_NAMESPACE}""".strip()

# One keyset page: the next %(limit)s live keys after %(after)s, in key order.
LIST_PAGE = f"""
{_LISTED}
   AND key COLLATE "C" > %(after)s
 ORDER BY key COLLATE "C"
 LIMIT %(limit)s
"""

#: Orders of a listing other than by name: the column (no ttl sorts as never expiring), the type its
#: value takes in a cursor. Each is a keyset on (column, key), so a page costs a sort of the range.
SORTED_BY = {
    "lastModified": ("last_modified", "timestamptz"),
    "version": ("version", "bigint"),
    "expiresAt": ("coalesce(expires_at, 'infinity'::timestamptz)", "timestamptz"),
}


def _sorted_page(column: str, kind: str, descending: bool) -> str:
    """LIST_PAGE in the order of ``column`` (then key), after the position (%(after_value)s, %(after)s)
    unless %(first)s."""
    direction, beyond = ("DESC", "<") if descending else ("ASC", ">")
    return f"""
{_LISTED}
   AND (%(first)s OR ({column}, key COLLATE "C") {beyond} (%(after_value)s::{kind}, %(after)s COLLATE "C"))
 ORDER BY {column} {direction}, key COLLATE "C" {direction}
 LIMIT %(limit)s
"""


#: (sort, descending) -> its page statement.
SORTED_PAGES = {
    (name, descending): _sorted_page(column, kind, descending)
    for name, (column, kind) in SORTED_BY.items()
    for descending in (False, True)
}

COUNT_LIVE = f"SELECT count(*) FROM keys {_LIVE_IN_NAMESPACE}"

# The live keys counted by what decides who may read them: their ACL, their creator and their parent
# namespace (the namespace ACL that governs a key depends on nothing else). One row per group, with
# one of its keys, so a non-admin's total takes one access check per group, not per key.
COUNT_LIVE_BY_ACCESS = f"""
SELECT min(key COLLATE "C"), acl_read, acl_write, creator, count(*) FROM keys {_LIVE_IN_NAMESPACE}
 GROUP BY substring(key from '^(.*)[./][^./]*$'), acl_read, acl_write, creator
"""


# --- access: the statements above, run, their rows read into types ---------------------------------


@dataclass(frozen=True)
class KeyAccess:
    """What decides who may read a key: its name, its own ACL and its creator."""

    key: str
    acl: Acl | None
    creator: str

    @classmethod
    def from_columns(cls, key: str, acl_read: list[str] | None, acl_write: list[str] | None, creator: str) -> KeyAccess:
        return cls(key, Acl.from_columns(acl_read, acl_write), creator)


@dataclass(frozen=True)
class ListedKey:
    """A key of a listing page: who may read it, and what the console shows beside its name."""

    access: KeyAccess
    version: int
    last_modified: datetime
    ttl: int | None
    expires_at: datetime | None

    @property
    def key(self) -> str:
        return self.access.key

    def sorted_by(self, name: str) -> str:
        """Its value in the order ``name`` (a key of SORTED_BY), as a cursor holds it and the page
        statement reads it back."""
        if name == "version":
            return str(self.version)
        moment = self.last_modified if name == "lastModified" else self.expires_at
        return "infinity" if moment is None else moment.isoformat()


@dataclass(frozen=True)
class Position:
    """Where a listing page starts: after ``key`` or, in another order than by name, after
    (``value``, ``key``) in the order ``sort`` (descending with ``descending``)."""

    key: str = ""
    sort: str = "name"
    descending: bool = False
    value: str | None = None

    def past(self, row: ListedKey) -> Position:
        """The position just past ``row``, in this order."""
        return replace(self, key=row.key, value=None if self.sort == "name" else row.sorted_by(self.sort))


#: Past every printable ASCII character: a raw prefix's keys are [prefix, prefix + this).
_AFTER_PREFIX = "\x7f"


@dataclass(frozen=True)
class LiveRange:
    """The live keys of one namespace (``namespace`` None: of all), as of ``now``; a search also names
    a raw key ``prefix`` they start with and a text they ``contain`` (either case)."""

    namespace: str | None
    now: datetime
    prefix: str | None = None
    contains: str | None = None

    def params(self) -> dict[str, Any]:
        ranges = []
        if self.namespace is not None:
            ranges.append((f"{self.namespace}.", f"{self.namespace}0"))
        if self.prefix is not None:
            ranges.append((self.prefix, self.prefix + _AFTER_PREFIX))
        return {
            "now": self.now,
            "all": not ranges,
            "low": max((low for low, _ in ranges), default=""),
            "high": min((high for _, high in ranges), default=""),
            "contains": self.contains.lower() if self.contains else None,
        }


async def get(cur: aiopg.Cursor, key: str) -> KeyState | None:
    """The row of ``key`` (a placeholder is version 0), or None."""
    await cur.execute(SELECT, {"key": key})
    row = await cur.fetchone()
    return KeyState.from_row(row) if row else None


async def get_many_with_head(cur: aiopg.Cursor, keys: list[str]) -> dict[str, tuple[KeyState, int]]:
    """The rows of ``keys`` that exist, each with the head revision it is current as of."""
    await cur.execute(SELECT_MANY_WITH_HEAD, {"keys": sorted(set(keys))})
    return {row[0]: (KeyState.from_row(row[:-1]), row[-1]) for row in await cur.fetchall()}


async def lock_many(cur: aiopg.Cursor, keys: list[str], *, wait: bool = True) -> dict[str, KeyState]:
    """Lock the existing rows of ``keys`` in key order; without ``wait``, rows another transaction
    holds are left out (:func:`existing` tells them from keys that have no row)."""
    await cur.execute(LOCK_MANY if wait else LOCK_MANY_FREE, {"keys": keys})
    return {row[0]: KeyState.from_row(row) for row in await cur.fetchall()}


async def existing(cur: aiopg.Cursor, keys: list[str]) -> set[str]:
    """Those of ``keys`` that have a row (without locking it)."""
    await cur.execute(EXISTING, {"keys": keys})
    return {key for (key,) in await cur.fetchall()}


async def claim_many(cur: aiopg.Cursor, keys: list[str], creators: list[str]) -> dict[str, KeyState]:
    """Insert placeholders for new ``keys`` (sorted) created by ``creators``, and lock every row of
    them, placeholder or not; the locked states by key."""
    await cur.execute(CLAIM_MANY, {"keys": keys, "actors": creators})
    return await lock_many(cur, keys)


async def drop_placeholders(cur: aiopg.Cursor, keys: list[str]) -> None:
    """Remove the placeholders (version 0) of ``keys`` a batch claimed and then did not write."""
    await cur.execute(DROP_PLACEHOLDERS, {"keys": keys})


async def count_live(cur: aiopg.Cursor, live: LiveRange) -> int:
    """How many live keys ``live`` holds."""
    await cur.execute(COUNT_LIVE, live.params())
    (total,) = await cur.fetchone()
    return int(total)


async def count_live_by_access(cur: aiopg.Cursor, live: LiveRange) -> list[tuple[KeyAccess, int]]:
    """The live keys of ``live`` by what decides who may read them: one key of each group, and its count."""
    await cur.execute(COUNT_LIVE_BY_ACCESS, live.params())
    return [(KeyAccess.from_columns(*row[:4]), int(row[4])) for row in await cur.fetchall()]


async def list_page(cur: aiopg.Cursor, live: LiveRange, after: Position, limit: int) -> list[ListedKey]:
    """The next ``limit`` live keys of ``live`` after ``after``, in its order."""
    params = {**live.params(), "after": after.key, "limit": limit}
    if after.sort == "name":
        await cur.execute(LIST_PAGE, params)
    else:
        first = after.value is None
        statement = SORTED_PAGES[(after.sort, after.descending)]
        await cur.execute(statement, {**params, "first": first, "after_value": None if first else after.value})
    return [ListedKey(KeyAccess.from_columns(*row[:4]), *row[4:]) for row in await cur.fetchall()]
