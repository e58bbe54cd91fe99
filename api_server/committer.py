"""Group commit: the writes waiting in this process are decided and written together, in one
transaction of set-based statements, so many writes share one commit (one WAL flush) and one turn
at the revision counter (shared/sql/writes.py) instead of queueing for it one by one.

A batch, in one transaction: lock the rows of its keys (existing ones in key order, then the
placeholders of new keys), read the namespace ACLs and Postgres's clock once, decide every write in
Python (each keeps its own outcome: a 403 or a 412 for one never fails its neighbours) and build its
change once, announce the new versions to the cache, write the expiries the writes found, then all the
changes in one statement, and commit. Writes of one key are decided in arrival order, each on the
state the one before it leaves, so a hot key gets many versions per commit, in order.
A batch that Postgres aborts for a deadlock (another replica locking the same keys) is tried again.
After COMMIT the new states go to the cache in one call and the writers get their answers, while the
next batch already runs.

Two lanes. The main lane never waits for a row: it locks with SKIP LOCKED, and a write whose row
another transaction holds (another replica writing the same key, the expiry worker) moves to the
contended lane, which commits such writes in batches that do wait for their rows — one transaction at
a time per process. So a hot key written through several replicas has at most one transaction per
replica queued on its row (not one per batch: 33–38 sessions queued and both pools nearly full,
before), each commit carries every write that queued meanwhile, and unrelated keys keep flowing in the
main lane. Writes of one key stay in arrival order: while a key has writes in the contended lane, its
new writes go there too.

One bad write never fails its batch (SPEC §7): when Postgres refuses a batch for anything but an outage
(a value it cannot encode, say), the batch is committed again in halves, down to the write that fails
alone. A batch is bounded by count and by bytes of values.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, overload

import aiopg
from aiohttp import web
from psycopg2 import errors as pg_errors

from api_server.cache import CACHE, ValueCache
from api_server.metrics import API_METRICS, ApiMetrics
from shared.audit.chain import AUDIT_CHAIN, AuditChain
from shared.changes.kinds import AuditAction, EventKind
from shared.changes.state import KeyState
from shared.changes.writes import Change, NewState, change, expiry, write_changes
from shared.db import DB_POOL, POSTGRES_UNREACHABLE
from shared.errors import DynConfigError, ServiceUnavailable
from shared.runtime.supervisor import SUPERVISOR, cancel_and_wait, complete_then_cancel
from shared.security.acl import Acl
from shared.sql import cache as cache_sql
from shared.sql import keys as keys_sql
from shared.sql import namespaces as ns_sql

log = logging.getLogger(__name__)

MAX_BATCH = 256
#: A batch also stops at this many bytes of values (one write is always taken): 256 values of 1 MiB
#: would make one statement of about half a gigabyte (values go to ``keys`` and to history).
MAX_BATCH_BYTES = 8 * 1024 * 1024
DEADLOCK_RETRIES = 3
#: At shutdown, how long the writes still committing get to finish (within serve.SHUTDOWN_TIMEOUT_SECONDS).
STOP_WAIT_SECONDS = 2.0


@dataclass(frozen=True)
class Decision:
    """What one write does to its key, decided under the key's row lock: from it the committer builds
    the write's :class:`~shared.changes.writes.Change`, once."""

    before: KeyState
    new: NewState
    event: EventKind
    action: AuditAction
    created: bool = False


#: Decides a write from the locked state (None: the key never existed; a key past its deadline comes
#: as its expiry leaves it), the namespace ACLs above it and the time of the change; raises a
#: DynConfigError to refuse it.
Decide = Callable[[KeyState | None, dict[str, Acl], datetime], Decision]


@dataclass
class WriteOp:
    """One write of one key."""

    key: str
    creates: bool  # a PUT: make a placeholder row to lock when the key never existed
    decide: Decide
    actor: str
    request_id: str
    size: int = 0  # bytes of the value it writes (the batch's byte bound)
    done: asyncio.Future[tuple[KeyState, Decision]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )

    @property
    def keys(self) -> tuple[str, ...]:
        return (self.key,)

    @property
    def claims(self) -> tuple[str, ...]:
        """The keys to make a placeholder row for, to lock, when they never existed."""
        return (self.key,) if self.creates else ()


#: Decides a transaction from the locked states of its keys (as for :data:`Decide`; every key is
#: there, a key that never existed as a placeholder at version 0), the namespace ACLs above them and
#: the time of the change: one decision per key it writes, in order; raises a DynConfigError to refuse
#: it whole.
DecideTxn = Callable[[dict[str, KeyState], dict[str, Acl], datetime], list[Decision]]


