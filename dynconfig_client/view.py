"""The state machine behind ``LiveConfig``: stream events in, the current view and its ``Change``s out.

No I/O here. Events are applied in revision order, each at most once. A snapshot (the first one, or the
one after a ``reset``) is collected aside and swapped in at once when complete: at the stream's
``synced`` marker, or at the first event with a revision above the reset's, whichever comes first.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .disk_cache import Entry
from .models import EventKind


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


def pattern_matches(pattern: str, key: str) -> bool:
    """The server's pattern rule: an exact key, or a prefix ending in ``*`` (``*`` alone: everything)."""
    return key.startswith(pattern[:-1]) if pattern.endswith("*") else key == pattern


class View:
    """Current entries and the last applied revision; ``changed()`` is called after every mutation.

    ``entries`` is replaced (never mutated) by a swap and mutated key by key under ``lock`` otherwise,
    so a reader in another thread sees either the old or the new state of a key.
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

    def apply(self, event: dict[str, Any], *, report: bool) -> list[Change]:
        """Apply one stream event; the resulting changes (only when ``report``, for swaps)."""
        kind, revision = event["event"], event["revision"]
        if kind == "synced":
            return self._synced(revision, report)
        if kind == "reset":
            self._pending, self._pending_revision, self._pending_reset = {}, 0, revision
            return []
        changes: list[Change] = []
        if self._pending_reset is not None and revision > self._pending_reset:
            changes = self._swap(self._pending_reset, report)
        if self._pending is not None:
            _put(self._pending, event)
            self._pending_revision = max(self._pending_revision, revision)
            return changes
        if self.revision is not None and revision <= self.revision:
            return changes
        key, kind = event["key"], EventKind(kind)  # past synced and reset, the stream yields change events only
        with self.lock:
            old = self.entries.get(key)
            if kind == EventKind.UPDATE:
                self.entries[key] = Entry(event.get("value"), event["version"], revision)
            else:
                self.entries.pop(key, None)
            self.revision = revision
        self._changed()
        if old is not None or kind == EventKind.UPDATE:
            new = event.get("value") if kind == EventKind.UPDATE else None
            changes.append(Change(key, None if old is None else old.value, new, event["version"], revision, kind))
        return changes

    def _synced(self, revision: int, report: bool) -> list[Change]:
        through = revision if self._pending_reset is None else self._pending_reset
        changes = self._swap(through, report) if self._pending is not None else []
        if self.revision is None or revision > self.revision:
            self.revision = revision
            self._changed()
        self.synced = True
        return changes

    def _swap(self, through: int, report: bool) -> list[Change]:
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
        return sorted(changes, key=lambda c: (c.revision, c.key))


def _put(entries: dict[str, Entry], event: dict[str, Any]) -> None:
    if event["event"] == EventKind.UPDATE:
        entries[event["key"]] = Entry(event.get("value"), event["version"], event["revision"])
    else:
        entries.pop(event["key"], None)
