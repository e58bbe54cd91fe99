"""Walking the sealed rows of the audit chain in order (shared/audit/chain.py says how they are sealed).

:class:`Walk` is fed the sealed rows a page at a time, in ``seq`` order, and stops at the first that
is wrong (:class:`Finding`):

- a gap or a repeat in ``seq``, a MAC that does not verify (:func:`_diagnose` tells altered, inserted,
  deleted and moved rows apart), a key that is not configured;
- a row sealed with a key derived from ``ENCRYPTION_KEYS`` after the first row sealed with an
  ``AUDIT_HMAC_KEY`` key (``derived-key``: whoever holds the encryption keys re-sealed it);
- on the first row of each batch, the head its writer found (:class:`~shared.audit.chain.Link`): its
  seal must be genuine and name the end of the last batch of this release, or a row after it — rows
  in between were appended by a release that moves the head without sealing it. A seal naming a row
  the chain no longer has, or an older one, means rows had been cut off the end and the head moved
  back (``truncated``), and the row that says so stays in the chain;
- an adoption record that does not follow the ones before it, or a prune record that does not
  follow the prune before it (shared/audit/prune.py).

After a prune the walk starts at the newest prune record's anchor (``start``), with the state that
record sealed, and must reach that record in chain order. :meth:`Walk.finish` then checks the head
itself the same way.
"""

from __future__ import annotations

import hmac
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from shared.audit.adopt import Adopted, Adoption
from shared.audit.chain import GENESIS, Head, Row, is_derived, seal, seal_head
from shared.audit.prune import Pruned, PrunePoint
from shared.changes.kinds import AuditAction

#: How far around a row that does not verify :func:`_diagnose` looks to tell what happened to it.
_WINDOW = 32


@dataclass(frozen=True)
class Finding:
    """What verification found wrong: the kind (``altered``, ``inserted``, ``deleted``, ``reordered``,
    ``truncated``, ``unknown-key``, ``derived-key``, ``rolled-back``, ``unsealed``, ``unaudited-write``)
    and a sentence naming the first row concerned."""

    kind: str
    row_id: int | None
    seq: int | None
    detail: str


@dataclass(frozen=True)
class _Sealed:
    """What a head sealed right after a row would have covered: the row's MAC, its key, and how far
    adoptions reached then."""

    mac: bytes
    key_id: str
    adopted_through: int | None


