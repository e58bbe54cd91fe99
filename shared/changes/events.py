"""The change log's events, and who may see one: what shared/sql/changelog.py reads (events after a
revision, snapshots) and every consumer (notifier live stream and replay, the HTTP poll fallback,
snapshots) shares. Events are encoded by :func:`change_event` only (through
:meth:`ChangeEvent.wire`), so the live stream, backfill, replay, snapshot and poll all send one shape.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.changes.kinds import TXN_EVENT, EventKind
from shared.security.acl import Acl, Audience, Principal, audience
from shared.security.crypto import Keyring
from shared.sql import like_escape
from shared.timeutil import rfc3339


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
    #: For a change made by a transaction (``POST /txn``), the transaction's revision: the last of its
    #: changes' positions. ``revision`` is then this change's own position in the log, which clients
    #: never see; None for a write of its own.
    txn: int | None = None

    def __post_init__(self) -> None:
        # Rows and pub/sub messages (shared.wire) carry the kind as text: hold it as the enum.
        object.__setattr__(self, "event", EventKind(self.event))

    @property
    def shown_revision(self) -> int:
        """The revision clients see: the transaction's, for a change made by one."""
        return self.txn if self.txn is not None else self.revision

    def wire(self, keyring: Keyring) -> dict[str, Any]:
        """The event as clients see it (value decrypted)."""
        value = json.loads(keyring.decrypt(self.value_enc, aad=self.key)) if self.value_enc is not None else None
        return change_event(
            event=self.event, key=self.key, version=self.version, at=self.at, revision=self.shown_revision, value=value
        )

    def readers(self, namespace_acls: Mapping[str, Acl]) -> Readers:
        """Who may see this event (admins aside): readers of the key today and, when known, readers
        of this version when it was written (SPEC §5); a reader must be in both."""
        today = audience("read", key=self.key, key_acl=self.acl, creator=self.creator, namespace_acls=namespace_acls)
        return (today,) if self.version_readers is None else (today, self.version_readers)


def commits(events: Sequence[ChangeEvent]) -> list[Sequence[ChangeEvent]]:
    """``events`` (in log order) cut into what was committed together: a write of its own alone, a
    transaction's changes together (consecutive, with the same ``txn``). Whoever delivers events
    delivers each of these whole or not at all (SPEC §6: resume never splits a transaction)."""
    out: list[Sequence[ChangeEvent]] = []
    start = 0
    for i in range(1, len(events) + 1):
        if i == len(events) or events[i].txn is None or events[i].txn != events[start].txn:
            out.append(events[start:i])
            start = i
    return out


def txn_event(revision: int, changes: list[dict[str, Any]]) -> dict[str, Any]:
    """``{"event": "txn", "revision", "changes": [change events]}``: a transaction's changes that one
    reader may see, as one frame or poll event (SPEC §6)."""
    return {"event": TXN_EVENT, "revision": revision, "changes": changes}


def commit_events(
    commit: Sequence[ChangeEvent], changes: list[dict[str, Any]], *, split: bool = False
) -> list[dict[str, Any]]:
    """What a reader is sent of one of :func:`commits`, given the ``changes`` of it it may read (as
    :meth:`ChangeEvent.wire` encodes them): a write's event; a transaction's as one ``txn`` event, or
    (``split``) as single events; nothing when it may read none."""
    if not changes or split or commit[0].txn is None:
        return changes
    return [txn_event(commit[-1].shown_revision, changes)]


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
        escaped = like_escape(pattern)
        out.append(escaped[:-1] + "%" if escaped.endswith("*") else escaped)
    return out


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


def change_event(
    *,
    event: EventKind,
    key: str,
    version: int,
    at: datetime,
    revision: int | None = None,
    value: Any = None,
) -> dict[str, Any]:
    """``{"event", "key", "version", "revision", "value" (update only), "lastModified"}``."""
    body: dict[str, Any] = {"event": event, "key": key, "version": version}
    if revision is not None:
        body["revision"] = revision
    if event == EventKind.UPDATE:
        body["value"] = value
    body["lastModified"] = rfc3339(at)
    return body
