"""The values the client returns: event kinds, keys, write results, transaction results, change events,
pages, history, poll results, namespaces, audit."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple


class Unset(enum.Enum):
    """Type of :data:`UNSET`."""

    UNSET = "UNSET"


#: "Leave it as it is": the default of optional write fields (``None`` means clear them).
UNSET = Unset.UNSET


class EventKind(enum.StrEnum):
    """What a change did to a key (SPEC §6). A ``str``: it compares equal to its wire value.

    The client's own copy of the server's ``shared.changes.kinds.EventKind`` (the client does not depend on
    the server packages); ``tests/test_event_kinds.py`` checks that the two agree."""

    UPDATE = "update"
    DELETE = "delete"
    EXPIRED = "expired"


#: The kinds of change events, for membership tests on the text of received events.
CHANGE_KINDS = frozenset(EventKind)

#: The ``event`` of a frame (and of a polled event) holding one transaction's changes (SPEC §6). Not an
#: :class:`EventKind`: no change is of this kind (the server's ``shared.changes.kinds.TXN_EVENT``).
TXN_EVENT = "txn"

Acls = Mapping[str, Sequence[str]]


def parse_time(text: str | None) -> datetime | None:
    """An RFC 3339 timestamp of the API (``2025-09-21T20:03:00.123Z``) as an aware datetime, or None."""
    return None if text is None else datetime.fromisoformat(text)


@dataclass(frozen=True)
class KeyValue:
    """A key's current value and metadata (``GET /keys/{key}``); ``etag`` feeds ``if_match``."""

    key: str
    value: Any
    version: int
    last_modified: datetime
    ttl: int | None
    expires_at: datetime | None
    etag: str
    #: The global revision of this state (a server before step 6 sends none).
    revision: int | None = None


@dataclass(frozen=True)
class WriteResult:
    """The outcome of a PUT or PATCH; ``created`` is True when a PUT made a new key (201)."""

    key: str
    version: int
    last_modified: datetime
    expires_at: datetime | None
    created: bool
    #: The global revision of the write: a watch, snapshot or poll started after this answer includes
    #: it, and ``LiveConfig.wait_for_revision`` waits until the live view has applied it.
    revision: int | None = None


class KeyVersion(NamedTuple):
    """A key and the version a write gave it (one per op of a transaction)."""

    key: str
    version: int


@dataclass(frozen=True)
class TxnResult:
    """A committed transaction (``POST /txn``): its one ``revision`` (feed it to
    ``LiveConfig.wait_for_revision``) and each op's key and new version, in the order of the ops."""

    revision: int
    results: list[KeyVersion]

    @property
    def versions(self) -> dict[str, int]:
        """``{key: version}`` of every op (a key is in at most one op)."""
        return dict(self.results)


@dataclass(frozen=True)
class ChangeEvent:
    """A change event (``update``, ``delete`` or ``expired``) as a type; ``value`` is None unless ``update``."""

    kind: EventKind
    key: str
    version: int
    revision: int
    value: Any = None
    last_modified: datetime | None = None

    @classmethod
    def from_wire(cls, event: Mapping[str, Any], revision: int | None = None) -> ChangeEvent:
        """From the event's JSON (ValueError for a kind this client does not know); ``revision`` when
        the event does not carry one itself."""
        kind = EventKind(event["event"])
        return cls(
            kind=kind,
            key=event["key"],
            version=event["version"],
            revision=event["revision"] if revision is None else revision,
            value=event.get("value") if kind == EventKind.UPDATE else None,
            last_modified=parse_time(event.get("lastModified")),
        )


@dataclass(frozen=True)
class TxnEvent:
    """One transaction's changes that the reader may see, all with the transaction's ``revision``
    (a ``txn`` frame of ``/watch``, or a ``txn`` event of a poll). Resume after ``revision``: a
    transaction is never split across a resume."""

    revision: int
    changes: tuple[ChangeEvent, ...]

    @classmethod
    def from_wire(cls, event: Mapping[str, Any]) -> TxnEvent:
        """From the frame's JSON; a change of a kind this client does not know is left out."""
        revision = event["revision"]
        changes = []
        for change in event["changes"]:
            try:
                changes.append(ChangeEvent.from_wire(change, revision))
            except ValueError:
                continue  # a kind from a newer server: nothing this client could apply
        return cls(revision, tuple(changes))


def parse_event(event: Mapping[str, Any]) -> ChangeEvent | TxnEvent | None:
    """A change event or ``txn`` event (a dict of ``EventStream`` or ``PollResult.events``) as a type;
    None for any other event (``reset``, ``synced``, or a kind from a newer server)."""
    kind = event.get("event")
    if kind == TXN_EVENT:
        return TxnEvent.from_wire(event)
    if kind in CHANGE_KINDS:
        return ChangeEvent.from_wire(event)
    return None


@dataclass(frozen=True)
class KeyPage:
    """One page of ``GET /keys``: the keys, how many there are in all, and the cursor of the next page."""

    keys: list[str]
    total: int
    next: str | None


@dataclass(frozen=True)
class Version:
    """One entry of a key's history. ``event`` is the server's text, one of :class:`EventKind`'s values
    (left as text so a kind from a newer server passes through); ``value`` is None unless ``update``."""

    version: int
    value: Any
    event: str
    actor: str | None
    at: datetime


@dataclass(frozen=True)
class PollResult:
    """The poll fallback: change events after a revision (dicts shaped like watch events, SPEC §6; a
    transaction is one ``{"event": "txn", "revision", "changes"}`` among them, never split by a page).

    Poll again with ``since_version=revision``; ``more`` means another page is waiting now; ``reset``
    means the revision asked for is older than the change log (re-read everything, then poll on)."""

    events: list[dict[str, Any]]
    revision: int
    more: bool
    reset: bool

    @property
    def typed_events(self) -> list[ChangeEvent | TxnEvent]:
        """``events`` as :class:`ChangeEvent` and :class:`TxnEvent` (kinds this client does not know left out)."""
        parsed = (parse_event(event) for event in self.events)
        return [event for event in parsed if event is not None]


@dataclass(frozen=True)
class Namespace:
    """A namespace ACL that keys without their own ACL inherit."""

    namespace: str
    acls: dict[str, list[str]]
    updated_by: str | None
    updated_at: datetime | None


@dataclass(frozen=True)
class AuditRecord:
    """One audit-log entry; ``version`` is None for reads and denials."""

    id: int
    at: datetime
    actor: str
    action: str
    key: str | None
    version: int | None
    outcome: str
    request_id: str | None
