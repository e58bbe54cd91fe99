"""Change events (SPEC §6): the kinds a change can be, and the one encoder of an event as clients see it.

:class:`EventKind` is the one server-side list of kinds, used when a change is written (store,
expiry), when it is read back (changelog, snapshot SQL) and in the OpenAPI document. Two copies stay
apart on purpose, and ``tests/test_event_kinds.py`` checks that they agree: the CHECK constraints of
``key_history`` and ``outbox`` (in a shipped migration, never edited) and ``dynconfig_client.models``
(the client does not depend on the server packages).

:func:`change_event` is called by :meth:`shared.changelog.ChangeEvent.wire` only, so the live
stream, backfill, replay, snapshot and poll all send the same shape.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from .timeutil import rfc3339


class EventKind(enum.StrEnum):
    """What a change did to a key. A ``str``: it compares equal to, and encodes as, its wire value."""

    UPDATE = "update"
    DELETE = "delete"
    EXPIRED = "expired"


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
