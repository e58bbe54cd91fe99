"""The audit chain after retention (SPEC §8): prune records, which let ``verify`` start after the rows
a prune removed.

A prune removes a prefix of the chain: the sealed rows with seq ≤ N (after the previous prune's N).
Before any of them goes, a *prune record* (action ``audit.prune``) is sealed into the chain at its
head, like an adoption (shared/audit/adopt.py). Its ``detail`` (:class:`Pruned`) says what goes — the
seq range, how many rows, a digest of their MACs, the time they are all older than (``before``) —
and what verification needs to start after them: row N's MAC (the new anchor) and key, how far
adoptions reached then, where ``AUDIT_HMAC_KEY`` took over (``switchedAt``), whether a row of a
release that seals the head came by then (``linked``), and every adoption so far, restated, since
their own records may be among the rows that go. Row N is always the end of a batch that the next
row's link names (shared/audit/chain.py), so the walk checks that link against the anchor.

``verify`` starts from the newest prune record's anchor rather than seq 1 (shared/audit/walk.py). Its
walk then reaches that record in chain order and proves it genuine (its MAC chains from the rows
before it): a forged or altered anchor is caught there, and a prune record deleted is caught too
(the walk from an older anchor meets the rows that record removed missing). Prune records follow each
other (each one's ``afterSeq`` is the ``throughSeq`` before it), and a checkpoint older than the
anchor can no longer be checked: ``verify`` says so ("pruned") rather than failing.

Versions without an audit row: before any prune, verify compares them with the set the genesis
found. A prune removes the audit rows of old versions whose history may well stay (a key's current
version is kept for ever), so from the first prune on the rule is recomputed, not subtracted: every
version written at or after the newest prune's ``before`` must have its audit row; older ones are not
checked. That is sound because a change's history row and its audit row carry the same time (one
statement writes both, shared/sql/writes.py) and a prune removes only rows older than ``before``. If
the genesis found versions without an audit row (written before the chain), they must be older
too: the pruner then waits until its cutoff is :data:`GENESIS_MARGIN` past the genesis (clocks of
different processes differ).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import aiopg

from shared.audit.adopt import SYSTEM_ACTOR, Adopted, Adoption, SetDigest
from shared.audit.chain import Row
from shared.changes.kinds import AuditAction
from shared.sql import audit as sql

#: How far past the genesis the pruner's cutoff must be before it prunes anything.
GENESIS_MARGIN = timedelta(hours=1)
#: Prune records are appended with ever later times; a few are read in case clocks disagreed.
_LATEST = 8


@dataclass(frozen=True)
class Pruned:
    """What a prune record says (its ``detail``): sealed rows ``after_seq`` < seq ≤ ``through_seq``
    removed (``count`` of them, ``digest`` over their seqs and MACs, all older than ``before``), and
    the walk's state after row ``through_seq`` (see the module docstring); ``total``: rows removed by
    every prune so far."""

    after_seq: int
    through_seq: int
    count: int
    digest: str
    before: datetime
    mac: bytes
    mac_key: str
    adopted_through: int | None
    switched_at: int | None
    linked: bool
    adoptions: tuple[Adopted, ...]
    total: int

    def as_json(self) -> dict[str, Any]:
        return {
            "afterSeq": self.after_seq,
            "throughSeq": self.through_seq,
            "count": self.count,
            "digest": self.digest,
            "before": self.before.isoformat(timespec="microseconds"),
            "mac": self.mac.hex(),
            "macKey": self.mac_key,
            "adoptedThrough": self.adopted_through,
            "switchedAt": self.switched_at,
            "linked": self.linked,
            "adoptions": [a.as_json() for a in self.adoptions],
            "total": self.total,
        }

    def detail(self) -> str:
        return json.dumps(self.as_json(), separators=(",", ":"))

    @classmethod
    def from_row(cls, row: Row) -> Pruned | None:
        """The prune ``row`` records, or None when it is not one or says nothing coherent."""
        e = row.entry
        if e.action != AuditAction.AUDIT_PRUNE or e.actor != SYSTEM_ACTOR or e.detail is None:
            return None
        try:
            d = json.loads(e.detail)
            adoptions = tuple(Adopted.from_json(a) for a in d["adoptions"])
            pruned = cls(
                int(d["afterSeq"]),
                int(d["throughSeq"]),
                int(d["count"]),
                str(d["digest"]),
                datetime.fromisoformat(d["before"]),
                bytes.fromhex(d["mac"]),
                str(d["macKey"]),
                None if d["adoptedThrough"] is None else int(d["adoptedThrough"]),
                None if d["switchedAt"] is None else int(d["switchedAt"]),
                bool(d["linked"]),
                tuple(a for a in adoptions if a is not None),
                int(d["total"]),
            )
        except (ValueError, TypeError, KeyError, AttributeError):
            return None
        if len(pruned.adoptions) != len(adoptions) or row.seq is None:
            return None
        coherent = 0 <= pruned.after_seq < pruned.through_seq < row.seq and pruned.before.tzinfo is not None
        return pruned if coherent and pruned.count == pruned.through_seq - pruned.after_seq else None


@dataclass(frozen=True)
class PrunePoint:
    """The newest prune record as read (not yet proven: the walk proves it when it reaches it)."""

    row: Row
    pruned: Pruned

    @property
    def seq(self) -> int:
        assert self.row.seq is not None
        return self.row.seq


def removed_digest(rows: Sequence[Row]) -> str:
    """What a prune record's ``digest`` covers: each removed row's seq and MAC, in order."""
    digest = SetDigest()
    for row in rows:
        digest.add([row.seq, row.mac.hex() if row.mac is not None else None])
    return digest.digest


async def latest_prune(cur: aiopg.Cursor) -> PrunePoint | None:
    """The newest prune record in the chain (by seq among the newest few by time), or None. One that
    does not parse is passed over: the walk, from an older anchor, reaches it and reports it."""
    latest = await sql.latest_records(cur, SYSTEM_ACTOR, AuditAction.AUDIT_PRUNE, _LATEST)
    rows = sorted(latest, key=lambda r: r.seq or 0)
    for row in reversed(rows):
        pruned = Pruned.from_row(row)
        if pruned is not None:
            return PrunePoint(row, pruned)
    return None


async def genesis(cur: aiopg.Cursor, since: PrunePoint | None) -> Adopted | None:
    """The genesis adoption: restated by the prune record ``since``, or still in the chain."""
    if since is not None:
        found = next((a for a in since.pruned.adoptions if a.adoption.genesis), None)
        if found is not None:
            return found
    row = await sql.first_record(cur, SYSTEM_ACTOR, AuditAction.AUDIT_ADOPT)
    if row is None:
        return None
    adoption = Adoption.from_entry(row.entry)
    if adoption is None or not adoption.genesis or row.seq is None:
        return None
    return Adopted(row.seq, row.entry.at, adoption, row.id)
