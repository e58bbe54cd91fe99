"""The audit chain's own records: adoptions of rows that carry no seal, and the switch to ``AUDIT_HMAC_KEY``.

Rows without a seal have two honest origins: they were written before the chain began (migration 8;
``legacy_through`` is the last id then), or by a process of a release before the chain while a
rolling upgrade ran. Nothing in such a row proves it genuine, so the chain vouches for them as a set:
an *adoption* is a sealed row of the chain (action ``audit.adopt``) whose ``detail`` names an id range
(``afterId`` < id ≤ ``throughId``), how many unsealed rows it held and a digest of them
(:class:`SetDigest`); verification recomputes both, so a row added to (whatever its id), removed from
or altered in an adopted range is found, and an unsealed row outside every adopted range is reported.
Ranges follow each other from id 0, and the head's seal carries how far they reach
(``adopted_through``), so ``GET /audit`` can tell adopted rows from rows nobody vouches for.

The first adoption is the *genesis* (:func:`seal_genesis`): the rows written before the chain began,
plus the versions of keys written without an audit row by then (so a version written later without
one is found: SPEC §8, "a write without its audit row"). Every api_server seals it when it starts, if
no process has yet. Later ones are the operator's: ``dynconfig-audit adopt`` after a rolling upgrade
from a release without the chain (:func:`adopt`).

The genesis and the operator trust the rows as they find them then: nothing before a seal can prove
what happened before it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiopg

from shared.audit.chain import AuditChain, Entry, Head, canonical, is_derived
from shared.changes.kinds import AuditAction
from shared.runtime.supervisor import complete_then_cancel
from shared.sql import audit as sql
from shared.timeutil import utcnow

log = logging.getLogger(__name__)

SYSTEM_ACTOR = "system:audit"
GENESIS_REASON = "written before the audit chain began"
_PAGE = 5000


class SetDigest:
    """A count and a SHA-256 over items fed in a fixed order (each as a line of compact JSON)."""

    def __init__(self) -> None:
        self.count = 0
        self._hash = hashlib.sha256()

    def add(self, item: list[Any]) -> None:
        self.count += 1
        self._hash.update(json.dumps(item, separators=(",", ":")).encode() + b"\n")

    @property
    def digest(self) -> str:
        return self._hash.hexdigest()


@dataclass(frozen=True)
class Adoption:
    """What an adoption record vouches for (its ``detail``). ``unaudited`` and ``unaudited_digest``
    are the genesis's only: the versions written without an audit row before it."""

    after_id: int
    through_id: int
    count: int
    digest: str
    reason: str
    unaudited: int | None = None
    unaudited_digest: str | None = None

    def as_json(self) -> dict[str, Any]:
        body = {"afterId": self.after_id, "throughId": self.through_id, "count": self.count, "digest": self.digest}
        body["reason"] = self.reason
        if self.unaudited is not None:
            body.update(unaudited=self.unaudited, unauditedDigest=self.unaudited_digest)
        return body

    def detail(self) -> str:
        return json.dumps(self.as_json(), separators=(",", ":"))

    @classmethod
    def from_entry(cls, entry: Entry) -> Adoption | None:
        """The adoption ``entry`` records, or None when it is not one (or its detail is malformed)."""
        if entry.action != AuditAction.AUDIT_ADOPT or entry.detail is None:
            return None
        try:
            d = json.loads(entry.detail)
        except ValueError:
            return None
        return cls.from_json(d)

    @classmethod
    def from_json(cls, d: Any) -> Adoption | None:
        """An adoption from its JSON form (None when malformed)."""
        try:
            adoption = cls(
                d["afterId"],
                d["throughId"],
                d["count"],
                d["digest"],
                d["reason"],
                d.get("unaudited"),
                d.get("unauditedDigest"),
            )
        except (TypeError, KeyError, AttributeError):
            return None
        return adoption if isinstance(adoption.after_id, int) and isinstance(adoption.through_id, int) else None

    @property
    def genesis(self) -> bool:
        return self.unaudited is not None


@dataclass(frozen=True)
class Adopted:
    """An adoption and where the chain holds it: its record's seq and time (and id while the record is
    still there: a prune record restates the adoptions whose records it removes, shared/audit/prune.py)."""

    seq: int
    at: datetime
    adoption: Adoption
    row_id: int | None = None

    def as_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "at": self.at.isoformat(timespec="microseconds"), **self.adoption.as_json()}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Adopted | None:
        """An adoption as a prune record restates it (None when malformed)."""
        adoption = Adoption.from_json(d)
        try:
            return None if adoption is None else cls(int(d["seq"]), datetime.fromisoformat(d["at"]), adoption)
        except (KeyError, TypeError, ValueError):
            return None


def unsealed_item(row_id: int, entry: Entry) -> list[Any]:
    """An unsealed row as an adoption's digest covers it: its id and sealed fields."""
    return [row_id, *canonical(entry)]


async def unsealed_pages(
    pool: aiopg.Pool, after: int = 0, through: int | None = None
) -> AsyncIterator[list[tuple[int, Entry]]]:
    """Every row without a seal with ``after`` < id ≤ ``through`` (None: no bound; ``after`` may be
    negative), in id order, a page per round trip."""
    while True:
        async with pool.acquire() as conn, conn.cursor() as cur:
            rows = await sql.unsealed_page(cur, after, through, _PAGE)
        if rows:
            yield rows
        if len(rows) < _PAGE:
            return
        after = rows[-1][0]