@dataclass
class TxnOp:
    """A transaction (``POST /txn``): several keys read and written as one, all or nothing. Its changes
    share one revision (shared/sql/writes.py)."""

    keys: tuple[str, ...]  # every key it compares or writes, each once
    decide: DecideTxn
    actor: str
    request_id: str
    size: int = 0
    done: asyncio.Future[list[tuple[KeyState, Decision]]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )

    @property
    def claims(self) -> tuple[str, ...]:
        """Every key: a compare of a key that does not exist holds too (a create waits for the row)."""
        return self.keys


Op = WriteOp | TxnOp


class Committer:
    """Collects writes and commits them in batches (see the module docstring)."""

    def __init__(self, pool: aiopg.Pool, cache: ValueCache, chain: AuditChain, metrics: ApiMetrics) -> None:
        self._pool = pool
        self._cache = cache
        self._chain = chain
        self._metrics = metrics
        self._queue: deque[Op] = deque()
        self._wake = asyncio.Event()
        self._contended: deque[Op] = deque()  # writes whose row another transaction held
        self._contended_keys: Counter[str] = Counter()  # their keys, until their transaction is over
        self._contended_wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()  # answers being sent

    @overload
    async def submit(self, op: WriteOp) -> tuple[KeyState, Decision]: ...
    @overload
    async def submit(self, op: TxnOp) -> list[tuple[KeyState, Decision]]: ...
    async def submit(self, op: Op) -> Any:
        """Queue ``op`` for the next batch; once committed, the new state and decision of its key (a
        write) or of each key it writes, in order (a transaction); or the error that refused it whole."""
        self._queue.append(op)
        self._wake.set()
        return await op.done

    async def stop(self) -> None:
        """At shutdown, once both lanes have stopped (each after the batch it was writing): let the
        answers of the last batches go out (for at most ``STOP_WAIT_SECONDS``), then refuse the writes
        still queued."""
        deadline = asyncio.get_running_loop().time() + STOP_WAIT_SECONDS
        while self._tasks and (left := deadline - asyncio.get_running_loop().time()) > 0:
            await asyncio.wait(set(self._tasks), timeout=left)
        for task in list(self._tasks):
            await cancel_and_wait(task)
        self.refuse_waiting()

    def refuse_waiting(self) -> None:
        """At shutdown: answer the writes still queued with 503 (none of them was written)."""
        for queue in (self._queue, self._contended):
            while queue:
                op = queue.popleft()
                if not op.done.done():
                    op.done.set_exception(ServiceUnavailable("The server is shutting down; the write was not made"))

    async def run(self) -> None:
        """The main lane: commit batches for ever (supervised); never waits for a row another holds."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                batch = self._route(_take(self._queue))
                if batch:
                    await complete_then_cancel(self._commit(batch, wait=False))

    async def run_contended(self) -> None:
        """The contended lane: commit, one transaction at a time, the writes whose rows were held,
        waiting for those rows (supervised)."""
        while True:
            await self._contended_wake.wait()
            self._contended_wake.clear()
            while self._contended:
                batch = _take(self._contended)
                try:
                    await complete_then_cancel(self._commit(batch, wait=True))
                finally:
                    self._contended_keys.subtract(key for op in batch for key in op.keys)
                    self._contended_keys = +self._contended_keys  # drop keys at zero

    def _route(self, batch: list[Op]) -> list[Op]:
        """Send writes of keys that have writes in the contended lane after them (arrival order per
        key: :func:`_split`); return the rest."""
        if not self._contended_keys:
            return batch
        kept, busy = _split(batch, set(self._contended_keys))
        self._contend(busy)
        return kept

    def _contend(self, ops: list[Op]) -> None:
        if ops:
            self._contended.extend(ops)
            self._contended_keys.update(key for op in ops for key in op.keys)
            self._contended_wake.set()

    async def _commit(self, batch: list[Op], *, wait: bool) -> None:
        """Commit ``batch``; without ``wait``, a write whose row another transaction holds moves to the
        contended lane. A batch Postgres refuses (not an outage) is committed again in halves."""
        for attempt in range(DEADLOCK_RETRIES + 1):
            try:
                results, contended = await self._transaction(batch, wait)
            except pg_errors.DeadlockDetected:
                if attempt < DEADLOCK_RETRIES:
                    continue
                log.error("a write batch deadlocked %d times", attempt + 1)
                self._fail(batch, ServiceUnavailable("Write conflict with another replica: try again"))
                return
            except DynConfigError as exc:
                self._fail(batch, exc)
                return
            except Exception as exc:
                if len(batch) > 1 and not isinstance(exc, POSTGRES_UNREACHABLE):
                    # One write may have broken the statement for all: narrow it down (SPEC §7).
                    log.warning(
                        "a write batch of %d failed (%s); committing its halves apart", len(batch), type(exc).__name__
                    )
                    middle = len(batch) // 2
                    await self._commit(batch[:middle], wait=wait)
                    await self._commit(batch[middle:], wait=wait)
                    return
                log.warning("a write batch of %d failed: %s", len(batch), type(exc).__name__)
                self._fail(batch, exc)
                return
            if results:
                self._metrics.write_batch_bytes.observe(sum(op.size for op, _ in results))
            self._contend(contended)
            self._background(self._answer(results), "commit-answer")
            return

    @staticmethod
    def _fail(batch: list[Op], exc: BaseException) -> None:
        for op in batch:
            if not op.done.done():
                op.done.set_exception(exc)

    def _background(self, work: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, results: list[tuple[Op, Any]]) -> None:
        """After COMMIT: store the new states in the cache (one call for the batch), then answer."""
        written = [
            (state, recorded)
            for _, outcome in results
            if not isinstance(outcome, BaseException)
            for state, _, recorded in outcome
        ]
        try:
            await self._cache.written(written)
        finally:  # committed: answered even if the cache was not updated (its entries stay unclean)
            for op, outcome in results:
                if op.done.done():  # the request went away
                    continue
                if isinstance(outcome, BaseException):
                    op.done.set_exception(outcome)
                elif isinstance(op, TxnOp):
                    op.done.set_result([(state, decision) for state, decision, _ in outcome])
                else:
                    ((state, decision, _),) = outcome
                    op.done.set_result((state, decision))

    async def _transaction(self, batch: list[Op], wait: bool) -> tuple[list[tuple[Op, Any]], list[Op]]:
        """One batch in one transaction: per write, its [(new state, decision, recorded?)] (one per
        key it writes) or its error; and the writes left out because another transaction holds a row
        they need (unless ``wait``)."""
        outcomes: dict[int, Any] = {}
        async with self._pool.acquire() as conn, conn.cursor() as cur, cur.begin():
            states, busy = await _lock(cur, batch, wait)
            batch, contended = _split(batch, busy)
            if not batch:
                return [], contended
            await _claim(cur, batch, states)
            ns_acls, clock = await ns_sql.acls_above_and_clock(cur, sorted({key for op in batch for key in op.keys}))
            decided, expiries, refused = _decide(batch, states, ns_acls, clock)
            outcomes.update(refused)
            if decided:
                # The version each key is left at, announced to the cache before COMMIT; where Redis
                # cannot take it, recorded in Postgres in this transaction (api_server/cache.py).
                announced = list({made.before.key: made.after.version for _, _, made in decided}.items())
                recorded = not await self._cache.mark_unclean(announced)
                if recorded:
                    await cache_sql.record_unclean(cur, announced)
                if expiries:
                    await write_changes(cur, expiries, self._chain)
                states_after = await write_changes(cur, [made for _, _, made in decided], self._chain)
                for (op, d, _), state in zip(decided, states_after, strict=True):
                    outcomes.setdefault(id(op), []).append((state, d, recorded))
            # A create refused in a batch that commits must not leave its placeholder row behind.
            written = {d.before.key for _, d, _ in decided}
            unused = [key for key, state in states.items() if state.version == 0 and key not in written]
            if unused:
                await keys_sql.drop_placeholders(cur, unused)
        return [(op, outcomes[id(op)]) for op in batch], contended


def _decide(
    batch: list[Op], states: dict[str, KeyState], ns_acls: dict[str, Acl], clock: datetime
) -> tuple[list[tuple[Op, Decision, Change]], list[Change], dict[int, DynConfigError]]:
    """Decide the writes of a batch in order, each on the state the ones before it leave its keys in,
    and build each one's changes once. Returns the changes made (with their write and decision), the
    expiries to record before them, and the refused writes' errors (by ``id`` of the write)."""
    decided: list[tuple[Op, Decision, Change]] = []
    expiries: list[Change] = []
    refused: dict[int, DynConfigError] = {}
    current = dict(states)
    for number, op in enumerate(batch):
        seen = {key: current.get(key) for key in op.keys}
        now = max([clock, *(state.last_modified for state in seen.values() if state and state.version)])
        # Past its deadline: readers already see the key gone, so its expiry is recorded first (if
        # the write is made) and the write is decided on the state the expiry leaves.
        expired = {
            key: expiry(state, now, ns_acls, op.request_id)
            for key, state in seen.items()
            if state and state.expired(now)
        }
        seen.update((key, made.after) for key, made in expired.items())
        try:
            if isinstance(op, TxnOp):
                decisions = op.decide({key: state for key, state in seen.items() if state is not None}, ns_acls, now)
            else:
                decisions = [op.decide(seen[op.key], ns_acls, now)]
        except DynConfigError as exc:
            refused[id(op)] = exc
            continue
        txn = number if isinstance(op, TxnOp) else None
        for decision in decisions:
            made = _change(op, decision, now, ns_acls, txn)
            decided.append((op, decision, made))
            key = decision.before.key
            if key in expired:
                expiries.append(expired[key])
            current[key] = made.after
    return decided, expiries, refused


