"""The values the client returns: event kinds, keys, write results, pages, history, poll results, namespaces, audit."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any


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
    """The poll fallback: change events after a revision (dicts shaped like watch events, SPEC §6).

    Poll again with ``since_version=revision``; ``more`` means another page is waiting now; ``reset``
    means the revision asked for is older than the change log (re-read everything, then poll on)."""

    events: list[dict[str, Any]]
    revision: int
    more: bool
    reset: bool


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