async def digest_unsealed(pool: aiopg.Pool, after: int, through: int) -> SetDigest:
    rows = SetDigest()
    async for page in unsealed_pages(pool, after, through):
        for row_id, entry in page:
            rows.add(unsealed_item(row_id, entry))
    return rows


async def last_unsealed_id(pool: aiopg.Pool) -> int | None:
    async with pool.acquire() as conn, conn.cursor() as cur:
        return await sql.last_unsealed_id(cur)


@dataclass(frozen=True)
class Unaudited:
    """The versions no audit row records: how many and their digest, and the newest few of them."""

    versions: SetDigest
    newest: list[tuple[str, int, datetime]]


async def unaudited_versions(pool: aiopg.Pool, *, since: datetime | None = None, newest: int = 5) -> Unaudited:
    """Every version of a key (written at ``since`` or later, when given) without an audit row that
    says it was written (one statement; a healthy trail has none but those the genesis found, usually
    none either)."""
    versions = SetDigest()
    async with pool.acquire() as conn, conn.cursor() as cur:
        rows = await sql.unaudited_versions(cur, since)
    for key, version, _ in rows:
        versions.add([key, version])
    return Unaudited(versions, sorted(rows, key=lambda r: r[2], reverse=True)[:newest])


async def read_head(pool: aiopg.Pool) -> tuple[Head, int]:
    """The head as it is now (not locked), and the last id written before the chain began."""
    async with pool.acquire() as conn, conn.cursor() as cur:
        return await sql.read_head(cur)


async def append_record(
    pool: aiopg.Pool,
    chain: AuditChain,
    entry: Entry,
    *,
    unless: Callable[[Head, aiopg.Cursor], Awaitable[bool]],
    adopted_through: int | None = None,
) -> int | None:
    """Append ``entry`` (one of the chain's own records) alone in a transaction of its own, unless
    ``unless(head, cur)`` holds once the head is locked; the seq it was given, or None. The head is
    locked for this one small transaction only."""

    async def work() -> int | None:
        async with pool.acquire() as conn, conn.cursor() as cur, cur.begin():
            head = await sql.lock_head(cur)
            if await unless(head, cur):
                return None
            await sql.append(cur, chain, [entry], adopted_through=adopted_through)
            return head.seq + 1

    return await complete_then_cancel(work())


async def seal_genesis(pool: aiopg.Pool, chain: AuditChain) -> int | None:
    """Seal the genesis adoption if no process has yet (at every api_server's start): the rows written
    before the chain began and the versions without an audit row so far, read outside the head's lock
    (a big table costs the writers nothing), then appended under it. The seq it got, or None."""
    head, legacy_through = await read_head(pool)
    if head.adopted_through is not None:
        return None
    rows = await digest_unsealed(pool, 0, legacy_through)
    unaudited = await unaudited_versions(pool)
    genesis = Adoption(
        0, legacy_through, rows.count, rows.digest, GENESIS_REASON, unaudited.versions.count, unaudited.versions.digest
    )

    async def sealed_already(h: Head, _: aiopg.Cursor) -> bool:
        return h.adopted_through is not None

    seq = await append_record(
        pool,
        chain,
        system_record(AuditAction.AUDIT_ADOPT, genesis.detail()),
        unless=sealed_already,
        adopted_through=legacy_through,
    )
    if seq is not None:
        log.info("audit chain genesis sealed at seq %d: %d rows from before the chain adopted", seq, rows.count)
    return seq


async def seal_key_switch(pool: aiopg.Pool, chain: AuditChain) -> int | None:
    """With ``AUDIT_HMAC_KEY`` configured and the head still sealed with a derived key, append a record
    sealed with it at once (rather than at the next audited operation): from here on derived keys
    are invalid. The seq it got, or None."""
    if not chain.has_audit_key:
        return None
    detail = json.dumps({"key": chain.active_id}, separators=(",", ":"))

    async def switched_already(h: Head, _: aiopg.Cursor) -> bool:
        return h.seal_key is None or not is_derived(h.seal_key)

    seq = await append_record(pool, chain, system_record(AuditAction.AUDIT_KEY, detail), unless=switched_already)
    if seq is not None:
        log.info("audit chain sealed with AUDIT_HMAC_KEY %s from seq %d on", chain.active_id, seq)
    return seq


def system_record(action: str, detail: str, at: datetime | None = None) -> Entry:
    """One of the chain's own records (``detail`` says what it vouches for)."""
    return Entry(at or utcnow(), SYSTEM_ACTOR, action, None, None, "ok", None, detail)


async def adopt(
    pool: aiopg.Pool, chain: AuditChain, after: int, through: int, reason: str
) -> tuple[int | None, Adoption]:
    """Append an adoption of the rows without a seal with ``after`` < id ≤ ``through``: ``after`` must be
    how far adoptions reach now (verified first by the caller). Returns its seq (None when another
    adoption came first) and what it says."""
    rows = await digest_unsealed(pool, after, through)
    adoption = Adoption(after, through, rows.count, rows.digest, reason)

    async def moved_meanwhile(h: Head, _: aiopg.Cursor) -> bool:
        return h.adopted_through != after

    seq = await append_record(
        pool,
        chain,
        system_record(AuditAction.AUDIT_ADOPT, adoption.detail()),
        unless=moved_meanwhile,
        adopted_through=through,
    )
    return seq, adoption