def _take(queue: deque[Op]) -> list[Op]:
    """The next batch from ``queue``: up to MAX_BATCH writes and MAX_BATCH_BYTES of values (at least one)."""
    batch: list[Op] = []
    size = 0
    while queue and len(batch) < MAX_BATCH and (not batch or size + queue[0].size <= MAX_BATCH_BYTES):
        op = queue.popleft()
        batch.append(op)
        size += op.size
    return batch


def _change(op: Op, decision: Decision, now: datetime, ns_acls: dict[str, Acl], txn: int | None) -> Change:
    return change(
        decision.before,
        decision.new,
        event=decision.event,
        action=decision.action,
        actor=op.actor,
        request_id=op.request_id,
        now=now,
        namespace_acls=ns_acls,
        txn=txn,
    )


async def _lock(cur: aiopg.Cursor, batch: list[Op], wait: bool) -> tuple[dict[str, KeyState], set[str]]:
    """Lock the existing rows of the batch's keys, in key order. Returns the locked states by key, and
    (unless ``wait``) the keys whose rows another transaction holds, left unlocked."""
    keys = sorted({key for op in batch for key in op.keys})
    states = await keys_sql.lock_many(cur, keys, wait=wait)
    busy: set[str] = set()
    if not wait and len(states) < len(keys):
        busy = await keys_sql.existing(cur, [key for key in keys if key not in states])
    return states, busy