class Walk:
    """Checks sealed rows in ``seq`` order, fed a page at a time (:meth:`feed`), then :meth:`finish`.
    ``wanted``: seqs whose MAC to keep (checkpoints); ``audit_key``: an ``AUDIT_HMAC_KEY`` is
    configured, so the head must not be sealed with a derived key; ``start``: the prune record to
    start after (rows from its anchor on), None to start at seq 1."""

    def __init__(
        self,
        keys: Mapping[str, bytes],
        *,
        wanted: Iterable[int] = (),
        audit_key: bool = False,
        start: PrunePoint | None = None,
    ) -> None:
        self._keys = keys
        self._audit_key = audit_key
        self._prev, self._expected, self.checked = GENESIS, 1, 0
        self._recent: deque[Row] = deque(maxlen=_WINDOW)
        self._pending: list[Row] = []
        self.finding: Finding | None = None
        #: The first seq sealed with an ``AUDIT_HMAC_KEY`` key: derived keys are invalid from there on.
        self.switched_at: int | None = None
        #: The seq of the last row that starts a batch of this release (it carries a link).
        self.batch_start: int | None = None
        self._since: dict[int, _Sealed] = {}  # every row from batch_start on
        #: How far adoptions reach (None before the genesis), and each adoption with its row.
        self.adopted_through: int | None = None
        self.adoptions: list[Adopted] = []
        #: After :meth:`finish`: the seqs of the last rows, which the head's seal does not cover.
        self.unsealed_tail: tuple[int, int] | None = None
        self.macs: dict[int, bytes | None] = dict.fromkeys(wanted)
        self.start = start
        self._last_prune: Pruned | None = None
        self._start_seen = start is None
        if start is not None:
            self._resume(start.pruned)

    def _resume(self, p: Pruned) -> None:
        """Start after ``p``'s anchor, in the state the walk was in there."""
        self._prev, self._expected = p.mac, p.through_seq + 1
        self.switched_at, self.adopted_through, self.adoptions = p.switched_at, p.adopted_through, list(p.adoptions)
        if p.linked:  # the anchor ends a batch: the next row's link names it
            self.batch_start = p.through_seq
            self._since = {p.through_seq: _Sealed(p.mac, p.mac_key, p.adopted_through)}
        if p.through_seq in self.macs:
            self.macs[p.through_seq] = p.mac

    @property
    def first(self) -> int:
        """The first seq this walk checks (1, or the one after the anchor it started from)."""
        return self.start.pruned.through_seq + 1 if self.start is not None else 1

    def feed(self, rows: Sequence[Row], *, last: bool = False) -> bool:
        """Check ``rows`` (the next ones in order); keep the last few back as context for the next
        page unless ``last``. False once a problem is found."""
        self._pending.extend(rows)
        todo = len(self._pending) if last else max(0, len(self._pending) - _WINDOW)
        for i in range(todo):
            self.finding = self._check(self._pending[i], self._pending[i + 1 : i + 1 + _WINDOW])
            if self.finding is not None:
                return False
        del self._pending[:todo]
        return True

    def _check(self, row: Row, ahead: list[Row]) -> Finding | None:
        assert row.seq is not None
        expected = self._expected
        if row.seq != expected:
            if row.seq > expected:
                missing = f"seq {expected}" if row.seq == expected + 1 else f"seq {expected}–{row.seq - 1}"
                return Finding("deleted", row.id, expected, f"{missing} missing (deleted) before {row.describe()}")
            return Finding("inserted", row.id, row.seq, f"{row.describe()} repeats a position already taken")
        key = self._keys.get(row.mac_key or "")
        if key is None or row.mac is None:
            named = "no key" if not row.mac_key else f"key {row.mac_key!r}, which is not configured"
            kind = "unknown-key" if row.mac_key and row.mac is not None else "altered"
            return Finding(kind, row.id, row.seq, f"{row.describe()} is sealed with {named}")
        if not hmac.compare_digest(seal(key, self._prev, row.seq, row.entry, row.link), row.mac):
            return _diagnose(row, self._prev, list(self._recent), ahead, self._keys)
        if is_derived(row.mac_key) and self.switched_at is not None:
            detail = (
                f"{row.describe()} is sealed with {row.mac_key}, a key derived from ENCRYPTION_KEYS, but an "
                f"AUDIT_HMAC_KEY key seals the trail since seq {self.switched_at}: it was re-sealed by someone "
                "holding the encryption keys, or written by a process without AUDIT_HMAC_KEY"
            )
            return Finding("derived-key", row.id, row.seq, detail)
        if self.switched_at is None and not is_derived(row.mac_key):
            self.switched_at = row.seq
        if row.link is not None:
            if (finding := self._check_link(row)) is not None:
                return finding
            self.batch_start, self._since = row.seq, {}
        if (
            row.entry.action == AuditAction.AUDIT_ADOPT
            and (finding := self._adopt(row, Adoption.from_entry(row.entry))) is not None
        ):
            return finding
        if row.entry.action == AuditAction.AUDIT_PRUNE and (finding := self._prune(row)) is not None:
            return finding
        self._prev, self._expected, self.checked = row.mac, expected + 1, self.checked + 1
        if self.batch_start is not None:
            self._since[row.seq] = _Sealed(row.mac, row.mac_key or "", self.adopted_through)
        if row.seq in self.macs:
            self.macs[row.seq] = row.mac
        self._recent.append(row)
        return None

    def _check_link(self, row: Row) -> Finding | None:
        """The head ``row``'s writer found (``row`` starts a batch): was it sealed, genuinely, after the
        last batch of this release?"""
        assert row.link is not None and row.seq is not None
        link, what = row.link, row.describe()
        if self.batch_start is None:  # the first batch of this release: nobody had sealed the head
            if link.seq is None and not link.seal:
                return None
            detail = f"{what} was appended after a sealed head, but no row before it came from a process that seals it"
            return Finding("altered", row.id, row.seq, detail)
        if link.seq is None or not link.seal:
            detail = f"the chain's head had lost its seal when {what} was appended (rows cut off the end?)"
            return Finding("altered", row.id, row.seq, detail)
        if link.seq >= row.seq or link.seq < self.batch_start:
            why = (
                f"its seal named seq {link.seq}, but it had been moved back to seq {row.seq - 1}"
                if link.seq >= row.seq
                else f"it carried the seal of seq {link.seq}, older than the batch appended from seq "
                f"{self.batch_start} on (an old seal put back)"
            )
            detail = f"rows were cut off the end before {what} was appended after the head: {why}"
            return Finding("truncated", row.id, row.seq, detail)
        sealed = self._since[link.seq]
        expected = seal_head(self._keys[sealed.key_id], link.seq, sealed.mac, sealed.adopted_through)
        if not hmac.compare_digest(expected, link.seal):
            detail = (
                f"{what} was appended after a head whose seal does not match the rows before it: rows were cut off "
                "and others appended in their place, or the seal was forged"
            )
            return Finding("altered", row.id, row.seq, detail)
        return None  # rows between link.seq and row were appended by a release that does not seal the head

    def _adopt(self, row: Row, adoption: Adoption | None) -> Finding | None:
        """An adoption record: it must take up ids where the last one stopped (from 0 for the genesis)."""
        after = self.adopted_through
        if adoption is None or adoption.genesis != (after is None) or adoption.after_id != (after or 0):
            detail = f"{row.describe()} is an adoption record that does not follow those before it (through id {after})"
            return Finding("altered", row.id, row.seq, detail)
        if adoption.through_id < adoption.after_id:
            return Finding("altered", row.id, row.seq, f"{row.describe()} adopts an empty id range")
        assert row.seq is not None
        self.adoptions.append(Adopted(row.seq, row.entry.at, adoption, row.id))
        self.adopted_through = adoption.through_id
        return None

    def _prune(self, row: Row) -> Finding | None:
        """A prune record: it must say what it removed, follow the prune before it, and be the record
        the walk started from when it is at its seq (a genuine one: its MAC verified)."""
        pruned, what = Pruned.from_row(row), row.describe()
        if pruned is None:
            return Finding("altered", row.id, row.seq, f"{what} is a prune record that does not say what it removed")
        last = self._last_prune
        if last is not None and pruned.after_seq != last.through_seq:
            detail = f"{what} does not follow the prune before it (through seq {last.through_seq})"
            return Finding("altered", row.id, row.seq, detail)
        if self.start is not None and row.seq == self.start.seq:
            if row.mac != self.start.row.mac or pruned != self.start.pruned:
                return Finding("altered", row.id, row.seq, f"{what} is not the prune record verification started from")
            self._start_seen = True
        self._last_prune = pruned
        return None

    def finish(self, head: Head) -> Finding | None:
        """After the last row: does the head agree with it, and is its seal genuine and current?"""
        if self.finding is not None:
            return self.finding
        last = self._expected - 1
        if not self._start_seen:
            assert self.start is not None
            detail = f"the prune record verification started from ({self.start.row.describe()}) is not in the chain"
            return Finding("deleted", self.start.row.id, self.start.seq, detail)
        if head.seq != last or not hmac.compare_digest(head.mac, self._prev):
            if head.seq > last:
                detail = f"the chain head says seq {head.seq}, but the rows end at seq {last}: the last rows were cut"
                return Finding("truncated", None, last + 1, detail)
            detail = f"the chain head (seq {head.seq}) does not match the last row (seq {last}): head or tail altered"
            return Finding("altered", None, head.seq, detail)
        if self.batch_start is None:  # no row of this release yet: nobody has sealed the head
            if head.seal is not None or head.sealed_seq is not None:
                detail = "the chain's head carries a seal, but no row was appended by a process that seals it"
                return Finding("altered", None, head.seq, detail)
            self.unsealed_tail = (self.first, last) if last >= self.first else None
            return None
        return self._check_head_seal(head, last)

    def _check_head_seal(self, head: Head, last: int) -> Finding | None:
        assert self.batch_start is not None
        s = head.sealed_seq
        if head.seal is None or s is None or head.sealed_mac is None:
            return Finding("altered", None, head.seq, "the chain's head has lost its seal (rows cut off the end?)")
        if s > last or s < self.batch_start:
            why = (
                f"the head's seal names seq {s}, but the rows end at seq {last}"
                if s > last
                else f"the head carries the seal of seq {s}, older than the batch appended from seq "
                f"{self.batch_start} on (an old seal put back)"
            )
            detail = f"the last rows were deleted and the head moved back: {why}"
            return Finding("truncated", None, min(s, last) + 1, detail)
        if head.seal_key not in self._keys:
            detail = f"the chain's head is sealed with key {head.seal_key!r}, which is not configured"
            return Finding("unknown-key", None, head.seq, detail)
        sealed = self._since[s]
        if not head.seal_verifies(self._keys):
            return Finding("altered", None, head.seq, "the chain's head seal is not genuine (forged, or replaced)")
        if head.sealed_mac != sealed.mac:
            detail = (
                f"the head's seal names a row seq {s} that the chain no longer has: the rows from there on were cut "
                "off and others appended in their place"
            )
            return Finding("truncated", None, s, detail)
        if head.adopted_through != sealed.adopted_through:
            detail = f"the head says adoptions reach id {head.adopted_through}, its rows say {sealed.adopted_through}"
            return Finding("altered", None, head.seq, detail)
        if is_derived(head.seal_key) and (self._audit_key or self.switched_at is not None):
            detail = (
                f"the chain's head is sealed with {head.seal_key}, a key derived from ENCRYPTION_KEYS, while "
                "AUDIT_HMAC_KEY is configured: no process holding it has appended yet (an api_server does when "
                "it starts), or the head was re-sealed by someone holding the encryption keys"
            )
            return Finding("derived-key", None, head.seq, detail)
        self.unsealed_tail = (s + 1, last) if s < last else None
        return None


