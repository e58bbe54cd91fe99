"""Verifying the audit trail (SPEC §8): ``dynconfig-audit verify`` and ``GET /audit/verify``.

:func:`verify` reports the first thing wrong, checking in this order:

1. every sealed row in chain order, and the head with its seal (shared/audit/walk.py) — after a prune,
   from the newest prune record's anchor on (shared/audit/prune.py);
2. no row lies beyond the head (one sealed there would never be walked);
3. checkpoints (``verify --checkpoint``): each names a row the chain still holds with the same MAC, so
   a table put back as it was earlier, seals and all, is caught against what left the database; one
   older than the prune's anchor can no longer be checked, and is counted as pruned;
4. rows without a seal: each lies in a range an adoption vouches for, and each range holds the rows
   it held when adopted (shared/audit/adopt.py);
5. every version of a key (``key_history``) has its audit row, but those the genesis found without one
   (after a prune: every version written since the prune's cutoff).

Rows sealed after verification began are left for the next run. While it runs, no pruned row is
deleted (``sql.HOLD_AGAINST_DELETES``), so a prune sealed meanwhile never looks like rows deleted.
"""

from __future__ import annotations

import dataclasses
import re
from bisect import bisect_left
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC
from typing import Any

import aiopg

from shared.audit.adopt import Adopted, SetDigest, read_head, unaudited_versions, unsealed_item, unsealed_pages
from shared.audit.chain import AuditChain, Entry, Head, Row
from shared.audit.prune import PrunePoint, latest_prune
from shared.audit.walk import Finding, Walk
from shared.runtime.supervisor import complete_then_cancel
from shared.sql import audit as sql

_PAGE = 5000
_MIN_ID = -(2**63)
#: ``SEQ:HEX`` — a checkpoint as it is logged: the head's seq and the first bytes (at least 6) of its MAC.
_CHECKPOINT = re.compile(r"(?:^|audit checkpoint )(\d+):([0-9a-f]{12,64})\b", re.MULTILINE)
CHECKPOINT_MAC_BYTES = 6


@dataclass(frozen=True)
class Checkpoint:
    """A head seen at some moment: its seq and a prefix of its MAC. Without the key nobody can make
    another row whose MAC starts the same, so 48 bits are as good as all 256 here (and fit a metric)."""

    seq: int
    mac: bytes

    @classmethod
    def of(cls, head: Head) -> Checkpoint:
        return cls(head.seq, head.mac[:CHECKPOINT_MAC_BYTES])

    @property
    def token(self) -> str:
        return f"{self.seq}:{self.mac.hex()}"

    @classmethod
    def find_all(cls, text: str) -> list[Checkpoint]:
        """Every checkpoint in ``text``: tokens at the start of a line, or after ``audit checkpoint``
        (as a log line has it)."""
        return [cls(int(seq), bytes.fromhex(mac)) for seq, mac in _CHECKPOINT.findall(text) if len(mac) % 2 == 0]