def _split(batch: list[Op], busy: set[str]) -> tuple[list[Op], list[Op]]:
    """The writes to make now, and those that move to the contended lane: every write of a ``busy``
    key (its row another transaction holds, or a write of it waits in that lane), and every later
    write of a key one of those moves with (a key's writes stay in arrival order: a write never
    overtakes a transaction it came after)."""
    moved = set(busy)
    kept: list[Op] = []
    contended: list[Op] = []
    for op in batch:
        if moved.intersection(op.keys):
            contended.append(op)
            moved.update(op.keys)
        else:
            kept.append(op)
    return kept, contended


async def _claim(cur: aiopg.Cursor, batch: list[Op], states: dict[str, KeyState]) -> None:
    """Lock placeholders for the keys the batch's writes may create (or a transaction compares) that
    have no row yet, into ``states``; only for writes this transaction makes, so no placeholder of a
    write that waits in the contended lane is committed (every unused one is dropped before COMMIT)."""
    creators: dict[str, str] = {}  # each new key's creator: the first write in the batch to claim it
    for op in batch:
        for key in op.claims:
            if key not in states:
                creators.setdefault(key, op.actor)
    if creators:
        new = sorted(creators)
        states.update(await keys_sql.claim_many(cur, new, [creators[key] for key in new]))


COMMITTER = web.AppKey("committer", Committer)


async def committer_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the process's committer and its loop (needs the pool and the cache first)."""
    committer = Committer(app[DB_POOL], app[CACHE], app[AUDIT_CHAIN], app[API_METRICS])
    app[COMMITTER] = committer
    main = app[SUPERVISOR].spawn("committer", committer.run)
    contended = app[SUPERVISOR].spawn("committer-contended", committer.run_contended)
    try:
        yield
    finally:
        await cancel_and_wait(main)
        await cancel_and_wait(contended)
        await committer.stop()