def _diagnose(row: Row, prev: bytes, recent: list[Row], ahead: list[Row], keys: Mapping[str, bytes]) -> Finding:
    """Tell what happened to ``row``, the first that does not verify after ``prev``."""
    assert row.seq is not None and row.mac is not None
    key = keys[row.mac_key or ""]
    # Moved: its MAC verifies at another position, after another row nearby.
    candidates = [prev] + [r.mac for r in recent + ahead if r.mac is not None]
    for seq in range(max(1, row.seq - _WINDOW), row.seq + _WINDOW + 1):
        if seq != row.seq and any(
            hmac.compare_digest(seal(key, c, seq, row.entry, row.link), row.mac) for c in candidates
        ):
            return Finding(
                "reordered", row.id, row.seq, f"{row.describe()} was written at seq {seq}: rows were reordered"
            )
    nxt = ahead[0] if ahead else None
    nkey = keys.get(nxt.mac_key or "") if nxt is not None else None
    if nxt is not None and nxt.seq is not None and nxt.mac is not None and nkey is not None:

        def links(after: bytes, seq: int) -> bool:
            return hmac.compare_digest(seal(nkey, after, seq, nxt.entry, nxt.link), nxt.mac)  # type: ignore[arg-type]

        if links(row.mac, nxt.seq):
            return Finding(
                "altered", row.id, row.seq, f"{row.describe()} was altered (its fields no longer match its seal)"
            )
        if links(prev, nxt.seq - 1):
            return Finding(
                "inserted", row.id, row.seq, f"{row.describe()} was inserted (the rows after it were renumbered)"
            )
        if links(row.mac, nxt.seq + 1):
            return Finding(
                "deleted", row.id, row.seq, f"the row before {row.describe()} was deleted (later rows renumbered)"
            )
    return Finding("altered", row.id, row.seq, f"{row.describe()} does not verify: altered, inserted or moved")