@dataclass(frozen=True)
class Report:
    checked: int
    head: Head
    finding: Finding | None
    adoptions: Sequence[Adopted] = ()
    #: The seqs of the last rows, which the head's seal does not cover (appended by a previous release).
    unsealed_tail: tuple[int, int] | None = None
    checkpoints: int = 0
    unaudited_before_chain: int = 0
    #: The prune record verification started after (None: never pruned).
    pruned: PrunePoint | None = None
    #: Checkpoints older than the prune's anchor, which can no longer be checked.
    checkpoints_pruned: int = 0

    @property
    def ok(self) -> bool:
        return self.finding is None

    @property
    def adopted_before_chain(self) -> int:
        return sum(a.adoption.count for a in self.adoptions if a.adoption.genesis)

    @property
    def first_seq(self) -> int:
        return self.pruned.pruned.through_seq + 1 if self.pruned is not None else 1

    def summary(self) -> str:
        """One line for people: what ``verify`` prints, and what the console shows."""
        notes = "".join(self._notes())
        if self.finding is None:
            return f"audit chain intact: {self.checked} rows verified (seq {self.first_seq}–{self.head.seq}){notes}"
        f = self.finding
        return f"audit chain BROKEN ({f.kind}): {f.detail} — {self.checked} rows verified before it{notes}"

    def _notes(self) -> list[str]:
        notes = []
        if self.pruned is not None:
            p = self.pruned.pruned
            notes.append(
                f"; seq 1–{p.through_seq} pruned ({p.total} rows, all older than "
                f"{p.before.astimezone(UTC).isoformat()}; the prune record is seq {self.pruned.seq}, and versions "
                "written before that time are no longer checked for their audit rows)"
            )
        adopted = [f"{a.adoption.count} {a.adoption.reason} (adopted at seq {a.seq})" for a in self.adoptions]
        adopted = [text for text, a in zip(adopted, self.adoptions, strict=True) if a.adoption.count]
        if adopted:
            notes.append("; rows without a seal, vouched for by adoptions: " + ", ".join(adopted))
        if self.checkpoints:
            notes.append(f"; {self.checkpoints} checkpoints match")
        if self.checkpoints_pruned:
            notes.append(
                f"; {self.checkpoints_pruned} checkpoints are older than the prune's anchor (seq {self.first_seq - 1}) "
                "and can no longer be checked (pruned)"
            )
        if self.unaudited_before_chain:
            notes.append(f"; {self.unaudited_before_chain} versions written before the chain began have no audit row")
        if self.unsealed_tail is not None:
            first, last = self.unsealed_tail
            notes.append(
                f"; the chain's head seal does not cover the last {last - first + 1} rows (seq {first}–{last}): they "
                "were appended by a process that does not seal it (the previous release, during a rolling upgrade), "
                "so nothing shows yet whether rows after them were cut off; the next write by a process of this "
                "release seals it"
            )
        return notes

    def as_json(self) -> dict[str, Any]:
        """``verify --json`` and ``GET /audit/verify``."""
        tail, pruned = self.unsealed_tail, self.pruned
        return {
            "ok": self.ok,
            "checked": self.checked,
            "firstSeq": self.first_seq,
            "headSeq": self.head.seq,
            "headSealedSeq": self.head.sealed_seq,
            "unsealedBeforeChain": self.adopted_before_chain,
            "adopted": [
                {"seq": a.seq, "at": a.at.astimezone(UTC).isoformat(), **a.adoption.as_json()} for a in self.adoptions
            ],
            "unsealedHead": None if tail is None else {"fromSeq": tail[0], "throughSeq": tail[1]},
            "pruned": None
            if pruned is None
            else {
                "seq": pruned.seq,
                "at": pruned.row.entry.at.astimezone(UTC).isoformat(),
                "throughSeq": pruned.pruned.through_seq,
                "rows": pruned.pruned.total,
                "before": pruned.pruned.before.astimezone(UTC).isoformat(),
            },
            "checkpoints": self.checkpoints,
            "checkpointsPruned": self.checkpoints_pruned,
            "unauditedBeforeChain": self.unaudited_before_chain,
            "finding": None if self.finding is None else dataclasses.asdict(self.finding),
            "summary": self.summary(),
        }


async def sealed_pages(
    pool: aiopg.Pool, after_seq: int = 0, through: int | None = None, *, page: int = _PAGE
) -> AsyncIterator[list[Row]]:
    """Every sealed row with ``after_seq`` < ``seq`` ≤ ``through`` (None: no bound), in order, a page
    per round trip (the last page is shorter than ``page``, possibly empty)."""
    while True:
        async with pool.acquire() as conn, conn.cursor() as cur:
            rows = await sql.sealed_page(cur, after_seq, through, page)
        yield rows
        if len(rows) < page:
            return
        after_seq = rows[-1].seq or after_seq


async def walk_chain(
    pool: aiopg.Pool, chain: AuditChain, checkpoints: Sequence[Checkpoint] = (), *, page: int = _PAGE
) -> tuple[Walk, Head, Finding | None, int]:
    """Steps 1–3: the walk over every sealed row (after the newest prune's anchor) up to the head as
    it is now, its first finding, and how many checkpoints predate the anchor."""
    async with pool.acquire() as conn, conn.cursor() as cur:
        start = await latest_prune(cur)  # before the head: the head is at or past it
    head, _ = await read_head(pool)
    walk = Walk(chain.keys, wanted=[c.seq for c in checkpoints], audit_key=chain.has_audit_key, start=start)
    async for rows in sealed_pages(pool, walk.first - 1, through=head.seq, page=page):
        if not walk.feed(rows, last=len(rows) < page):
            break
    finding = walk.finish(head) or await _beyond_head(pool)
    pruned = 0
    if finding is None:
        finding, pruned = _check_checkpoints(walk, head, checkpoints)
    return walk, head, finding, pruned


async def _beyond_head(pool: aiopg.Pool) -> Finding | None:
    async with pool.acquire() as conn, conn.cursor() as cur:
        row = await sql.sealed_beyond_head(cur)
    if row is None:
        return None
    return Finding("inserted", row.id, row.seq, f"{row.describe()} lies beyond the chain's head: it was inserted")


def _check_checkpoints(walk: Walk, head: Head, checkpoints: Sequence[Checkpoint]) -> tuple[Finding | None, int]:
    pruned = 0
    for cp in sorted(checkpoints, key=lambda c: c.seq, reverse=True):
        if cp.seq == 0:
            continue
        if cp.seq < walk.first - 1:  # the anchor itself (first - 1) is still checked: its MAC is kept
            pruned += 1
            continue
        if cp.seq > head.seq:
            detail = (
                f"checkpoint {cp.token} saw the chain reach seq {cp.seq}, but it ends at seq {head.seq}: rows were "
                "cut off, or the table was put back as it was before"
            )
            return Finding("rolled-back", None, cp.seq, detail), 0
        mac = walk.macs.get(cp.seq)
        if mac is None or not mac.startswith(cp.mac):
            detail = (
                f"row seq {cp.seq} is not the one checkpoint {cp.token} saw: the table was put back as it was "
                "before, and written again"
            )
            return Finding("rolled-back", None, cp.seq, detail), 0
    return None, pruned


