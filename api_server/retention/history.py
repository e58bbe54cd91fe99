"""Retention (SPEC §8): audit records older than ``AUDIT_RETENTION_…`` and past versions of keys older
than ``HISTORY_RETENTION_…``, removed in small batches that never block writes.

Every batch is its own short transaction with a small LIMIT, and the pruner pauses between batches.
No delete touches a row a writer touches (writes insert rows stamped now; the pruner removes old
ones) or takes a lock a writer takes. The one moment it queues with writers is when it appends a
prune record to the audit chain: one row, under the chain's head lock, like any audited write.

Audit records, a round at a time (:meth:`Pruner.prune_audit`; shared/audit/prune.py says what a prune
record holds and how ``verify`` uses it):

1. finish deleting what the newest prune record removed (a round cut short leaves some behind);
2. read the next sealed rows after its anchor, at most :data:`ROUND_ROWS`, as long as they are older
   than the cutoff; the new anchor N is the last of them that ends a batch (the next row's link names
   it), so the walk from N can check that link;
3. walk them from the state the newest record sealed (shared/audit/walk.py): rows that do not verify
   are kept, and the pruner says so (a log line, ``dynconfig_audit_prune_blocked``) — deleting them
   would destroy the evidence — until ``dynconfig-audit verify`` passes again;
4. seal the prune record, then delete rows up to N a batch at a time; a batch waits for no
   ``verify`` in progress, it tries again later (shared/sql/audit.py, ``HOLD_AGAINST_DELETES``).

Rows without a seal (written before the chain, vouched for by adoptions) are not removed by this
release; they stopped growing when the chain began.

Past versions (:meth:`Pruner.prune_history`): scanned in time order, deleting those older than the
cutoff but each key's current and 10 newest past versions, and those the change log still refers to
(shared/sql/history.py). If the genesis found versions written without an audit row, they wait for
the first audit prune: until then ``verify`` expects exactly the genesis's set, so removing one of
them would look like tampering.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime, timedelta

import aiopg

from shared.audit.adopt import append_record, system_record
from shared.audit.chain import AuditChain, Head, Row
from shared.audit.prune import GENESIS_MARGIN, Pruned, PrunePoint, genesis, latest_prune, removed_digest
from shared.audit.walk import Finding, Walk
from shared.changes.kinds import AuditAction
from shared.runtime.supervisor import complete_then_cancel
from shared.sql import audit as audit_sql
from shared.sql import history as history_sql
from shared.timeutil import utcnow

log = logging.getLogger(__name__)

#: Sealed rows one prune record removes at most (read, walked and digested in memory), unless one
#: batch of the chain (rows appended together) is longer: a record ends where a batch ends.
ROUND_ROWS = 20_000
_MAX_ROUND_ROWS = 1_000_000
#: Rows one DELETE removes at most: one short transaction.
BATCH = 1000
#: Sealed rows read per round trip while looking for the next prune's rows.
_PAGE = 1000
#: Between batches: writers, autovacuum and replicas get the table.
PAUSE_SECONDS = 0.02
#: How often a delete blocked by a ``verify`` in progress tries again within a round, and how many times.
_BUSY_SECONDS, _BUSY_TRIES = 0.5, 20


class Pruner:
    """Removes rows past retention (the module docstring says how). ``removed(table, n)`` is told of
    every batch; :attr:`blocked` is the finding that stops audit pruning, if any."""

    def __init__(
        self,
        pool: aiopg.Pool,
        chain: AuditChain,
        *,
        audit_retention: float,
        history_retention: float,
        batch: int = BATCH,
        round_rows: int = ROUND_ROWS,
        pause: float = PAUSE_SECONDS,
        removed: Callable[[str, int], None] = lambda table, n: None,
    ) -> None:
        self._pool = pool
        self._chain = chain
        self._audit_retention = timedelta(seconds=audit_retention)
        self._history_retention = timedelta(seconds=history_retention)
        self._batch, self._round_rows, self._pause = batch, round_rows, pause
        self._removed = removed
        self.blocked: Finding | None = None

    async def run_once(self) -> tuple[int, int]:
        """One pass over both tables; how many audit rows and past versions went."""
        audit = await self.prune_audit()
        history = await self.prune_history() if await self._history_allowed() else 0
        return audit, history

    # --- audit records ---------------------------------------------------------------------------

    async def prune_audit(self) -> int:
        """Rounds until nothing past retention is left (or deleting must wait); how many rows went."""
        removed = 0
        while True:
            gone, done = await self.delete_pruned()
            removed += gone
            if not done or await self.seal_next() is None:
                return removed

    async def delete_pruned(self) -> tuple[int, bool]:
        """Delete what the newest prune record removed, if any is left; how many rows went, and
        whether all did (False: a ``verify`` ran all along, the next round goes on)."""
        async with self._pool.acquire() as conn, conn.cursor() as cur:
            start = await latest_prune(cur)
        return (0, True) if start is None else await self._delete_through(start.pruned.through_seq)

    async def seal_next(self) -> Pruned | None:
        """Seal the next prune record (steps 2–4 of the module docstring, but the deleting); what it
        says, or None when nothing can go now."""
        async with self._pool.acquire() as conn, conn.cursor() as cur:
            start = await latest_prune(cur)
            first = await genesis(cur, start)
        cutoff = utcnow() - self._audit_retention
        if first is None:
            return None  # not sealed yet: every api_server seals it as it starts
        if first.adoption.unaudited and cutoff <= first.at + GENESIS_MARGIN:
            return None  # its versions must all be older than the cutoff (shared/audit/prune.py)
        record = await self._next(start, cutoff)
        return record if record is not None and await self._seal(start, record) else None

    async def _next(self, start: PrunePoint | None, cutoff: datetime) -> Pruned | None:
        """What the next prune record removes, walked and found intact; None when nothing can go."""
        after = start.pruned.through_seq if start is not None else 0
        most = self._round_rows
        while True:
            rows = await self._oldest(after, cutoff, most)
            old = 0
            while old < len(rows) and rows[old].entry.at < cutoff:
                old += 1
            end = next(
                (i for i in range(min(old, len(rows) - 1) - 1, -1, -1) if _ends_batch(rows[i], rows[i + 1])),
                None,
            )
            if end is not None or old <= most or most >= _MAX_ROUND_ROWS:
                break
            most *= 2  # one batch (one append) longer than a round: take it whole
        if end is None:
            return None
        segment = rows[: end + 1]
        walk = Walk(self._chain.keys, audit_key=self._chain.has_audit_key, start=start)
        if not walk.feed(segment, last=True):
            assert walk.finding is not None
            if self.blocked != walk.finding:
                log.error(
                    "retention: the oldest audit rows do not verify, so none is pruned until `dynconfig-audit "
                    "verify` passes: %s",
                    walk.finding.detail,
                )
            self.blocked = walk.finding
            return None
        self.blocked = None
        last = segment[-1]
        assert last.seq is not None and last.mac is not None
        return Pruned(
            after,
            last.seq,
            len(segment),
            removed_digest(segment),
            cutoff,
            last.mac,
            last.mac_key or "",
            walk.adopted_through,
            walk.switched_at,
            walk.batch_start is not None,
            tuple(walk.adoptions),
            (start.pruned.total if start is not None else 0) + len(segment),
        )

    async def _oldest(self, after: int, cutoff: datetime, most: int) -> list[Row]:
        """The sealed rows after seq ``after`` up to the first one not older than ``cutoff`` (included:
        its link may name the last old one), at most ``most`` + 1, read a page at a time so a round
        with little or nothing to remove reads little."""
        rows: list[Row] = []
        page = min(_PAGE, most + 1)
        while len(rows) <= most:
            async with self._pool.acquire() as conn, conn.cursor() as cur:
                found = await audit_sql.sealed_page(cur, rows[-1].seq if rows else after, None, page)
            rows += found
            if len(found) < page or found[-1].entry.at >= cutoff:
                break
        return rows[: most + 1]

    async def _seal(self, start: PrunePoint | None, record: Pruned) -> bool:
        """Append ``record`` to the chain, unless another prune record came after ``start`` meanwhile
        (a pruner that lost its lock without knowing yet): prune records must follow each other."""
        at = utcnow()
        if start is not None and at <= start.row.entry.at:  # prune records' times only go up
            at = start.row.entry.at + timedelta(microseconds=1)
        expected = start.seq if start is not None else None

        async def superseded(_: Head, cur: aiopg.Cursor) -> bool:
            latest = await latest_prune(cur)
            return (latest.seq if latest is not None else None) != expected

        seq = await append_record(
            self._pool, self._chain, system_record(AuditAction.AUDIT_PRUNE, record.detail(), at), unless=superseded
        )
        if seq is None:
            log.warning("retention: another pruner sealed a prune record meanwhile; this round stops")
            return False
        log.info(
            "retention: audit rows seq %d–%d (%d, older than %s) pruned, recorded at seq %d",
            record.after_seq + 1,
            record.through_seq,
            record.count,
            record.before.isoformat(),
            seq,
        )
        return True

    async def _delete_through(self, through: int) -> tuple[int, bool]:
        """Delete the sealed rows up to seq ``through``, a batch at a time; how many went, and whether
        all did (False: a ``verify`` ran all along, the next round goes on)."""
        removed, busy = 0, 0

        async def batch() -> int | None:
            async with self._pool.acquire() as conn, conn.cursor() as cur, cur.begin():
                if not await audit_sql.try_delete_lock(cur):
                    return None
                return await audit_sql.delete_pruned(cur, through, self._batch)

        while True:
            gone = await complete_then_cancel(batch())
            if gone is None:
                busy += 1
                if busy >= _BUSY_TRIES:
                    return removed, False
                await asyncio.sleep(_BUSY_SECONDS)
                continue
            removed += gone
            if gone:
                self._removed("audit_log", gone)
            if gone < self._batch:
                return removed, True
            await asyncio.sleep(self._pause)

    # --- past versions ---------------------------------------------------------------------------

    async def _history_allowed(self) -> bool:
        """Whether removing past versions cannot upset ``verify`` (the module docstring says when)."""
        async with self._pool.acquire() as conn, conn.cursor() as cur:
            if await latest_prune(cur) is not None:
                return True
            first = await genesis(cur, None)
        return first is not None and not first.adoption.unaudited

    async def prune_history(self) -> int:
        """One pass over the past versions older than the cutoff; how many went."""
        before = utcnow() - self._history_retention
        cursor: history_sql.PruneCursor | None = None

        async def batch() -> tuple[int, int, history_sql.PruneCursor | None]:
            async with self._pool.acquire() as conn, conn.cursor() as cur, cur.begin():
                return await history_sql.prune_batch(cur, before, self._batch, cursor)

        removed = 0
        while True:
            gone, scanned, cursor = await complete_then_cancel(batch())
            removed += gone
            if gone:
                self._removed("key_history", gone)
            if scanned < self._batch:
                return removed
            await asyncio.sleep(self._pause)


def _ends_batch(row: Row, nxt: Row) -> bool:
    """Whether ``row`` ends a batch whose successor's link names it (an anchor the walk can resume at)."""
    return nxt.link is not None and nxt.link.seq is not None and nxt.link.seq == row.seq
