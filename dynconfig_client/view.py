"""The state machine behind ``LiveConfig``: stream events in, the current view and its ``Change``s out.

No I/O here. Events are applied in revision order, each at most once. A snapshot (the first one, or the
one after a ``reset``) is collected aside and swapped in at once when complete: at the stream's
``synced`` marker, or at the first event with a revision above the reset's, whichever comes first.
A transaction (a ``txn`` event) is applied whole, in one step: its changes are made to a copy of the
entries, which then replaces them, so no reader ever sees some of its changes without the others.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .disk_cache import Entry
from .models import ChangeEvent, EventKind, TxnEvent, parse_event


@dataclass(frozen=True)
class Change:
    """One change of the view: ``kind`` is what happened to the key; ``old``/``new`` are
    values (None when absent). After a reset, keys that disappeared come as ``delete`` with
    ``version`` None and the reset's ``revision``."""

    key: str
    old: Any
    new: Any
    version: int | None
    revision: int
    kind: EventKind


@dataclass(frozen=True)
class TxnChange:
    """What one transaction changed in the view: its ``revision`` and its changes (one :class:`Change` per
    key of the view it changed, all with that revision, in the order of the ``txn`` event; keys the view
    does not watch or may not read are not in it). ``LiveConfig.on_txn`` callbacks get one, once the whole
    transaction is in the view."""

    revision: int
    changes: tuple[Change, ...]


def pattern_matches(pattern: str, key: str) -> bool:
    """The server's pattern rule: an exact key, or a prefix ending in ``*`` (``*`` alone: everything)."""
    return key.startswith(pattern[:-1]) if pattern.endswith("*") else key == pattern


class View:
    """Current entries and the last applied revision; ``changed()`` is called after every mutation.

    ``entries`` is replaced (never mutated) by a swap or a transaction, and mutated key by key under
    ``lock`` by a single change, so a reader in another thread sees either the old or the new state of a
    key, and a reader that holds ``lock`` (or one ``entries`` it read once) either none or all of a
    transaction.
    """

    def __init__(self, changed: Callable[[], None]) -> None:
        self.lock = threading.Lock()
        self.entries: dict[str, Entry] = {}
        self.revision: int | None = None
        self.synced = False
        self._changed = changed
        self._pending: dict[str, Entry] | None = None
        self._pending_revision = 0
        self._pending_reset: int | None = None

    def load(self, entries: dict[str, Entry], revision: int) -> None:
        """Start from a saved state (the disk cache)."""
        with self.lock:
            self.entries, self.revision = dict(entries), revision

    def expect_snapshot(self) -> None:
        """The next events are a snapshot: collect them and swap them in when complete."""
        self._pending, self._pending_revision = {}, 0

    def apply(self, event: dict[str, Any], *, report: bool) -> list[Change | TxnChange]:
        """Apply one stream event; the resulting changes (only when ``report``, for swaps), those of a
        transaction as one :class:`TxnChange` (none when it changed nothing the view holds)."""
        kind, revision = event["event"], event["revision"]
        if kind == "synced":
            return self._synced(revision, report)
        if kind == "reset":
            self._pending, self._pending_revision, self._pending_reset = {}, 0, revision
            return []
        parsed = parse_event(event)
        if parsed is None:  # a kind from a newer server (the stream passes on only the ones it knows)
            return []
        items = parsed.changes if isinstance(parsed, TxnEvent) else (parsed,)
        changes: list[Change | TxnChange] = []
        if self._pending_reset is not None and revision > self._pending_reset:
            changes = self._swap(self._pending_reset, report)
        if self._pending is not None:
            for item in items:
                _put(self._pending, item)
            self._pending_revision = max(self._pending_revision, revision)
            return changes
        if self.revision is not None and revision <= self.revision:
            return changes
        with self.lock:
            # A transaction's changes go to a copy that replaces the entries in one step; a single change
            # is made in place (no copy of the whole view per event).
            entries = dict(self.entries) if isinstance(parsed, TxnEvent) else self.entries
            olds = [_put(entries, item) for item in items]
            self.entries, self.revision = entries, revision
        self._changed()
        made = [
            Change(item.key, None if old is None else old.value, item.value, item.version, revision, item.kind)
            for item, old in zip(items, olds, strict=True)
            if old is not None or item.kind == EventKind.UPDATE
        ]
        if isinstance(parsed, TxnEvent):
            return [*changes, TxnChange(revision, tuple(made))] if made else changes
        return changes + made

    def _synced(self, revision: int, report: bool) -> list[Change | TxnChange]:
        through = revision if self._pending_reset is None else self._pending_reset
        changes = self._swap(through, report) if self._pending is not None else []
        if self.revision is None or revision > self.revision:
            self.revision = revision
            self._changed()
        self.synced = True
        return changes

    def _swap(self, through: int, report: bool) -> list[Change | TxnChange]:
        """Replace the entries with the collected snapshot; the differences when ``report``."""
        new = self._pending if self._pending is not None else {}
        with self.lock:
            old, self.entries = self.entries, new
            self.revision = max(self.revision or 0, self._pending_revision, through)
        self._pending, self._pending_reset = None, None
        self._changed()
        if not report:
            return []
        changes = [Change(k, e.value, None, None, through, EventKind.DELETE) for k, e in old.items() if k not in new]
        for key, entry in new.items():
            before = old.get(key)
            if before is None or before.version != entry.version:
                was = None if before is None else before.value
                changes.append(Change(key, was, entry.value, entry.version, entry.revision, EventKind.UPDATE))
        # The differences of a swap are single changes, even where a transaction made them.
        return [*sorted(changes, key=lambda c: (c.revision, c.key))]


def _put(entries: dict[str, Entry], change: ChangeEvent) -> Entry | None:
    """Make ``change`` to ``entries``; the entry it replaced or removed, if any."""
    if change.kind == EventKind.UPDATE:
        old = entries.get(change.key)
        entries[change.key] = Entry(change.value, change.version, change.revision)
        return old
    return entries.pop(change.key, None)