async def _check_unsealed(pool: aiopg.Pool, walk: Walk) -> Finding | None:
    """Step 4: every row without a seal lies in an adopted range, and each range is as adopted."""
    adoptions = walk.adoptions
    throughs = [a.adoption.through_id for a in adoptions]
    found = [SetDigest() for _ in adoptions]
    first: tuple[int, Entry] | None = None
    count = last_id = 0
    async for page in unsealed_pages(pool, _MIN_ID):
        for row_id, entry in page:
            i = bisect_left(throughs, row_id) if row_id > 0 else len(throughs)
            if i < len(throughs):
                found[i].add(unsealed_item(row_id, entry))
                continue
            count, last_id = count + 1, row_id
            first = first or (row_id, entry)
    for adopted, now in zip(adoptions, found, strict=True):
        a = adopted.adoption
        if (now.count, now.digest) != (a.count, a.digest):
            kind = "inserted" if now.count > a.count else "deleted" if now.count < a.count else "altered"
            detail = (
                f"the rows without a seal adopted at seq {adopted.seq} ({a.reason}; ids {a.after_id + 1}–"
                f"{a.through_id}) are not those adopted: {now.count} rows now, {a.count} then (rows were {kind})"
            )
            return Finding(kind, adopted.row_id, adopted.seq, detail)
    if first is None:
        return None
    first_id, entry = first
    what = f"row id {first_id} ({entry.action} by {entry.actor!r}, {entry.at.astimezone(UTC).isoformat()})"
    if first_id <= 0:
        why = "no row is ever given an id below 1: it was inserted"
    elif walk.adopted_through is None:
        why = (
            "no adoption covers it (the genesis, which adopts the rows written before the chain began, is not "
            "sealed yet: an api_server of this release seals it when it starts)"
        )
    else:
        rows = f"the {count} rows (ids {first_id}–{last_id})" if count > 1 else f"it (id {first_id})"
        why = (
            f"it lies beyond the ids adopted so far (through {walk.adopted_through}): it was inserted, or written by "
            f'a release before the audit chain — once none runs, adopt {rows} with: dynconfig-audit adopt --reason "…"'
        )
    many = f"{count} rows carry no seal; the first, " if count > 1 else ""
    return Finding("unsealed", first_id, None, f"{many}{what} carries no seal: {why}")


async def _check_versions(pool: aiopg.Pool, walk: Walk) -> tuple[Finding | None, int]:
    """Step 5: the versions without an audit row are exactly those the genesis found; after a prune,
    there is none among those written since its cutoff (shared/audit/prune.py says why)."""
    since = walk.start.pruned.before if walk.start is not None else None
    unaudited = await unaudited_versions(pool, since=since)
    genesis = next((a.adoption for a in walk.adoptions if a.adoption.genesis), None)
    expected = (genesis.unaudited, genesis.unaudited_digest) if genesis is not None else (0, SetDigest().digest)
    if since is not None:
        expected = (0, SetDigest().digest)
    count = expected[0] or 0
    if (unaudited.versions.count, unaudited.versions.digest) == expected:
        return None, count
    newest = ", ".join(f"{key!r} version {v} ({at.astimezone(UTC).isoformat()})" for key, v, at in unaudited.newest)
    then = f"{count} had when the chain began" if since is None else f"none may since {since.astimezone(UTC):%FT%T}Z"
    detail = (
        f"{unaudited.versions.count} versions of keys have no audit row, {then}: a version was written without "
        f"one, its audit row was deleted, or history was altered (newest: {newest})"
    )
    return Finding("unaudited-write", None, None, detail), count


async def verify(
    pool: aiopg.Pool, chain: AuditChain, checkpoints: Sequence[Checkpoint] = (), *, page: int = _PAGE
) -> Report:
    """Check the whole trail (the module docstring says what, in which order), holding pruned rows
    against deletion meanwhile (one more pooled connection for the whole run)."""
    async with pool.acquire() as conn, conn.cursor() as cur:
        await sql.hold_against_deletes(cur)
        try:
            return await _verify(pool, chain, checkpoints, page)
        finally:
            await complete_then_cancel(sql.release_against_deletes(cur))


async def _verify(pool: aiopg.Pool, chain: AuditChain, checkpoints: Sequence[Checkpoint], page: int) -> Report:
    walk, head, finding, pruned = await walk_chain(pool, chain, checkpoints, page=page)
    unaudited = 0
    if finding is None:
        finding = await _check_unsealed(pool, walk)
    if finding is None:
        finding, unaudited = await _check_versions(pool, walk)
    return Report(
        walk.checked,
        head,
        finding,
        walk.adoptions,
        walk.unsealed_tail,
        len(checkpoints) - pruned if finding is None else 0,
        unaudited,
        walk.start,
        pruned if finding is None else 0,
    )
